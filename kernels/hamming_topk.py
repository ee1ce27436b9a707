"""Exact Hamming top-k selection as a counting (threshold) select: three passes over the key codes.

Scores are small integers (sum over the G query heads of an r-bit Hamming distance, at most G*r), so the
k-th smallest is found by counting rather than sorting. Every token's rank key is ``0`` when forced (sink
or recent), else ``score + 1``; the k smallest keys win, ties to the lower slot (reference.select_topk).

1. ``_score_kernel`` (rows x splits): reads the key codes once, scores them, writes int16 keys and a
   coarse histogram (key >> SHIFT) of its split.
2. ``_fine_kernel``: sums the coarse histograms into the coarse bin holding the k-th key, and histograms
   the low bits of the keys in that bin, per split.
3. ``_write_kernel``: sums the fine histograms into the exact threshold key and how many keys equal to it
   are kept, then writes the winners in slot order at offsets given by the earlier splits' counts, and
   pads with -1. Output is sorted ascending by construction, with no sort. Winners are packed into 32-bit
   words and placed by prefix sums over words (a per-slot scan cost twice as much on H100).

**Selection hint (decode).** Between decode steps over the same key-code cache the coarse bin that holds
the threshold rarely moves far. Each row keeps a window of two bins from last time (:func:`selection_hint`,
state kept per code cache, like the attention's counters): the threshold's bin and its neighbour on the side
of the threshold within it. The scoring pass also histograms the low bits of the keys in those two bins, and
the fine pass's programs skip their scan when the new bin is one of them (every program of a row computes
the same bin, so they decide alike). The write pass records the new window and counts hits. The result
never depends on the hint: a stale or missing one only costs the full fine pass. (A decode step's fine pass
lasts as long as its slowest row, so at batch 8 one missing row in 64 costs the whole scan: with one bin,
94% of rows hit in ``hatac bench generate`` and nearly every step scanned: docs/PERFORMANCE.md, Decisions.)

**Prefetches (Hopper).** Each scoring program asks the L2 for the first slots of its split's codes (one bulk
prefetch) before it waits for the previous kernel, so they stream in while the encoder runs. Given the K/V
caches, the write pass prefetches each selected slot's K and V rows into L2 as it writes the slot, for the
sparse attention that gathers them next (when the selected rows fit in the L2). Both are hints: no result
depends on them.

Each kernel runs over rows x splits (program ids), one launch a pass, the launch boundary being the
barrier each pass needs. (Running all three for a whole row in one program, one launch and no grid
barrier, was 1.6x slower at batch 8 on H100: 64 programs cannot pull the codes fast enough.
docs/PERFORMANCE.md.)

Scoring uses bit planes rather than G popcounts a word: with c the number of the G query heads whose bit is
set, the summed distance at a bit is ``k ? G - c : c``. Written in binary, plane j of that is
``P_j ^ (k & (P_j ^ N_j))`` (P_j, N_j: plane j of c and of G - c, fixed for the row), so a word costs one
popcount per plane (1 + log2 G of them, one fewer for even G whose parity plane does not depend on k)
instead of G. Each program builds the planes with a bit-sliced ripple-carry count over the G query words
(logic operations only; summing bits across threads cost 17 barriers a program), after issuing the load of
its first block of key codes.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from hatac.kernels import options
from hatac.kernels._common import (
    budget_args, device_properties, grid_sync, hw_flag, l2_prefetch, l2_prefetch_lines, next_pow2, pdl_args, popcount, reg_cap, select_count,
)
from hatac.kernels.hamming_topk_plan import _splits, plan, select_geometry  # noqa: F401  (plan: the tests' too)
from hatac.kernels.selection_hint import hint_stats, selection_hint  # noqa: F401  (hint_stats: the benches')

_ROW_CHUNK = 256  # query rows per launch group when S > 1, as in the reference


@triton.jit
def _row_coords(row, S, Hkv):
    s = row % S
    kv = (row // S) % Hkv
    b = row // (S * Hkv)
    return b, kv, s


@triton.jit
def _in_window(lo_bin, cb, WINDOW: tl.constexpr):
    """Whether coarse bin ``cb`` is in the hint's window of WINDOW bins from ``lo_bin`` (-1: no window yet)."""
    return (lo_bin >= 0) & (cb >= lo_bin) & (cb < lo_bin + WINDOW)


