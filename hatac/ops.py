"""The ``hatac::`` operator library.

Each op is a ``torch.library.custom_op`` with a fake (meta) implementation, so that torch.export,
torch.compile(fullgraph=True) and the ONNX exporter treat it as one opaque node. The default (CPU) body
is the vectorized reference in :mod:`hatac.reference`; :mod:`hatac.kernels` registers Triton bodies for
CUDA tensors on import (``torch.library.register_kernel``), so a rewritten graph dispatches to the GPU
kernels with no change to the graph.

Semantics and shapes are documented on the reference functions.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from hatac import reference

NAMESPACE = "hatac"


@torch.library.custom_op("hatac::hash_encode", mutates_args=())
def hash_encode(x: Tensor, w: Tensor) -> Tensor:
    """sign(x @ W) bit-packed: (B, H, S, D) x (Hkv, D, R) -> (B, H, S, R/32) int32."""
    return reference.hash_encode(x, w)


@hash_encode.register_fake
def _(x: Tensor, w: Tensor) -> Tensor:
    torch._check(w.shape[2] % 32 == 0, lambda: "hash bits must be a multiple of 32")
    return x.new_empty((x.shape[0], x.shape[1], x.shape[2], w.shape[2] // 32), dtype=torch.int32)


@torch.library.custom_op("hatac::hamming_topk", mutates_args=())
def hamming_topk(
    q_codes: Tensor,
    k_codes: Tensor,
    q_pos: Tensor,
    k: int,
    budget: float,
    sink: int = 0,
    recent: int = 0,
    window: int = 0,
    k_cache: Optional[Tensor] = None,
    v_cache: Optional[Tensor] = None,
) -> Tensor:
    """Slots of the k cached keys nearest in Hamming distance, one selection per KV head: (B, Hkv, S, k) int32.

    ``k_cache`` / ``v_cache``: the caches the selection will index, a hint only (the CUDA body prefetches the
    selected rows into L2 for the attention that follows); the result does not depend on them."""
    return reference.hamming_topk(q_codes, k_codes, q_pos, k, budget, sink, recent, window)


@hamming_topk.register_fake
def _(q_codes, k_codes, q_pos, k, budget, sink=0, recent=0, window=0, k_cache=None, v_cache=None):
    return q_codes.new_empty((q_codes.shape[0], k_codes.shape[1], q_codes.shape[2], k), dtype=torch.int32)


@torch.library.custom_op("hatac::sparse_attention", mutates_args=())
def sparse_attention(q: Tensor, k_cache: Tensor, v_cache: Tensor, indices: Tensor, scale: float) -> Tensor:
    """Attention over the selected cache slots only: (B, Hq, S, D)."""
    return reference.sparse_attention(q, k_cache, v_cache, indices, scale)


@sparse_attention.register_fake
def _(q, k_cache, v_cache, indices, scale):
    return q.new_empty((q.shape[0], q.shape[1], q.shape[2], v_cache.shape[3]))


@torch.library.custom_op("hatac::cache_attention", mutates_args=())
def cache_attention(q: Tensor, k_cache: Tensor, v_cache: Tensor, q_pos: Tensor, scale: float, window: int = 0) -> Tensor:
    """Dense causal attention over the cache: the prefill path and the dense layers."""
    return reference.cache_attention(q, k_cache, v_cache, q_pos, scale, window)


@cache_attention.register_fake
def _(q, k_cache, v_cache, q_pos, scale, window=0):
    return q.new_empty((q.shape[0], q.shape[1], q.shape[2], v_cache.shape[3]))


@torch.library.custom_op("hatac::cache_write", mutates_args=("cache",))
def cache_write(cache: Tensor, values: Tensor, write_pos: Tensor) -> None:
    """cache[b, :, write_pos[b, s]] = values[b, :, s] in place (keys, values or key codes)."""
    reference.cache_write(cache, values, write_pos)


@cache_write.register_fake
def _(cache, values, write_pos):
    return None



@torch.library.custom_op("hatac::hash_encode_step", mutates_args=("k_codes",))
def hash_encode_step(q: Tensor, k: Tensor, w: Tensor, k_codes: Tensor, write_pos: Tensor) -> Tensor:
    """Decode-step hashing in one op: writes the new keys' codes into ``k_codes`` at ``write_pos`` and
    returns the query codes (B, Hq, S, R/32) int32; equal to hash_encode(k) + cache_write + hash_encode(q)."""
    return reference.hash_encode_step(q, k, w, k_codes, write_pos)


@hash_encode_step.register_fake
def _(q, k, w, k_codes, write_pos):
    torch._check(w.shape[2] % 32 == 0, lambda: "hash bits must be a multiple of 32")
    return q.new_empty((q.shape[0], q.shape[1], q.shape[2], w.shape[2] // 32), dtype=torch.int32)

@torch.library.custom_op("hatac::hash_encode_step_kv", mutates_args=("k_cache", "v_cache", "k_codes"))
def hash_encode_step_kv(
    q: Tensor, k: Tensor, v: Tensor, w: Tensor, k_cache: Tensor, v_cache: Tensor, k_codes: Tensor, write_pos: Tensor
) -> Tensor:
    """``hash_encode_step`` that also writes the new key and value rows into ``k_cache`` / ``v_cache`` at
    ``write_pos``: a hashed decode layer's three cache updates and its hashing in one op."""
    return reference.hash_encode_step_kv(q, k, v, w, k_cache, v_cache, k_codes, write_pos)


