"""Triton bodies of the ``hatac::`` ops for CUDA tensors.

``hatac.kernels`` is a namespace package with no ``__init__.py`` (docs/ARCHITECTURE.md says why); this
module is its registry. Importing it registers the bodies with ``torch.library.register_kernel(..., "cuda", ...)``: a graph
that calls ``torch.ops.hatac.*`` keeps one opaque node per op (torch.compile, export) and dispatches to
these kernels on CUDA tensors; CPU tensors keep the reference bodies. Importing never fails: without
Triton (CI, CPU-only installs) nothing is registered and ``AVAILABLE`` is False.
"""

from __future__ import annotations

import torch

import hatac.ops  # noqa: F401  (defines the ops before their CUDA bodies are registered)

try:
    import triton  # noqa: F401
except ImportError:  # pragma: no cover - depends on the install
    AVAILABLE = False
else:
    AVAILABLE = True

if AVAILABLE:
    from hatac.kernels.cache_attention import cache_attention
    from hatac.kernels.cache_write import cache_write
    from hatac.kernels.hamming_topk import hamming_topk
    from hatac.kernels.hash_encode import hash_encode, hash_encode_step, hash_encode_step_kv, rope_hash_encode_step_kv
    from hatac.kernels.linear import linear, linear_silu_mul
    from hatac.kernels.rms_norm import add_rms_norm
    from hatac.kernels.sparse_attention import sparse_attention

    KERNELS = {
        "hash_encode": hash_encode,
        "hash_encode_step": hash_encode_step,
        "hash_encode_step_kv": hash_encode_step_kv,
        "rope_hash_encode_step_kv": rope_hash_encode_step_kv,
        "hamming_topk": hamming_topk,
        "sparse_attention": sparse_attention,
        "cache_attention": cache_attention,
        "cache_write": cache_write,
        "linear": linear,
        "linear_silu_mul": linear_silu_mul,
        "add_rms_norm": add_rms_norm,
    }
else:  # pragma: no cover
    KERNELS = {}

_REGISTERED = False


def register() -> None:
    """Register the Triton bodies for the CUDA dispatch key (idempotent)."""
    global _REGISTERED
    if _REGISTERED or not AVAILABLE:
        return
    for name, fn in KERNELS.items():
        torch.library.register_kernel(f"hatac::{name}", "cuda", fn)
    _REGISTERED = True


register()