@triton.jit
def _ripple_add(p0, p1, p2, p3, p4, p5, p6, p7, x):
    """Add the bits of word ``x`` into the bit-sliced counter p0..p7 (p0 least significant) by ripple carry."""
    p0, x = p0 ^ x, p0 & x
    p1, x = p1 ^ x, p1 & x
    p2, x = p2 ^ x, p2 & x
    p3, x = p3 ^ x, p3 & x
    p4, x = p4 ^ x, p4 & x
    p5, x = p5 ^ x, p5 & x
    p6, x = p6 ^ x, p6 & x
    return p0, p1, p2, p3, p4, p5, p6, p7 ^ x


@triton.jit
def _count_planes(q_base, sqh, w, wm, G: tl.constexpr):
    """Bit-sliced counts, per bit of each code word, of the G query heads whose bit is set (c) and clear
    (G - c): two tuples of 8 words, plane j holding bit j of the count (G < 256). Each head's word is loaded
    once and added into both; logic operations only, no reduction across threads (no barrier)."""
    z = tl.zeros(w.shape, tl.int32)
    c0, c1, c2, c3, c4, c5, c6, c7 = z, z, z, z, z, z, z, z
    n0, n1, n2, n3, n4, n5, n6, n7 = z, z, z, z, z, z, z, z
    for gi in tl.static_range(G):
        x = tl.load(q_base + gi * sqh + w, mask=wm, other=0)
        c0, c1, c2, c3, c4, c5, c6, c7 = _ripple_add(c0, c1, c2, c3, c4, c5, c6, c7, x)
        n0, n1, n2, n3, n4, n5, n6, n7 = _ripple_add(n0, n1, n2, n3, n4, n5, n6, n7, tl.where(wm, ~x, 0))
    return (c0, c1, c2, c3, c4, c5, c6, c7), (n0, n1, n2, n3, n4, n5, n6, n7)


