"""Sparse attention over selected cache slots: flash-decoding with gathered K/V rows.

A program owns one (batch, KV head, query row) and one contiguous piece of that row's selection: it
gathers the selected K and V rows, runs an online softmax for the G query heads of the KV head together
(so each gathered row is read once for the whole group), and writes a normalised partial output and its
log-sum-exp; the last piece of a row to finish (a per-row atomic counter) merges them, so there is no
second launch. The counters persist between launches and the merging piece resets its row's, so there is
no memset either (``self_reset_counters``). Splitting the selection, not the heads, is what fills the GPU
at batch 1 where there are only Hkv rows.

Slots equal to -1 are skipped; a query with nothing selected gets zeros (reference.sparse_attention).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from hatac.kernels import options
from hatac.kernels._common import device_properties, grid_sync, hw_flag, next_pow2, pdl_args, reg_cap, self_reset_counters

_LOG2E = 1.4426950408889634
# Launch geometry: the kernel options sparse_attention (16-bit caches) and dense_attention (indices=None, which
# streams the whole cache: few programs, long pipelined streams; within 0.8% of SDPA's flash-decoding at batch 8
# and 3.3% at batch 1, 8K-128K, on H100, docs/PERFORMANCE.md; stages drop where shared memory cannot hold them).


@triton.jit
def _attn_split_kernel(
    q_ptr, k_ptr, v_ptr, idx_ptr, o_ptr, lse_ptr, cnt_ptr, out_ptr, pos_ptr,
    qk_scale, S, Hkv, K, D, DV, CHUNK, n_splits, window,
    sqb, sqh, sqs, sqd,
    skb, skh, skt, skd,
    svb, svh, svt, svd,
    sib, sih, sis, sik,
    sob, soh, sos, sod,
    spb, sps,
    G: tl.constexpr, GP: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_DV: tl.constexpr,
    F32_DOT: tl.constexpr, PRECISION: tl.constexpr, DENSE: tl.constexpr, PDL: tl.constexpr,
):
    grid_sync(PDL)
    row = tl.program_id(0)
    split = tl.program_id(1)
    s = row % S
    kv = (row // S) % Hkv
    b = row // (S * Hkv)
    g = tl.arange(0, GP)
    d = tl.arange(0, BLOCK_D)
    dv = tl.arange(0, BLOCK_DV)
    q = tl.load(
        q_ptr + b.to(tl.int64) * sqb + (kv * G + g)[:, None] * sqh + s * sqs + d[None, :] * sqd,
        mask=(g[:, None] < G) & (d[None, :] < D), other=0.0,
    )
    if F32_DOT:
        q = q.to(tl.float32)
    k_base = k_ptr + b.to(tl.int64) * skb + kv.to(tl.int64) * skh
    v_base = v_ptr + b.to(tl.int64) * svb + kv.to(tl.int64) * svh
    i_base = idx_ptr + b.to(tl.int64) * sib + kv * sih + s * sis
    m = tl.full((GP,), float("-inf"), tl.float32)
    l = tl.zeros((GP,), tl.float32)
    acc = tl.zeros((GP, BLOCK_DV), tl.float32)
    n_lo = split * CHUNK
    n_hi = tl.minimum(n_lo + CHUNK, K)
    if DENSE:  # every slot up to the query's position (within the window): no index loads, stop at the length
        hi = tl.load(pos_ptr + b.to(tl.int64) * spb + s * sps).to(tl.int32)
        n_hi = tl.minimum(n_hi, hi + 1)
        if window > 0:
            n_lo = tl.maximum(n_lo, hi - window + 1)
    for n0 in range(n_lo, n_hi, BLOCK_N):
        n = n0 + tl.arange(0, BLOCK_N)
        if DENSE:
            used = n < n_hi
            slot64 = n.to(tl.int64)
        else:
            slot = tl.load(i_base + n * sik, mask=n < n_hi, other=-1)
            used = slot >= 0
            slot64 = slot.to(tl.int64)
        kt = tl.load(k_base + slot64[:, None] * skt + d[None, :] * skd, mask=used[:, None] & (d[None, :] < D), other=0.0)
        vt = tl.load(v_base + slot64[:, None] * svt + dv[None, :] * svd, mask=used[:, None] & (dv[None, :] < DV), other=0.0)
        if F32_DOT:
            logits = tl.dot(q, tl.trans(kt.to(tl.float32)), input_precision=PRECISION)
        else:
            logits = tl.dot(q, tl.trans(kt.to(q.dtype)))
        logits = tl.where(used[None, :], logits * qk_scale, float("-inf"))
        m_new = tl.maximum(m, tl.max(logits, axis=1))
        m_ref = tl.where(m_new == float("-inf"), 0.0, m_new)  # no live slot yet: keep exp2 finite
        alpha = tl.exp2(m - m_ref)
        p = tl.exp2(logits - m_ref[:, None])
        l = l * alpha + tl.sum(p, axis=1)
        if F32_DOT:
            acc = acc * alpha[:, None] + tl.dot(p, vt.to(tl.float32), input_precision=PRECISION)
        else:
            acc = acc * alpha[:, None] + tl.dot(p.to(vt.dtype), vt)
        m = m_new
    live = l > 0
    o = acc / tl.where(live, l, 1.0)[:, None]
    lse = tl.where(live, m + tl.log2(tl.where(live, l, 1.0)), float("-inf"))
    part = (row.to(tl.int64) * n_splits + split) * G + g
    gm = g < G
    dvm = dv < DV
    tl.store(o_ptr + part[:, None] * DV + dv[None, :], o, mask=gm[:, None] & dvm[None, :])
    tl.store(lse_ptr + part, lse, mask=gm)
    # The last piece of a row to finish merges all of them (acq_rel atomic: the others' stores are visible).
    done = tl.atomic_add(cnt_ptr + row, 1)
    if done == n_splits - 1:
        tl.atomic_xchg(cnt_ptr + row, 0)  # every piece has counted: leave zero for the next launch
        top = tl.full((GP,), float("-inf"), tl.float32)
        wsum = tl.zeros((GP,), tl.float32)
        res = tl.zeros((GP, BLOCK_DV), tl.float32)
        for sp in range(0, n_splits):
            part = (row.to(tl.int64) * n_splits + sp) * G + g
            lse_sp = tl.load(lse_ptr + part, mask=gm, other=float("-inf"))
            o_sp = tl.load(o_ptr + part[:, None] * DV + dv[None, :], mask=gm[:, None] & dvm[None, :], other=0.0)
            new_top = tl.maximum(top, lse_sp)
            ref = tl.where(new_top == float("-inf"), 0.0, new_top)
            scale_old = tl.exp2(top - ref)
            w_sp = tl.exp2(lse_sp - ref)
            wsum = wsum * scale_old + w_sp
            res = res * scale_old[:, None] + o_sp * w_sp[:, None]
            top = new_top
        res = res / tl.where(wsum > 0, wsum, 1.0)[:, None]
        dst = out_ptr + b.to(tl.int64) * sob + (kv * G + g)[:, None] * soh + s * sos + dv[None, :] * sod
        tl.store(dst, res.to(out_ptr.dtype.element_ty), mask=gm[:, None] & dvm[None, :])


def _fit_stages(device: torch.device, block_n: int, stages: int, row_bytes: int) -> tuple[int, int]:
    """(block_n, stages) whose pipelined K and V tiles (``stages`` x ``block_n`` rows of ``row_bytes``, plus
    slack) fit in the device's shared memory: fewer stages first, then shorter tiles (down to 2 x 32)."""
    room = int(device_properties(device).shared_memory_per_multiprocessor) - 16 * 1024
    while stages * block_n * row_bytes > room and (stages > 2 or block_n > 32):
        if stages > 2:
            stages -= 1
        else:
            block_n //= 2
    return block_n, stages


