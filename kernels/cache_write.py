"""``hatac::cache_write`` on CUDA: one program a (batch row, head, new token) copies the token's row into
its slot. The reference's ``index_put_`` costs an index kernel plus the ``arange``/cast kernels that build
its indices (about 8 us a write at decode, four writes a layer); this is one launch with no temporaries."""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from hatac.kernels._common import grid_sync, next_pow2, pdl_args


@triton.jit
def _cache_write_kernel(
    cache_ptr, val_ptr, pos_ptr, H, S, X,
    scb, sch, sct, scx, svb, svh, svs, svx, spb, sps,
    BLOCK_X: tl.constexpr, PDL: tl.constexpr,
):
    grid_sync(PDL)
    row = tl.program_id(0)
    s = row % S
    h = (row // S) % H
    b = row // (S * H)
    t = tl.load(pos_ptr + b.to(tl.int64) * spb + s * sps).to(tl.int64)
    src = val_ptr + b.to(tl.int64) * svb + h.to(tl.int64) * svh + s.to(tl.int64) * svs
    dst = cache_ptr + b.to(tl.int64) * scb + h.to(tl.int64) * sch + t * sct
    for x0 in range(0, X, BLOCK_X):
        x = x0 + tl.arange(0, BLOCK_X)
        v = tl.load(src + x * svx, mask=x < X)
        tl.store(dst + x * scx, v.to(cache_ptr.dtype.element_ty), mask=x < X)


def cache_write(cache: torch.Tensor, values: torch.Tensor, write_pos: torch.Tensor) -> None:
    """Triton body of ``hatac::cache_write``: cache[b, :, write_pos[b, s]] = values[b, :, s] in place."""
    b, h, s, x = values.shape
    if values.numel() == 0:
        return
    pos = write_pos.to(device=cache.device)
    _cache_write_kernel[(b * h * s,)](
        cache, values, pos, h, s, x,
        *cache.stride(), *values.stride(), *pos.stride(),
        BLOCK_X=min(256, max(16, next_pow2(x))), num_warps=1 if x <= 64 else 2, **pdl_args(cache),
    )