@triton.jit
def _score_kernel(
    qc_ptr, kc_ptr, qpos_ptr, keys_ptr, hist_ptr, hint_ptr, hist2_ptr,
    S, Hkv, T, KS, CHUNK, n_splits, window, sink, recent, pf_slots,
    sqb, sqh, sqs, sqw,
    skb, skh,
    spb, sps,
    G: tl.constexpr, NW: tl.constexpr, NWP: tl.constexpr, L: tl.constexpr, J0: tl.constexpr,
    SHIFT: tl.constexpr, NCB: tl.constexpr, BLOCK_T: tl.constexpr, HW_POPC: tl.constexpr, PREFETCH: tl.constexpr,
    HINT: tl.constexpr, NFB: tl.constexpr, L2PF: tl.constexpr, L2_AHEAD: tl.constexpr, PDL: tl.constexpr,
):
    row = tl.program_id(0)
    split = tl.program_id(1)
    b, kv, s = _row_coords(row, S, Hkv)
    c0 = split * CHUNK
    k_base = kc_ptr + b.to(tl.int64) * skb + kv * skh
    if L2PF:  # the split's codes into L2 while the previous kernel (the encoder) still runs
        l2_prefetch(k_base + c0 * NW, tl.minimum(tl.minimum(CHUNK, T - c0), pf_slots) * (NW * 4))
    grid_sync(PDL)
    pos = tl.load(qpos_ptr + b * spb + s * sps).to(tl.int32)
    hi = pos + 1
    lo = tl.where(window > 0, tl.maximum(hi - window, 0), 0)
    length = hi - lo
    start = tl.maximum(c0, lo)
    end = tl.minimum(tl.minimum(c0 + CHUNK, hi), T)

    # Codes are (T, NW) contiguous: a token's words are one vector load; one thread owns a token. The first
    # block is loaded before the query's bit planes are built, and with PREFETCH each next block before this
    # one is scored, so a program's loads overlap its arithmetic.
    first = (start - c0) // BLOCK_T
    last = (tl.maximum(end - c0, 0) + BLOCK_T - 1) // BLOCK_T
    w = tl.arange(0, NWP)
    wm = w < NW
    wmask = wm[None, :]
    t = c0 + first * BLOCK_T + tl.arange(0, BLOCK_T)
    kw_next = tl.load(k_base + t[:, None].to(tl.int64) * NW + w[None, :], mask=((t >= start) & (t < end))[:, None] & wmask, other=0)

    # Bit planes, per code word, of c (how many of the G query heads set each bit) and of G - c.
    q_base = qc_ptr + b.to(tl.int64) * sqb + (kv * G) * sqh + s * sqs
    pc, nc = _count_planes(q_base, sqh, w * sqw, wm, G)
    if J0 == 1:  # even G: the parity plane equals that of c whatever the key's bit, a constant
        base = tl.sum(popcount(pc[0], HW_POPC), axis=0)
    else:
        base = 0

    hist = tl.zeros((NCB,), dtype=tl.int32)
    if HINT:  # fine histogram of the two bins around the threshold at the previous step (none while lo < 0)
        lo_key = tl.load(hint_ptr + row * 3) << SHIFT
        hi_key = tl.where(lo_key >= 0, lo_key + 2 * NFB, lo_key)
        fine = tl.zeros((2 * NFB,), dtype=tl.int32)
    key_base = keys_ptr + row.to(tl.int64) * KS
    for i in range(first, last):
        t = c0 + i * BLOCK_T + tl.arange(0, BLOCK_T)
        if PREFETCH:
            kw = kw_next
            tn = t + BLOCK_T
            kw_next = tl.load(k_base + tn[:, None].to(tl.int64) * NW + w[None, :], mask=((tn >= start) & (tn < end))[:, None] & wmask, other=0)
        else:
            kw = tl.load(k_base + t[:, None].to(tl.int64) * NW + w[None, :], mask=((t >= start) & (t < end))[:, None] & wmask, other=0)
        if L2_AHEAD > 0:  # keep the L2 that many blocks ahead of the loads
            ta = c0 + (i + L2_AHEAD) * BLOCK_T
            if ta < end:
                l2_prefetch(k_base + ta * NW, (tl.minimum(ta + BLOCK_T, end) - ta) * (NW * 4))
        score = tl.zeros((BLOCK_T,), dtype=tl.int32) + base
        for j in tl.static_range(J0, L):
            dj = pc[j][None, :] ^ (kw & (pc[j] ^ nc[j])[None, :])
            score += tl.sum(popcount(dj, HW_POPC), axis=1) << j
        inr = (t >= start) & (t < end)
        rel = t - lo
        forced = (rel < sink) | (rel >= length - recent)
        key = tl.where(forced, 0, score + 1)
        tl.store(key_base + t, key, mask=t < KS)  # whole block, row padding included: vector stores
        hist += tl.histogram(key >> SHIFT, NCB, mask=inr)
        if HINT:
            win = inr & (key >= lo_key) & (key < hi_key)
            fine += tl.histogram(tl.where(win, key - lo_key, 0), 2 * NFB, mask=win)
    bins = tl.arange(0, NCB)
    tl.store(hist_ptr + (row.to(tl.int64) * n_splits + split) * NCB + bins, hist)
    if HINT:
        fb = tl.arange(0, 2 * NFB)
        tl.store(hist2_ptr + (row.to(tl.int64) * n_splits + split) * (2 * NFB) + fb, fine)