def _splits(n_rows: int, k: int, block_n: int, cfg=None) -> tuple[int, int]:
    """Pieces of each row's selection, aiming at ``cfg.programs`` programs (528: four per multiprocessor on H100);
    ``cfg``: the sparse or dense attention's kernel options (default: the current sparse ones)."""
    cfg = cfg or options.get().sparse_attention
    want = max(1, min(cfg.max_splits, triton.cdiv(cfg.programs, n_rows), triton.cdiv(k, block_n)))
    chunk = triton.cdiv(triton.cdiv(k, want), block_n) * block_n
    return triton.cdiv(k, chunk), chunk


def sparse_attention(
    q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, indices: torch.Tensor | None, scale: float,
    out: torch.Tensor | None = None, q_pos: torch.Tensor | None = None, window: int = 0,
) -> torch.Tensor:
    """Triton body of ``hatac::sparse_attention``: (B, Hq, S, Dv) in q's dtype.

    ``indices=None`` is dense decoding (flash-decoding over the whole cache): every slot up to ``q_pos``
    (B, S) and within ``window``, read contiguously with no index loads.
    """
    b, hq, s, d = q.shape
    hkv, dv = k_cache.shape[1], v_cache.shape[3]
    dense = indices is None
    if dense:
        if q_pos is None:
            raise ValueError("dense decoding needs q_pos")
        q_pos = q_pos.expand(b, s)  # read in place (any integer dtype, any strides): no cast kernel
        kk = k_cache.shape[2]
    else:
        kk = indices.shape[-1]
    g = hq // hkv
    if out is None:
        out = torch.empty((b, hq, s, dv), dtype=q.dtype, device=q.device)
    if out.numel() == 0:
        return out
    if kk == 0:
        return out.zero_()
    hw = hw_flag(q)
    f32 = (not hw) or q.dtype == torch.float32 or k_cache.dtype == torch.float32 or v_cache.dtype == torch.float32
    block_d, block_dv = max(16, next_pow2(d)), max(16, next_pow2(dv))
    wide = (block_d + block_dv) * (4 if f32 else 2) > 512
    opts = options.get()
    cfg = opts.dense_attention if dense else opts.sparse_attention
    block_n = 32 if (wide or not hw) else cfg.block_n
    stages = cfg.stages
    if dense and hw:
        block_n, stages = _fit_stages(q.device, block_n, stages, (block_d + block_dv) * k_cache.element_size())
    n_rows = b * hkv * s
    n_splits, chunk = _splits(n_rows, kk, block_n, cfg)
    o_part = torch.empty((n_rows, n_splits, g, dv), dtype=torch.float32, device=q.device)
    lse_part = torch.empty((n_rows, n_splits, g), dtype=torch.float32, device=q.device)
    counters = self_reset_counters("sparse_attention", q.device, n_rows)
    if counters is None:
        counters = torch.zeros((n_rows,), dtype=torch.int32, device=q.device)
    idx_strides = (0, 0, 0, 0) if dense else indices.stride()
    _attn_split_kernel[(n_rows, n_splits)](
        q, k_cache, v_cache, q_pos if dense else indices, o_part, lse_part, counters, out, q_pos if dense else counters,
        float(scale) * _LOG2E, s, hkv, kk, d, dv, chunk, n_splits, int(window),
        *q.stride(), *k_cache.stride(), *v_cache.stride(), *idx_strides, *out.stride(),
        *(q_pos.stride() if dense else (0, 0)),
        G=g, GP=max(16, next_pow2(g)), BLOCK_N=block_n, BLOCK_D=block_d, BLOCK_DV=block_dv,
        F32_DOT=f32, PRECISION="ieee", DENSE=dense,
        num_warps=8 if (f32 and block_d >= 128) else cfg.warps, num_stages=stages, **pdl_args(q),
        **reg_cap(opts.sparse_attention.maxnreg),
    )
    return out
