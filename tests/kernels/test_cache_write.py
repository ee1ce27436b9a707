"""The Triton cache_write against the reference (in Triton's interpreter without CUDA, like test_kernels)."""

import os

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
pytest.importorskip("triton")

from hatac import reference as ref  # noqa: E402
from hatac.kernels.cache_write import cache_write  # noqa: E402

DEV = "cuda" if torch.cuda.is_available() else "cpu"


@pytest.mark.parametrize(
    "b,h,s,t,x,cache_dtype,val_dtype",
    [
        (2, 3, 1, 9, 16, torch.bfloat16, torch.bfloat16),  # decode: one token a row
        (2, 2, 5, 12, 64, torch.float16, torch.float32),  # prefill chunk, cast on store
        (1, 4, 3, 7, 4, torch.int32, torch.int32),  # key codes (r/32 words)
        (3, 1, 2, 6, 300, torch.float32, torch.float32),  # wider than one block
    ],
)
def test_cache_write_matches_reference(b, h, s, t, x, cache_dtype, val_dtype):
    g = torch.Generator().manual_seed(b * 100 + x)
    if cache_dtype == torch.int32:
        values = torch.randint(-(2**31), 2**31 - 1, (b, h, s, x), generator=g, dtype=torch.int32)
    else:
        values = torch.randn(b, h, s, x, generator=g).to(val_dtype)
    # distinct slots per row, not in order, like padded rows' write positions
    pos = torch.stack([torch.randperm(t, generator=g)[:s] for _ in range(b)])
    poison = torch.full((b, h, t, x), 7, dtype=cache_dtype)
    want, got = poison.clone(), poison.clone().to(DEV)
    ref.cache_write(want, values, pos)
    cache_write(got, values.to(DEV).transpose(1, 2).contiguous().transpose(1, 2), pos.to(DEV))  # strided values
    assert torch.equal(got.cpu(), want)


@pytest.mark.gpu
def test_cache_write_op_dispatches_to_triton_on_cuda():
    cache = torch.zeros(2, 2, 8, 16, device="cuda", dtype=torch.bfloat16)
    vals = torch.randn(2, 2, 1, 16, device="cuda", dtype=torch.bfloat16)
    pos = torch.tensor([[3], [5]], device="cuda")
    torch.ops.hatac.cache_write(cache, vals, pos)
    want = torch.zeros_like(cache)
    ref.cache_write(want, vals, pos)
    assert torch.equal(cache, want)