@triton.jit
def _fine_kernel(
    qpos_ptr, keys_ptr, hist1_ptr, hist2_ptr, less_ptr, cb_ptr, hint_ptr, n_splits1,
    S, Hkv, T, KS, K, CHUNK, n_splits, window, sink, recent, want_fixed, budget_bits,
    spb, sps,
    IS_FRAC: tl.constexpr, SHIFT: tl.constexpr, NCB: tl.constexpr, NFB: tl.constexpr, HNFB: tl.constexpr,
    NSP1: tl.constexpr, BLOCK_T: tl.constexpr, HINT: tl.constexpr, PDL: tl.constexpr, WINDOW: tl.constexpr,
):
    grid_sync(PDL)
    row = tl.program_id(0)
    split = tl.program_id(1)
    b, kv, s = _row_coords(row, S, Hkv)
    pos = tl.load(qpos_ptr + b * spb + s * sps).to(tl.int32)
    lo, hi_c, length, n_sel = select_count(pos, T, K, window, sink, recent, want_fixed, budget_bits, IS_FRAC)
    sp = tl.arange(0, NSP1)
    bins = tl.arange(0, NCB)
    h1 = tl.load(hist1_ptr + (row.to(tl.int64) * n_splits1 + sp[:, None]) * NCB + bins[None, :], mask=sp[:, None] < n_splits1, other=0)
    cum = tl.cumsum(tl.sum(h1, axis=0), axis=0)
    cb = tl.sum((cum < n_sel).to(tl.int32), axis=0)  # the coarse bin holding the n_sel-th smallest key
    if HINT:  # the scoring pass histogrammed the bins lo and lo + 1: a hit when cb is one of them
        lo_bin = tl.load(hint_ptr + row * 3)
        hit = _in_window(lo_bin, cb, WINDOW)
        off = tl.where(hit, (cb - lo_bin) * NFB, 0)  # where cb's fine histogram starts in a split's HNFB bins
    else:
        hit = row < 0  # never
        off = 0
    if split == 0:
        tl.store(cb_ptr + row * 2, cb)
        tl.store(cb_ptr + row * 2 + 1, off)

    c0 = split * CHUNK
    start = tl.maximum(c0, lo)
    end = tl.minimum(c0 + CHUNK, hi_c)
    fine = tl.zeros((NFB,), dtype=tl.int32)
    less = 0
    n_out = 0
    key_base = keys_ptr + row.to(tl.int64) * KS
    first = (start - c0) // BLOCK_T
    last = (tl.maximum(end - c0, 0) + BLOCK_T - 1) // BLOCK_T
    if HINT:  # same splits as the scoring pass, which histogrammed the hinted bins: nothing to scan on a hit
        less_h1 = tl.sum(tl.sum(tl.where((sp[:, None] == split) & (bins[None, :] < cb), h1, 0), axis=1), axis=0)
        less = tl.where(hit, less_h1, 0)
        last = tl.where(hit, first, last)
    for i in range(first, last):
        t = c0 + i * BLOCK_T + tl.arange(0, BLOCK_T)
        inr = (t >= start) & (t < end)
        key = tl.load(key_base + t, mask=t < KS, other=0).to(tl.int32)  # vector loads; inr masks slots past T
        coarse = key >> SHIFT
        match = inr & (coarse == cb)
        fine += tl.histogram(tl.where(match, key & (NFB - 1), 0), NFB)
        cnt = tl.sum(tl.where(inr & (coarse < cb), 1, 0) + tl.where(match, 65536, 0), axis=0)  # one reduction
        less += cnt & 65535
        n_out += BLOCK_T - (cnt >> 16)
    fb = tl.arange(0, NFB)
    fine -= tl.where(fb == 0, n_out, 0)
    tl.store(hist2_ptr + (row.to(tl.int64) * n_splits + split) * HNFB + fb, fine, mask=fb < tl.where(hit, 0, NFB))
    tl.store(less_ptr + row * n_splits + split, less)


