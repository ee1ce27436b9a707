"""Select and attend in one op: the Hamming top-k's write pass and the sparse attention as one kernel.

``hatac::topk_attention`` is ``sparse_attention(q, K, V, hamming_topk(q_codes, ...))``. Its Triton body
runs the select's scoring and fine-histogram passes as ``hamming_topk`` does, then one kernel over the
write pass's grid (rows x splits of the cache): each program places its split's winners (their slots,
in slot order, written to a scratch row and read back by the same program), attends the G query heads of
its KV head to exactly those K/V rows with an online softmax, and stores a partial output; the last piece
of a row merges the row's pieces (as in ``sparse_attention``). Against the two ops in sequence this
saves a launch boundary and a wave of latency a hashed layer, and the attention's gathers are spread
over the write pass's many programs.

A row's winners are spread over its splits by where they sit in the cache, so pieces are uneven (recent
tokens, for instance, all fall in the last split); an empty piece stores an empty partial.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from hatac.kernels._common import grid_sync, hw_flag, next_pow2, pdl_args, self_reset_counters
from hatac.kernels.hamming_topk import _ROW_CHUNK, _place_winners, _row_coords, select_passes, write_span
from hatac.kernels.sparse_attention import _LOG2E, attend_block, finish_piece
from hatac.kernels.sparse_attention import sparse_attention as sparse_attention_kernel

# Launch geometry of the fused kernel (GPU; examples/tune_kernels.py --fused-only). warps None: the
# select's own choice (one warp with many rows); block_n: winners gathered per online-softmax step; merge_pieces: partials loaded per merge round;
# programs: the grid this kernel aims at, each program covering one or more of the fine pass's splits (None:
# one each). The scoring and fine passes keep their own geometry.
CONFIG = {"warps": 2, "block_n": 16, "merge_pieces": 8, "programs": 1024}


@triton.jit
def _select_attend_kernel(
    qpos_ptr, keys_ptr, hist2_ptr, less_ptr, cb_ptr, idx_ptr, hint_ptr,
    S, Hkv, T, K, CHUNK, n_splits, window, sink, recent, want_fixed, budget_bits,
    spb, sps,
    q_ptr, k_ptr, v_ptr, o_ptr, lse_ptr, cnt_ptr, out_ptr, qk_scale, D, DV,
    sqb, sqh, sqs, sqd,
    skb, skh, skt, skd,
    svb, svh, svt, svd,
    sob, soh, sos, sod,
    IS_FRAC: tl.constexpr, SHIFT: tl.constexpr, NFB: tl.constexpr, NSP: tl.constexpr,
    BLOCK_T: tl.constexpr, HW_POPC: tl.constexpr, HINT: tl.constexpr, MUL: tl.constexpr,
    G: tl.constexpr, GP: tl.constexpr, GM: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
    BLOCK_DV: tl.constexpr, F32_DOT: tl.constexpr, PRECISION: tl.constexpr, MERGE_PC: tl.constexpr, PDL: tl.constexpr,
):
    grid_sync(PDL)
    row = tl.program_id(0)
    split = tl.program_id(1)
    p_lo, p_hi, _ = _place_winners(
        qpos_ptr, keys_ptr, hist2_ptr, less_ptr, cb_ptr, idx_ptr, hint_ptr, row, split,
        S, Hkv, T, K, CHUNK, n_splits, window, sink, recent, want_fixed, budget_bits, spb, sps,
        IS_FRAC, SHIFT, NFB, NSP, BLOCK_T, HW_POPC, HINT, MUL,
    )
    tl.debug_barrier()  # this program's slot stores are visible to all its threads
    b, kv, s = _row_coords(row, S, Hkv)
    g = tl.arange(0, GP)
    d = tl.arange(0, BLOCK_D)
    dv = tl.arange(0, BLOCK_DV)
    m = tl.full((GP,), float("-inf"), tl.float32)
    l = tl.zeros((GP,), tl.float32)
    acc = tl.zeros((GP, BLOCK_DV), tl.float32)
    if p_hi > p_lo:
        q = tl.load(
            q_ptr + b.to(tl.int64) * sqb + (kv * G + g)[:, None] * sqh + s * sqs + d[None, :] * sqd,
            mask=(g[:, None] < G) & (d[None, :] < D), other=0.0,
        )
        if F32_DOT:
            q = q.to(tl.float32)
        k_base = k_ptr + b.to(tl.int64) * skb + kv.to(tl.int64) * skh
        v_base = v_ptr + b.to(tl.int64) * svb + kv.to(tl.int64) * svh
        i_base = idx_ptr + row.to(tl.int64) * K
        for n0 in range(p_lo, p_hi, BLOCK_N):
            n = n0 + tl.arange(0, BLOCK_N)
            used = n < p_hi
            slot = tl.load(i_base + n, mask=used, other=0)
            m, l, acc = attend_block(q, k_base, v_base, slot.to(tl.int64), used, d, dv, D, DV, skt, skd, svt, svd,
                                     m, l, acc, qk_scale, F32_DOT, PRECISION)
    finish_piece(m, l, acc, o_ptr, lse_ptr, cnt_ptr, out_ptr, row, split, tl.cdiv(n_splits, MUL), b, kv, s, DV, sob, soh, sos, sod,
                 G, GP, BLOCK_DV, GM, NSP, MERGE_PC)


def topk_attention(
    q: torch.Tensor,
    q_codes: torch.Tensor,
    k_codes: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    q_pos: torch.Tensor,
    k: int,
    budget: float,
    scale: float,
    sink: int = 0,
    recent: int = 0,
    window: int = 0,
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    """Triton body of ``hatac::topk_attention``: (B, Hq, S, Dv) in q's dtype."""
    from hatac.kernels.hamming_topk import hamming_topk as hamming_topk_kernel

    b, hq, s, d = q.shape
    hkv, t, dv = k_codes.shape[1], k_codes.shape[2], v_cache.shape[3]
    if out is None:
        out = torch.empty((b, hq, s, dv), dtype=q.dtype, device=q.device)
    if out.numel() == 0:
        return out
    if t == 0 or k == 0 or s > _ROW_CHUNK:  # nothing to select, or a long prefill: the two ops in sequence
        idx = hamming_topk_kernel(q_codes, k_codes, q_pos, k, budget, sink, recent, window)
        return sparse_attention_kernel(q, k_cache, v_cache, idx, scale, out=out)
    sel = select_passes(q_codes, k_codes, q_pos, k, budget, sink, recent, window)
    n_rows, n_fine = sel.grid
    # Each program covers ``mul`` of the fine pass's splits, so the grid is about CONFIG["programs"].
    mul = write_span(n_rows, n_fine, CONFIG["programs"])
    n_splits = triton.cdiv(n_fine, mul)
    g = hq // hkv
    hw = hw_flag(q)
    f32 = (not hw) or torch.float32 in (q.dtype, k_cache.dtype, v_cache.dtype)
    idx = torch.empty((n_rows, k), dtype=torch.int32, device=q.device)
    o_part = torch.empty((n_rows, n_splits, g, dv), dtype=torch.float32, device=q.device)
    lse_part = torch.empty((n_rows, n_splits, g), dtype=torch.float32, device=q.device)
    counters = self_reset_counters("topk_attention", q.device, n_rows)
    if counters is None:
        counters = torch.zeros((n_rows,), dtype=torch.int32, device=q.device)
    _select_attend_kernel[(n_rows, n_splits)](
        q_pos, sel.keys, sel.hist2, sel.less, sel.cb, idx, sel.hint, *sel.common,
        q, k_cache, v_cache, o_part, lse_part, counters, out, float(scale) * _LOG2E, d, dv,
        *q.stride(), *k_cache.stride(), *v_cache.stride(), *out.stride(),
        **sel.meta, MUL=mul, G=g, GP=max(16, next_pow2(g)), GM=next_pow2(g), BLOCK_N=CONFIG["block_n"],
        BLOCK_D=max(16, next_pow2(d)), BLOCK_DV=max(16, next_pow2(dv)), F32_DOT=f32, PRECISION="ieee",
        MERGE_PC=CONFIG["merge_pieces"], num_warps=CONFIG["warps"] or sel.warps, **pdl_args(q),
    )
    return out
