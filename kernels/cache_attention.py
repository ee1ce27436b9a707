"""Dense causal attention over the cache (prefill and dense layers): a flash-attention forward whose mask
is each query's position, not a materialized (S x T) mask.

A program owns BLOCK_M query rows of one query head and walks the key blocks from the lowest slot any
of its rows may see to the highest, with an online softmax. The per-row bound ``q_pos`` (and an optional
sliding ``window``) is applied inside the loop, so a 128K-token prompt prefilled in chunks never builds
a mask; rows of different lengths need nothing more. Matches ``reference.cache_attention``.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from hatac.kernels._common import grid_sync, hw_flag, next_pow2, pdl_args

_LOG2E = 1.4426950408889634


@triton.jit
def _cache_attention_kernel(
    q_ptr, k_ptr, v_ptr, pos_ptr, o_ptr,
    qk_scale, S, T, Hq, D, DV, window,
    sqb, sqh, sqs, sqd,
    skb, skh, skt, skd,
    svb, svh, svt, svd,
    spb, sps,
    sob, soh, sos, sod,
    G: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_DV: tl.constexpr,
    F32_DOT: tl.constexpr, PDL: tl.constexpr,
):
    grid_sync(PDL)
    mb = tl.program_id(0)
    bh = tl.program_id(1)
    b = bh // Hq
    h = bh % Hq
    kv = h // G
    m = mb * BLOCK_M + tl.arange(0, BLOCK_M)
    d = tl.arange(0, BLOCK_D)
    dv = tl.arange(0, BLOCK_DV)
    row_ok = m < S
    pos = tl.load(pos_ptr + b.to(tl.int64) * spb + m * sps, mask=row_ok, other=0).to(tl.int32)
    hi = pos + 1
    lo = tl.where(window > 0, tl.maximum(hi - window, 0), 0)
    q = tl.load(q_ptr + b.to(tl.int64) * sqb + h * sqh + m[:, None] * sqs + d[None, :] * sqd,
                mask=row_ok[:, None] & (d[None, :] < D), other=0.0)
    if F32_DOT:
        q = q.to(tl.float32)
    k_base = k_ptr + b.to(tl.int64) * skb + kv.to(tl.int64) * skh
    v_base = v_ptr + b.to(tl.int64) * svb + kv.to(tl.int64) * svh
    m_i = tl.full((BLOCK_M,), float("-inf"), tl.float32)
    l_i = tl.zeros((BLOCK_M,), tl.float32)
    acc = tl.zeros((BLOCK_M, BLOCK_DV), tl.float32)
    start = tl.min(tl.where(row_ok, lo, T), axis=0)
    stop = tl.minimum(tl.max(tl.where(row_ok, hi, 0), axis=0), T)
    start = (start // BLOCK_N) * BLOCK_N
    for n0 in range(start, stop, BLOCK_N):
        n = n0 + tl.arange(0, BLOCK_N)
        n_ok = n < T
        kt = tl.load(k_base + n.to(tl.int64)[:, None] * skt + d[None, :] * skd, mask=n_ok[:, None] & (d[None, :] < D), other=0.0)
        vt = tl.load(v_base + n.to(tl.int64)[:, None] * svt + dv[None, :] * svd, mask=n_ok[:, None] & (dv[None, :] < DV), other=0.0)
        if F32_DOT:
            s = tl.dot(q, tl.trans(kt.to(tl.float32)), input_precision="ieee")
        else:
            s = tl.dot(q, tl.trans(kt.to(q.dtype)))
        live = (n[None, :] < hi[:, None]) & (n[None, :] >= lo[:, None]) & n_ok[None, :]
        s = tl.where(live, s * qk_scale, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, axis=1))
        m_ref = tl.where(m_new == float("-inf"), 0.0, m_new)
        alpha = tl.exp2(m_i - m_ref)
        p = tl.exp2(s - m_ref[:, None])
        l_i = l_i * alpha + tl.sum(p, axis=1)
        if F32_DOT:
            acc = acc * alpha[:, None] + tl.dot(p, vt.to(tl.float32), input_precision="ieee")
        else:
            acc = acc * alpha[:, None] + tl.dot(p.to(vt.dtype), vt)
        m_i = m_new
    out = acc / tl.where(l_i > 0, l_i, 1.0)[:, None]
    tl.store(o_ptr + b.to(tl.int64) * sob + h * soh + m[:, None] * sos + dv[None, :] * sod,
             out.to(o_ptr.dtype.element_ty), mask=row_ok[:, None] & (dv[None, :] < DV))


def _dense_decode(q, k_cache, v_cache, q_pos, scale, window):
    """One query row: flash-decoding (split over the cache, G query heads of a KV head together) with the
    sparse-attention kernel in its dense mode: contiguous slots up to the row's position, no index row.
    The split-K parallelism is what a one-row flash forward lacks."""
    from hatac.kernels.sparse_attention import sparse_attention

    return sparse_attention(q, k_cache, v_cache, None, scale, q_pos=q_pos, window=window)


def cache_attention(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, q_pos: torch.Tensor, scale: float, window: int = 0) -> torch.Tensor:
    """Triton body of ``hatac::cache_attention``: (B, Hq, S, D) over (B, Hkv, T, D) caches, causal by position."""
    b, hq, s, d = q.shape
    hkv, t, dv = k_cache.shape[1], k_cache.shape[2], v_cache.shape[3]
    if s == 1:
        return _dense_decode(q, k_cache, v_cache, q_pos, scale, window)
    out = torch.empty((b, hq, s, dv), dtype=q.dtype, device=q.device)
    if b == 0 or s == 0:
        return out
    hw = hw_flag(q)
    block_m = 64 if s >= 64 else max(16, next_pow2(s))
    block_n = 64 if d <= 128 else 32
    grid = (triton.cdiv(s, block_m), b * hq)
    _cache_attention_kernel[grid](
        q, k_cache, v_cache, q_pos, out,
        scale * _LOG2E, s, t, hq, d, dv, int(window),
        *q.stride(), *k_cache.stride(), *v_cache.stride(), *q_pos.stride(), *out.stride(),
        G=hq // hkv, BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_D=max(16, next_pow2(d)), BLOCK_DV=max(16, next_pow2(dv)),
        F32_DOT=not hw or q.dtype == torch.float32,
        num_warps=4, num_stages=2 if hw else 1, **pdl_args(q),
    )
    return out
