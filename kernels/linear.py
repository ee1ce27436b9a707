"""``hatac::linear`` on CUDA: ``x @ W^T (+ b)`` for a few rows of ``x`` (a decode step), as a Triton GEMV.

Why: at decode a projection is a GEMM of M = batch rows, bound by reading its weight. cuBLAS runs most of
Llama-3-8B's at 2.5-2.8 TB/s on the H100, but picks a 64-CTA kernel for ``o_proj`` (N = K = 4096) that
reads at 2.1 TB/s. One program per BLOCK_N output features, streaming those rows of W with a few loads in
flight (``num_stages``), beats it where its programs spread evenly over the SMs (H100, batch
1-16: faster than cuBLAS for o_proj, lm_head and down, even for gate/up; q/k/v, 192 programs on 132 SMs,
slower, so they stay with cuBLAS: ``min_wave_fill``; docs/PERFORMANCE.md, Decisions). Splitting K across
programs as well bought nothing.

Rows past the kernel option ``linear.max_rows`` (:mod:`hatac.kernels.options`), other dtypes and layouts go to ``torch.nn.functional.linear`` (cuBLAS):
prefill, and anything this kernel was not measured on.

The same kernel is ``hatac::linear_silu_mul``'s body (GATED): a gated MLP's stacked gate/up weight, each
program streaming its features' gate rows and up rows and storing SiLU(gate) * up, so that no SiLU-and-mul
kernel stands between gate/up and down (docs/PERFORMANCE.md, Decisions).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
import triton
import triton.language as tl

from hatac import reference
from hatac.kernels import options
from hatac.kernels._common import device_properties, grid_sync, hw_flag, interpreting, l2_prefetch, pdl_args

INTERP = {"block_n": 16, "block_k": 32}  # under the interpreter (tests shrink shapes)
_DTYPES = (torch.bfloat16, torch.float16)


@triton.jit
def _gemv_kernel(
    x_ptr, w_ptr, b_ptr, y_ptr, M, N, K, sxm, swn, sym,
    HAS_BIAS: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
    HW_DOT: tl.constexpr, PDL: tl.constexpr, PF_BYTES: tl.constexpr, GATED: tl.constexpr,
):
    """y = x @ W^T (+ b) for BLOCK_N output features a program. GATED: W is [gate; up] (2N rows) and the
    program streams both halves' rows of its features, storing SiLU(x @ Wg^T) * (x @ Wu^T) (no bias)."""
    n0 = tl.program_id(0) * BLOCK_N
    if PF_BYTES > 0:  # contiguous rows: this program's are one span of the weight
        span = tl.minimum(PF_BYTES, (tl.minimum(N - n0, BLOCK_N) * K * w_ptr.dtype.element_ty.primitive_bitwidth) // 8)
        base = (w_ptr + n0.to(tl.int64) * swn).to(tl.pointer_type(tl.int8))
        for off in range(0, span, 65536):
            l2_prefetch(base + off, tl.minimum(span - off, 65536))
    grid_sync(PDL)
    n = n0 + tl.arange(0, BLOCK_N)
    m = tl.arange(0, BLOCK_M)
    nm = n < N
    acc = tl.zeros((BLOCK_M, BLOCK_N), tl.float32)
    acc_up = tl.zeros((BLOCK_M, BLOCK_N), tl.float32)
    for k0 in range(0, K, BLOCK_K):
        k = k0 + tl.arange(0, BLOCK_K)
        km = k < K
        x = tl.load(x_ptr + m[:, None] * sxm + k[None, :], mask=(m[:, None] < M) & km[None, :], other=0.0)
        w = tl.load(w_ptr + n[:, None].to(tl.int64) * swn + k[None, :], mask=nm[:, None] & km[None, :], other=0.0)
        if GATED:
            wu = tl.load(w_ptr + (n + N)[:, None].to(tl.int64) * swn + k[None, :], mask=nm[:, None] & km[None, :], other=0.0)
        if not HW_DOT:  # the interpreter's 16-bit dot is wrong: float32 there (exact products of 16-bit values)
            x = x.to(tl.float32)
            w = w.to(tl.float32)
            if GATED:
                wu = wu.to(tl.float32)
        acc = tl.dot(x, tl.trans(w), acc)
        if GATED:
            acc_up = tl.dot(x, tl.trans(wu), acc_up)
    if HAS_BIAS:
        acc += tl.load(b_ptr + n, mask=nm, other=0.0).to(tl.float32)[None, :]
    out_ty = y_ptr.dtype.element_ty
    if GATED:  # rounded where the unfused graph rounds: the linear's output, then SiLU's
        gate = acc.to(out_ty).to(tl.float32)
        gate = (gate * tl.sigmoid(gate)).to(out_ty).to(tl.float32)
        acc = gate * acc_up.to(out_ty).to(tl.float32)
    tl.store(y_ptr + m[:, None] * sym + n[None, :], acc.to(out_ty), mask=(m[:, None] < M) & nm[None, :])


def gemv_fits(x: torch.Tensor, w: torch.Tensor, bias: torch.Tensor | None, gated: bool = False) -> bool:
    """Whether :func:`linear` (``gated``: :func:`linear_silu_mul`) takes the Triton GEMV for these operands."""
    if not (hw_flag(x) or interpreting()) or x.dtype not in _DTYPES or w.dtype != x.dtype or w.dim() != 2:
        return False
    if gated and (bias is not None or w.shape[0] % 2):  # no bias; [gate; up] halves of equal rows
        return False
    if bias is not None and (bias.dtype != x.dtype or bias.dim() != 1 or bias.stride(0) != 1):
        return False
    k = x.shape[-1] if x.dim() else 0
    rows = x.numel() // k if k else 0
    o = options.get().linear
    if not (1 <= rows <= o.max_rows and w.shape[1] == k and w.stride(1) == 1 and w.shape[0] >= 1):
        return False
    return x.device.type != "cuda" or _wave_fill(w.shape[0], x.device) >= o.min_wave_fill


def _sm_count(device: torch.device) -> int:
    return device_properties(device).multi_processor_count


def _wave_fill(n: int, device: torch.device) -> float:
    """Mean programs an SM over the most any SM runs (1.0: every SM equally busy)."""
    sms = _sm_count(device)
    programs = triton.cdiv(n, options.get().linear.block_n)
    return programs / sms / triton.cdiv(programs, sms)


def _prefetch_bytes(x: torch.Tensor, w: torch.Tensor, block_n: int, frac: float) -> int:
    """Bytes of its weight rows each program bulk-prefetches into L2 before its wait (``frac`` of them, a
    multiple of 16), or 0: only with PDL (it is issued before the wait, so that the read overlaps the kernel in
    front; the weight never depends on that kernel) and rows that follow each other, 16-byte aligned."""
    row = w.shape[1] * w.element_size()
    if frac <= 0 or not pdl_args(x)["PDL"] or w.stride(0) != w.shape[1] or w.data_ptr() % 16 or row % 16:
        return 0
    return max(16, int(frac * block_n * row) // 16 * 16)


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None, l2_prefetch: float = 0.0) -> torch.Tensor:
    """Triton body of ``hatac::linear``: ``F.linear(x, weight, bias)``, through the GEMV for a few rows; with
    ``l2_prefetch`` > 0 each program first asks the L2 for that fraction of its weight rows (Hopper, PDL)."""
    if not gemv_fits(x, weight, bias):
        return F.linear(x, weight, bias)
    return _launch(x, weight, bias, l2_prefetch, gated=False)


def linear_silu_mul(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """Triton body of ``hatac::linear_silu_mul``: ``SiLU(x @ Wg^T) * (x @ Wu^T)`` for ``weight = [Wg; Wu]``,
    the GEMV storing only the product (no separate SiLU-and-mul kernel, no [gate | up] round trip)."""
    if not gemv_fits(x, weight, None, gated=True):
        return reference.linear_silu_mul(x, weight)
    return _launch(x, weight, None, 0.0, gated=True)


def _launch(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, l2_prefetch: float, gated: bool) -> torch.Tensor:
    k = x.shape[-1]
    n = weight.shape[0] // 2 if gated else weight.shape[0]
    x2 = x.reshape(-1, k)
    if x2.stride(1) != 1:
        x2 = x2.contiguous()
    rows = x2.shape[0]
    y = torch.empty((rows, n), dtype=x.dtype, device=x.device)
    hw = hw_flag(x)
    cfg = options.get().linear.gated if gated else options.get().linear
    block_n = cfg.block_n if hw else INTERP["block_n"]
    block_k = cfg.block_k if hw else INTERP["block_k"]
    _gemv_kernel[(triton.cdiv(n, block_n),)](
        x2, weight, weight if bias is None else bias, y, rows, n, k, x2.stride(0), weight.stride(0), y.stride(0),
        HAS_BIAS=bias is not None, BLOCK_M=16, BLOCK_N=block_n, BLOCK_K=block_k, HW_DOT=hw, GATED=gated,
        PF_BYTES=0 if gated else _prefetch_bytes(x, weight, block_n, l2_prefetch),
        num_warps=cfg.warps, num_stages=cfg.stages if hw else 1, **pdl_args(x),
    )
    return y.view(*x.shape[:-1], n)
