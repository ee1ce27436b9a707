"""``hatac::add_rms_norm`` on CUDA: ``s = x + residual`` and ``weight * RMSNorm(s)`` in one Triton kernel,
one program a row, launched with programmatic dependent launch.

Why: at decode a Llama-style decoder runs this between two weight streams (after ``o_proj`` and after
``down_proj``). torch.compile fuses it into one kernel too, but on torch 2.11 inductor launches it without PDL,
so the GEMV in front finishes, the norm launches, and the GEMV behind it cannot start until the norm has.
As a hatac kernel it launches while the GEMV in front drains and lets the one behind launch under it (which
may ask the L2 for its weight meanwhile: ``l2_prefetch``).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from hatac import reference
from hatac.kernels._common import grid_sync, hw_flag, interpreting, pdl_args

MAX_N = 16384  # a row in one block; wider rows take the reference
_DTYPES = (torch.bfloat16, torch.float16)


@triton.jit
def _add_rms_norm_kernel(x_ptr, r_ptr, w_ptr, s_ptr, o_ptr, N, sx, sr, ss, so, eps, BLOCK: tl.constexpr, PDL: tl.constexpr):
    """Row ``pid``: s = x + r (rounded), o = w * (s * rsqrt(mean(s^2) + eps)) in float32, rounded as the
    unfused graph rounds (the normalized row to s's dtype, then the product)."""
    grid_sync(PDL)
    row = tl.program_id(0).to(tl.int64)
    c = tl.arange(0, BLOCK)
    cm = c < N
    x = tl.load(x_ptr + row * sx + c, mask=cm, other=0.0).to(tl.float32)
    r = tl.load(r_ptr + row * sr + c, mask=cm, other=0.0).to(tl.float32)
    ty = s_ptr.dtype.element_ty
    s = (x + r).to(ty)
    tl.store(s_ptr + row * ss + c, s, mask=cm)
    sf = s.to(tl.float32)
    inv = 1.0 / tl.sqrt(tl.sum(sf * sf, 0) / N + eps)
    w = tl.load(w_ptr + c, mask=cm, other=0.0).to(tl.float32)
    tl.store(o_ptr + row * so + c, (w * (sf * inv).to(ty).to(tl.float32)).to(ty), mask=cm)


def norm_fits(x: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor) -> bool:
    """Whether :func:`add_rms_norm` takes the kernel: 16-bit operands of one dtype and shape, rows of at
    most MAX_N, the weight one row; else the reference."""
    if not (hw_flag(x) or interpreting()) or x.dtype not in _DTYPES or x.dim() == 0:
        return False
    n = x.shape[-1]
    return (residual.shape == x.shape and residual.dtype == weight.dtype == x.dtype and weight.shape == (n,)
            and weight.stride(0) == 1 and x.stride(-1) == 1 and residual.stride(-1) == 1 and 0 < n <= MAX_N)


def add_rms_norm(x: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor, eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Triton body of ``hatac::add_rms_norm``."""
    if not norm_fits(x, residual, weight):
        return reference.add_rms_norm(x, residual, weight, eps)
    n = x.shape[-1]
    x2, r2 = x.reshape(-1, n), residual.reshape(-1, n)
    s = torch.empty(x2.shape, dtype=x.dtype, device=x.device)
    o = torch.empty_like(s)
    block = triton.next_power_of_2(n)
    _add_rms_norm_kernel[(x2.shape[0],)](
        x2, r2, weight, s, o, n, x2.stride(0), r2.stride(0), s.stride(0), o.stride(0), float(eps),
        BLOCK=block, num_warps=max(1, min(16, block // 512)), **pdl_args(x),
    )
    return s.view(x.shape), o.view(x.shape)
