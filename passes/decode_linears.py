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


class RouteDecodeLinears(PassBase):
    """``aten.linear(x, W[, b])`` -> ``hatac::linear(x, W[, b])`` (same arguments, same output)."""

    modes = (DECODE,)

    def call(self, gm: fx.GraphModule, ctx: PassContext | None = None) -> PassResult:
        import hatac.ops  # noqa: F401  (defines hatac::linear)

        modified = False
        for node in gm.graph.nodes:
            if node.op == "call_function" and node.target == aten.linear.default and not node.kwargs:
                node.target = torch.ops.hatac.linear.default
                modified = True
        if modified:
            gm.recompile()
        return PassResult(gm, modified)
