"""The decode step's linears call ``hatac::linear``, whose CUDA body is a Triton GEMV for a few rows.

Why: a decode step's projections are GEMMs of batch-many rows, bound by reading their weights, and cuBLAS
reads some of them well below the GPU's bandwidth (``o_proj`` of Llama-3-8B at batch 8 on the H100;
hatac/kernels/linear.py has the numbers). Same math; the op falls back to ``F.linear`` for more rows,
other dtypes or CPU tensors.

Not part of a conversion: the runtime applies it to its own copy of the decode graph when it compiles the
step (:func:`hatac.static_decode.runtime_decode_graph`), so the saved artifact, exports and user passes
keep ``aten.linear``. ``HATAC_DECODE_LINEAR=0`` turns it off (for A/B timing).
"""

from __future__ import annotations

import torch
import torch.fx as fx

from hatac.passes.base import DECODE, PassBase, PassContext, PassResult

aten = torch.ops.aten


# What may stand between an attention op and the projection that reads its output (layout changes only).
_LAYOUT_OPS = {
    aten.view.default, aten._unsafe_view.default, aten.reshape.default, aten.transpose.int, aten.permute.default,
    aten.clone.default, aten.contiguous.default, aten.squeeze.dim, aten.unsqueeze.default, aten.flatten.using_ints,
}


def reads_sparse_attention(node: fx.Node, depth: int = 8) -> bool:
    """Whether ``node``'s first input is a ``hatac::sparse_attention`` output, seen through layout ops."""
    src = node.args[0] if node.args else None
    for _ in range(depth):
        if not isinstance(src, fx.Node) or src.op != "call_function":
            return False
        if src.target == torch.ops.hatac.sparse_attention.default:
            return True
        if src.target not in _LAYOUT_OPS:
            return False
        src = src.args[0]
    return False


class RouteDecodeLinears(PassBase):
    """``aten.linear(x, W[, b])`` -> ``hatac::linear(x, W, b, l2_prefetch)`` (same output).

    ``after_sparse_attention``: the ``l2_prefetch`` of a linear that reads a hashed layer's attention output
    (``o_proj``): that kernel is short and latency-bound, so the GEMV's weight can stream into the L2 under
    it (H100, ``python examples/linear_prefetch_probe.py``: a quarter of the weight took 1.5-2.5 us off
    o_proj after hatac's attention; after the dense attention, which streams the whole cache, prefetching
    only slowed it, so other linears get 0)."""

    modes = (DECODE,)

    def __init__(self, after_sparse_attention: float = 0.25):
        self.after_sparse_attention = float(after_sparse_attention)

    def call(self, gm: fx.GraphModule, ctx: PassContext | None = None) -> PassResult:
        import hatac.ops  # noqa: F401  (defines hatac::linear)

        modified = False
        for node in gm.graph.nodes:
            if node.op == "call_function" and node.target == aten.linear.default and not node.kwargs:
                x, w, *rest = node.args
                pf = self.after_sparse_attention if reads_sparse_attention(node) else 0.0
                node.target = torch.ops.hatac.linear.default
                node.args = (x, w, rest[0] if rest else None, pf)
                modified = True
        if modified:
            gm.recompile()
        return PassResult(gm, modified)