@triton.jit
def _write_kernel(
    qpos_ptr, keys_ptr, hist2_ptr, less_ptr, cb_ptr, idx_ptr, hint_ptr, kc_ptr, vc_ptr,
    S, Hkv, T, KS, K, CHUNK, n_splits, window, sink, recent, want_fixed, budget_bits,
    spb, sps, skb, skh, skt, svb, svh, svt,
    IS_FRAC: tl.constexpr, SHIFT: tl.constexpr, NFB: tl.constexpr, HNFB: tl.constexpr, NSP: tl.constexpr,
    BLOCK_T: tl.constexpr, BLOCK_P: tl.constexpr, HW_POPC: tl.constexpr, HINT: tl.constexpr, KV_PF: tl.constexpr,
    KEY_PREFETCH: tl.constexpr, PDL: tl.constexpr, WINDOW: tl.constexpr,
):
    grid_sync(PDL)
    row = tl.program_id(0)
    split = tl.program_id(1)
    b, kv, s = _row_coords(row, S, Hkv)
    pos = tl.load(qpos_ptr + b * spb + s * sps).to(tl.int32)
    lo, hi_c, length, n_sel = select_count(pos, T, K, window, sink, recent, want_fixed, budget_bits, IS_FRAC)
    c0 = split * CHUNK
    start = tl.maximum(c0, lo)
    end = tl.minimum(c0 + CHUNK, hi_c)
    key_base = keys_ptr + row.to(tl.int64) * KS
    first = (start - c0) // BLOCK_T
    last = (tl.maximum(end - c0, 0) + BLOCK_T - 1) // BLOCK_T
    j = tl.arange(0, 32)
    wi = tl.arange(0, BLOCK_T // 32)
    if KEY_PREFETCH:  # the first block's keys in flight while the threshold is worked out
        tk = c0 + first * BLOCK_T + wi[:, None] * 32 + j[None, :]
        key_first = tl.load(key_base + tk, mask=tk < tl.where(first < last, KS, 0), other=0).to(tl.int32)
    sp = tl.arange(0, NSP)
    fb = tl.arange(0, NFB)
    spm = sp < n_splits
    cb = tl.load(cb_ptr + row * 2)
    off = tl.load(cb_ptr + row * 2 + 1)
    # off is 0 or NFB (which of the scoring pass's two hinted bins): said so, the loads are 16-byte vectors
    h2 = tl.load(hist2_ptr + (row.to(tl.int64) * n_splits + sp[:, None]) * HNFB + tl.multiple_of(off, NFB) + fb[None, :],
                 mask=spm[:, None], other=0)
    less_sp = tl.load(less_ptr + row * n_splits + sp, mask=spm, other=0)
    tot = tl.sum(h2, axis=0)
    need_f = n_sel - tl.sum(less_sp, axis=0)
    f_bin = tl.sum((tl.cumsum(tot, axis=0) < need_f).to(tl.int32), axis=0)
    theta = (cb << SHIFT) + f_bin  # the n_sel-th smallest key
    below = n_sel - need_f + tl.sum(tl.where(fb < f_bin, tot, 0), axis=0)
    need_eq = n_sel - below  # keys equal to theta that are kept: the first ones in slot order
    less_s = less_sp + tl.sum(tl.where(fb[None, :] < f_bin, h2, 0), axis=1)
    eq_s = tl.sum(tl.where(fb[None, :] == f_bin, h2, 0), axis=1)
    before = sp < split
    eq_seen = tl.sum(tl.where(before, eq_s, 0), axis=0)
    out_pos = tl.sum(tl.where(before, less_s, 0), axis=0) + tl.minimum(eq_seen, need_eq)

    out_base = idx_ptr + row.to(tl.int64) * K
    # Blocks are (words, 32 slots). Winners are packed into 32-bit words; prefix sums over words place
    # them, and a short loop peels each word's set bits in slot order (as many rounds as the fullest word
    # has bits: a few at budgets of a few percent), so no per-slot scan is needed.
    bit = 1 << j
    if KV_PF:
        k_row = kc_ptr + b.to(tl.int64) * skb + kv.to(tl.int64) * skh
        v_row = vc_ptr + b.to(tl.int64) * svb + kv.to(tl.int64) * svh
    for i in range(first, last):
        t = c0 + i * BLOCK_T + wi[:, None] * 32 + j[None, :]
        w0 = tl.min(t, axis=1)  # first slot of each word, laid out like the per-word sums below
        inr = (t >= start) & (t < end)
        if KEY_PREFETCH and i == first:
            key = key_first
        else:
            key = tl.load(key_base + t, mask=t < KS, other=0).to(tl.int32)  # vector loads; inr masks slots past T
        lt_w = tl.sum(tl.where(inr & (key < theta), bit[None, :], 0), axis=1)
        eq_w = tl.sum(tl.where(inr & (key == theta), bit[None, :], 0), axis=1)
        # One scan over words gives both exclusive prefixes: below-theta counts low, equal counts high.
        cnt = popcount(lt_w, HW_POPC) + (popcount(eq_w, HW_POPC) << 16)
        pre = tl.cumsum(cnt, axis=0) - cnt
        quota = tl.maximum(need_eq - eq_seen, 0)  # keys equal to theta still to take, in slot order
        keep = tl.minimum(tl.maximum(quota - (pre >> 16), 0), cnt >> 16)  # equal keys kept per word
        dst = out_pos + (pre & 65535) + tl.minimum(pre >> 16, quota)  # first output position per word
        left = lt_w | eq_w
        eq_taken = tl.zeros_like(keep)
        for _r in range(0, tl.max(popcount(left, HW_POPC), axis=0)):
            low = left & (-left)
            is_eq = (eq_w & low) != 0
            take = (left != 0) & ((~is_eq) | (eq_taken < keep))
            slot = w0 + popcount(low - 1, HW_POPC)
            tl.store(out_base + dst, slot, mask=take)
            if KV_PF > 0:  # the winner's K and V rows into L2 for the attention that follows (KV_PF lines a row)
                l2_prefetch_lines(k_row + slot.to(tl.int64) * skt, take, KV_PF)
                l2_prefetch_lines(v_row + slot.to(tl.int64) * svt, take, KV_PF)
            dst += take.to(tl.int32)
            eq_taken += ((left != 0) & is_eq).to(tl.int32)
            left = left ^ low
        blk = tl.sum(cnt, axis=0)
        out_pos += (blk & 65535) + tl.minimum(blk >> 16, quota)
        eq_seen += blk >> 16
    if HINT and split == 0:  # the bins for the next step's scoring pass; count this call and whether it hit
        hit = _in_window(tl.load(hint_ptr + row * 3), cb, WINDOW)
        tl.store(hint_ptr + row * 3 + 1, tl.load(hint_ptr + row * 3 + 1) + hit.to(tl.int32))
        tl.store(hint_ptr + row * 3 + 2, tl.load(hint_ptr + row * 3 + 2) + 1)
        # cb and its neighbour on the side of the threshold within it, where a small move would take it
        if WINDOW == 2:
            tl.store(hint_ptr + row * 3, tl.where(f_bin < NFB // 2, tl.maximum(cb - 1, 0), cb))
        else:
            tl.store(hint_ptr + row * 3, cb)
    if split == 0:
        for p0 in range(0, K, BLOCK_P):
            p = p0 + tl.arange(0, BLOCK_P)
            tl.store(out_base + p, tl.full((BLOCK_P,), -1, tl.int32), mask=(p >= n_sel) & (p < K))


def _block_t(codes: torch.Tensor) -> int:
    o = options.get().hamming_topk
    return o.score_block_t if hw_flag(codes) else o.interp_score_block_t


def _prologue(q_codes: torch.Tensor, k_codes: torch.Tensor):
    """What both launch forms need: codes with a token's words contiguous (the score pass reads them as one
    vector), group size, cache length, rows, histogram plan and the per-slot key buffer."""
    b, hq, s, nw = q_codes.shape
    hkv, t = k_codes.shape[1], k_codes.shape[2]
    if k_codes.stride(3) != 1 or k_codes.stride(2) != nw:
        k_codes = k_codes.contiguous()
    if hq // hkv > 255:  # _count_planes holds 8 bit planes
        raise ValueError(f"the Triton Hamming select takes at most 255 query heads per KV head, got {hq // hkv}")
    p = plan(hq // hkv, nw * 32)
    n_rows = b * hkv * s
    align = options.get().hamming_topk.key_row_align
    keys = torch.empty((n_rows, triton.cdiv(t, align) * align), dtype=p["key_dtype"], device=q_codes.device)[:, :t]
    return k_codes, hq // hkv, t, n_rows, p, keys


def _l2_prefetch_slots(k_codes: torch.Tensor, nw: int) -> int:
    """Slots of codes each scoring program bulk-prefetches into L2 before its wait; 0 (none) unless on Hopper
    with PDL (the prefetch is issued before the wait) and every split's bytes are 16-aligned (a token's words
    a multiple of 16 bytes, an aligned base)."""
    slots = options.get().hamming_topk.score_l2_prefetch
    ok = pdl_args(k_codes)["PDL"] and nw % 4 == 0 and k_codes.data_ptr() % 16 == 0
    return max(0, slots) if ok else 0


def score_keys(
    q_codes: torch.Tensor, k_codes: torch.Tensor, q_pos: torch.Tensor, sink: int = 0, recent: int = 0, window: int = 0,
    hint: torch.Tensor | None = None,
):
    """Launch 1 alone: (keys (rows, T), a view of a buffer with aligned rows; coarse histograms, plan, n_splits,
    chunk, fine histograms). Keys outside a row's valid range are left unwritten. Also the scoring half of the
    scores + torch.topk alternative. With a ``hint`` (rows, 3) it also histograms the low bits of the keys in
    each row's hinted coarse bin (the last element of the result; None without a hint)."""
    b, hq, s, nw = q_codes.shape
    k_codes, g, t, n_rows, p, keys = _prologue(q_codes, k_codes)
    hkv = k_codes.shape[1]
    o = options.get().hamming_topk
    block_t = _block_t(q_codes)
    n_splits, chunk = _splits(n_rows, t, block_t, o.programs, o.max_splits)
    pf_slots = _l2_prefetch_slots(k_codes, nw)
    hist1 = torch.empty((n_rows, n_splits, p["NCB"]), dtype=torch.int32, device=q_codes.device)
    hist2 = None if hint is None else torch.empty((n_rows, n_splits, 2 * p["NFB"]), dtype=torch.int32, device=q_codes.device)
    _score_kernel[(n_rows, n_splits)](
        q_codes, k_codes, q_pos, keys, hist1, hist1 if hint is None else hint, hist1 if hint is None else hist2,
        s, hkv, t, keys.stride(0), chunk, n_splits, window, sink, recent, pf_slots,
        *q_codes.stride(), *k_codes.stride()[:2], *q_pos.stride(),
        G=g, NW=nw, NWP=next_pow2(nw), L=p["L"], J0=p["J0"],
        SHIFT=p["SHIFT"], NCB=p["NCB"], BLOCK_T=block_t, HW_POPC=hw_flag(q_codes), PREFETCH=o.score_prefetch,
        HINT=hint is not None, NFB=p["NFB"], L2PF=pf_slots > 0, L2_AHEAD=o.score_l2_ahead if pf_slots else 0,
        num_warps=o.score_warps,
        **pdl_args(q_codes),
        **reg_cap(o.score_maxnreg),
    )
    return keys, hist1, p, n_splits, chunk, hist2


def _kv_prefetch_rows(q_codes: torch.Tensor, k_cache, v_cache, n_sel: int) -> int:
    """128-byte lines of one K (and V) row that the write pass prefetches for each selected slot: 1, 2 or 4,
    or 0 for no prefetch. Only on Hopper with PDL, for caches (B, Hkv, T, D) of one row size, rows 16-byte
    aligned, and when the ``n_sel`` selected K and V rows take at most ``kv_prefetch_l2`` (:mod:`hatac.kernels.options`) of the
    L2: rows prefetched past its size evict each other before the attention reads them (H100: slower at
    B8/128K/2048, 67 MB; docs/PERFORMANCE.md)."""
    o = options.get().hamming_topk
    if k_cache is None or v_cache is None or not o.kv_prefetch or not pdl_args(q_codes)["PDL"]:
        return 0
    row = k_cache.shape[-1] * k_cache.element_size()
    if row not in (128, 256, 512) or v_cache.shape[-1] * v_cache.element_size() != row:
        return 0
    for c in (k_cache, v_cache):
        if c.dim() != 4 or c.stride(-1) != 1 or c.data_ptr() % 16 or any(st * c.element_size() % 16 for st in c.stride()[:3]):
            return 0
    if 2 * n_sel * row > o.kv_prefetch_l2 * _l2_bytes(q_codes.device):
        return 0
    return row // 128


def _l2_bytes(device: torch.device) -> int:
    return int(device_properties(device).L2_cache_size)


def hamming_topk(
    q_codes: torch.Tensor,
    k_codes: torch.Tensor,
    q_pos: torch.Tensor,
    k: int,
    budget: float,
    sink: int = 0,
    recent: int = 0,
    window: int = 0,
    k_cache: torch.Tensor | None = None,
    v_cache: torch.Tensor | None = None,
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    """Triton body of ``hatac::hamming_topk``: (B, Hkv, S, k) int32 slots, ascending, -1 padded.

    With ``k_cache`` and ``v_cache`` ((B, Hkv, T, D) each, what the sparse attention will gather from), the
    write pass also asks the L2 for the K and V rows of the slots it selects (``prefetch.global.L2``), so
    the attention after it finds them there; only when those rows fit in the L2 (:func:`_kv_prefetch_rows`)."""
    b, hq, s, nw = q_codes.shape
    hkv, t = k_codes.shape[1], k_codes.shape[2]
    if out is None:
        out = torch.empty((b, hkv, s, k), dtype=torch.int32, device=q_codes.device)
    if s > _ROW_CHUNK:  # bound the per-call key buffer; decode never comes here
        for c0 in range(0, s, _ROW_CHUNK):
            out[:, :, c0 : c0 + _ROW_CHUNK] = hamming_topk(
                q_codes[:, :, c0 : c0 + _ROW_CHUNK], k_codes, q_pos[:, c0 : c0 + _ROW_CHUNK], k, budget, sink, recent, window,
                k_cache, v_cache,
            )
        return out
    if out.numel() == 0:
        return out
    if t == 0:
        return out.fill_(-1)
    n_rows = b * hkv * s
    o = options.get().hamming_topk
    hint = selection_hint(k_codes, n_rows) if (o.hint and s == 1) else None
    keys, hist1, p, n_splits1, chunk1, hist2 = score_keys(q_codes, k_codes, q_pos, sink, recent, window, hint)
    base_t = o.select_block_t if hw_flag(q_codes) else o.interp_select_block_t
    if hint is not None:  # the scoring pass's splits: its fine histograms are per split
        n_splits, chunk = n_splits1, chunk1
    else:
        n_splits, chunk = _splits(n_rows, t, base_t, o.select_programs, o.select_max_splits)
    block_t, warps = select_geometry(n_rows, chunk, base_t)
    if hint is None and block_t != base_t:  # doubled blocks: splits of whole ones (H100 B8/128K hint off: -7 us)
        n_splits, chunk = _splits(n_rows, t, block_t, o.select_programs, o.select_max_splits)
    # With the hint the fine pass mostly skips its scan: its programs keep one warp (two made a hit's fine pass
    # 1.7 us slower at B8/128K), and its blocks, which only matter on a miss, stay the narrow ones.
    fine_t, fine_warps = select_geometry(n_rows, 0, base_t) if hint is not None else (block_t, warps)
    nsp = next_pow2(n_splits)
    dev = q_codes.device
    if hist2 is None:
        hist2 = torch.empty((n_rows, n_splits, p["NFB"]), dtype=torch.int32, device=dev)
    hnfb = hist2.shape[2]  # 2 NFB with the hint (the scoring pass's two bins), else NFB
    less = torch.empty((n_rows, n_splits), dtype=torch.int32, device=dev)
    cb = torch.empty((n_rows, 2), dtype=torch.int32, device=dev)  # the threshold's coarse bin; its fine offset
    is_frac, want_fixed, budget_bits = budget_args(budget)
    grid = (n_rows, n_splits)
    common = (s, hkv, t, keys.stride(0), k, chunk, n_splits, window, sink, recent, want_fixed, budget_bits, *q_pos.stride())
    hint_arg = cb if hint is None else hint
    _fine_kernel[grid](
        q_pos, keys, hist1, hist2, less, cb, hint_arg, n_splits1, *common,
        IS_FRAC=is_frac, SHIFT=p["SHIFT"], NCB=p["NCB"], NFB=p["NFB"], HNFB=hnfb, NSP1=next_pow2(n_splits1), BLOCK_T=fine_t,
        HINT=hint is not None, WINDOW=o.hint_window, num_warps=fine_warps, **pdl_args(q_codes),
        **reg_cap(o.select_maxnreg),
    )
    kv_pf = _kv_prefetch_rows(q_codes, k_cache, v_cache, n_rows * k)
    kc, vc = (k_cache, v_cache) if kv_pf else (keys, keys)
    _write_kernel[grid](
        q_pos, keys, hist2, less, cb, out, hint_arg, kc, vc, *common,
        *(kc.stride()[:3] + vc.stride()[:3] if kv_pf else (0,) * 6),
        IS_FRAC=is_frac, SHIFT=p["SHIFT"], NFB=p["NFB"], HNFB=hnfb, NSP=nsp, BLOCK_T=block_t, BLOCK_P=256, HW_POPC=hw_flag(q_codes),
        HINT=hint is not None, KV_PF=kv_pf, KEY_PREFETCH=triton.cdiv(chunk, block_t) <= o.write_prefetch_blocks,
        WINDOW=o.hint_window, num_warps=warps, **pdl_args(q_codes), **reg_cap(o.select_maxnreg),
    )
    return out