@hash_encode_step_kv.register_fake
def _(q, k, v, w, k_cache, v_cache, k_codes, write_pos):
    torch._check(w.shape[2] % 32 == 0, lambda: "hash bits must be a multiple of 32")
    return q.new_empty((q.shape[0], q.shape[1], q.shape[2], w.shape[2] // 32), dtype=torch.int32)


@torch.library.custom_op("hatac::rope_hash_encode_step_kv", mutates_args=("k_cache", "v_cache", "k_codes"))
def rope_hash_encode_step_kv(
    q: Tensor, k: Tensor, v: Tensor, cos: Tensor, sin: Tensor, w: Tensor, k_cache: Tensor, v_cache: Tensor,
    k_codes: Tensor, write_pos: Tensor,
) -> tuple[Tensor, Tensor]:
    """``hash_encode_step_kv`` of the query and key after their rotary embedding (rotate-half form, on the
    first R dims of the head; cos, sin: (B, S, R)): returns ``(q_codes, rotated q)``. For decode graphs
    (hatac.passes.decode.rope.FuseRoPEEncode): its CUDA body rotates, hashes and writes the caches in one
    launch. A runtime op, like ``hatac::linear``."""
    return reference.rope_hash_encode_step_kv(q, k, v, cos, sin, w, k_cache, v_cache, k_codes, write_pos)


@rope_hash_encode_step_kv.register_fake
def _(q, k, v, cos, sin, w, k_cache, v_cache, k_codes, write_pos):
    torch._check(w.shape[2] % 32 == 0, lambda: "hash bits must be a multiple of 32")
    torch._check(cos.shape[-1] % 2 == 0 and cos.shape[-1] <= q.shape[3], lambda: "rotary embedding: an even width up to the head dim")
    return q.new_empty((q.shape[0], q.shape[1], q.shape[2], w.shape[2] // 32), dtype=torch.int32), q.new_empty(q.shape)


@torch.library.custom_op("hatac::linear", mutates_args=())
def linear(x: Tensor, weight: Tensor, bias: Optional[Tensor] = None, l2_prefetch: float = 0.0) -> Tensor:
    """``F.linear``, for decode graphs: its CUDA body streams the weight with a Triton GEMV when ``x`` has a
    few rows (hatac.passes.decode.linears.RouteDecodeLinears puts it in the compiled decode step).
    ``l2_prefetch`` (a hint, no effect on the result): the fraction of the weight the GEMV asks the L2 for
    before it waits for the kernel in front of it. Not part of a converted graph: a runtime op, so it is not
    in ``HATA_OPS``."""
    return torch.nn.functional.linear(x, weight, bias)


@linear.register_fake
def _(x, weight, bias=None, l2_prefetch=0.0):
    return x.new_empty((*x.shape[:-1], weight.shape[0]))


@torch.library.custom_op("hatac::linear_silu_mul", mutates_args=())
def linear_silu_mul(x: Tensor, weight: Tensor) -> Tensor:
    """``SiLU(g) * u`` for ``[g | u] = F.linear(x, weight)``: a gated MLP's stacked gate/up projection and its
    activation, for decode graphs (hatac.passes.decode.linears.FuseGatedLinear). Its CUDA body is the GEMV
    storing only the product. A runtime op, like ``hatac::linear``."""
    return reference.linear_silu_mul(x, weight)


@linear_silu_mul.register_fake
def _(x, weight):
    torch._check(weight.shape[0] % 2 == 0, lambda: "linear_silu_mul needs [gate; up] weight rows")
    return x.new_empty((*x.shape[:-1], weight.shape[0] // 2))


@torch.library.custom_op("hatac::add_rms_norm", mutates_args=())
def add_rms_norm(x: Tensor, residual: Tensor, weight: Tensor, eps: float) -> tuple[Tensor, Tensor]:
    """``s = x + residual`` and ``weight * RMSNorm(s)`` (float32 statistics, rounded as a Llama-style decoder
    rounds): a residual add and the next block's norm, for decode graphs
    (hatac.passes.decode.norms.FuseAddRMSNorm). Its CUDA body is one kernel launched with programmatic
    dependent launch. A runtime op, like ``hatac::linear``."""
    return reference.add_rms_norm(x, residual, weight, eps)


@add_rms_norm.register_fake
def _(x, residual, weight, eps):
    s = x.new_empty(torch.broadcast_shapes(x.shape, residual.shape), dtype=torch.promote_types(x.dtype, residual.dtype))
    return s, s.new_empty(s.shape, dtype=torch.promote_types(weight.dtype, s.dtype))


# The ops a rewritten hashed layer is made of, by name, for passes, inspect and export.
HATA_OPS = {
    "hash_encode": torch.ops.hatac.hash_encode.default,
    "hamming_topk": torch.ops.hatac.hamming_topk.default,
    "sparse_attention": torch.ops.hatac.sparse_attention.default,
    "cache_attention": torch.ops.hatac.cache_attention.default,
    "cache_write": torch.ops.hatac.cache_write.default,
    "hash_encode_step": torch.ops.hatac.hash_encode_step.default,
    "hash_encode_step_kv": torch.ops.hatac.hash_encode_step_kv.default,
}


def op_name(target) -> str | None:
    """The short hatac name of an FX node target, or None when it is not a hatac op."""
    for name, op in HATA_OPS.items():
        if target is op or target is getattr(torch.ops.hatac, name):
            return name
    return None


def _load_gpu_kernels() -> None:
    """Register the Triton bodies for CUDA tensors when Triton and a GPU build of torch are present."""
    if not torch.cuda.is_available():
        return
    try:
        import hatac.kernels.registry  # noqa: F401  (registers on import)
    except ImportError:  # no triton: the reference runs on CUDA tensors too
        pass


_load_gpu_kernels()
