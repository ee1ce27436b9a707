"""The decode step's linears call ``hatac::linear``, whose CUDA body is a Triton GEMV for a few rows.

Why: a decode step's projections are GEMMs of batch-many rows, bound by reading their weights, and cuBLAS
reads some of them well below the GPU's bandwidth (``o_proj`` of Llama-3-8B at batch 8 on the H100;
hatac/kernels/linear.py has the numbers). Same math; the op falls back to ``F.linear`` for more rows,
other dtypes or CPU tensors.

Not part of a conversion: the runtime applies it to its own copy of the decode graph when it compiles the
step (:func:`hatac.runtime.decode_step.runtime_decode_graph`), so the saved artifact, exports and user passes
keep ``aten.linear``. ``DecodeOptions(linears=False)`` (``gated=False`` for the gated GEMV) turns it off.
"""

from __future__ import annotations

import operator

import torch
import torch.fx as fx

from hatac.passes.base import DECODE, NodeRewritePass

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


class RouteDecodeLinears(NodeRewritePass):
    """``aten.linear(x, W[, b])`` -> ``hatac::linear(x, W, b, l2_prefetch)`` (same output).

    ``after_sparse_attention``: the ``l2_prefetch`` of a linear that reads a hashed layer's attention output
    (``o_proj``): that kernel is short and latency-bound, so the GEMV's weight can stream into the L2 under
    it (H100: a quarter of the weight took 1.5-2.5 us off o_proj after hatac's
    attention, docs/PERFORMANCE.md, Decisions; after the dense attention, which streams the whole cache, prefetching
    only slowed it, so other linears get 0)."""

    modes = (DECODE,)

    def __init__(self, after_sparse_attention: float = 0.25):
        self.after_sparse_attention = float(after_sparse_attention)

    def rewrite(self, gm: fx.GraphModule, node: fx.Node) -> bool:
        if not (node.op == "call_function" and node.target == aten.linear.default and not node.kwargs):
            return False
        x, w, *rest = node.args
        pf = self.after_sparse_attention if reads_sparse_attention(node) else 0.0
        node.target = torch.ops.hatac.linear.default
        node.args = (x, w, rest[0] if rest else None, pf)
        return True


def _only_user(node: fx.Node, user: fx.Node) -> bool:
    return list(node.users) == [user]


def _gated_mlp(mul: fx.Node):
    """``(linear, nodes)`` if ``mul`` is ``silu(g) * u`` for ``[g | u] = split(linear(x, W), [n, n], -1)`` with
    nothing else reading the linear, the split or the SiLU (``nodes``: the pattern, users first); else None."""
    if mul.op != "call_function" or mul.target != aten.mul.Tensor or mul.kwargs or len(mul.args) != 2:
        return None
    a, b = mul.args
    if not (isinstance(a, fx.Node) and isinstance(b, fx.Node)):
        return None
    silu, up = (a, b) if a.target == aten.silu.default else (b, a)
    if silu.target != aten.silu.default or silu.kwargs or not _only_user(silu, mul):
        return None
    gate = silu.args[0]
    if not (isinstance(gate, fx.Node) and gate.target is operator.getitem and up.target is operator.getitem):
        return None
    split = gate.args[0]
    if up.args[0] is not split or (gate.args[1], up.args[1]) != (0, 1) or not (_only_user(gate, silu) and _only_user(up, mul)):
        return None
    if split.target != aten.split_with_sizes.default or len(split.users) != 2:
        return None
    lin, sizes, *dim = split.args
    val = lin.meta.get("val") if isinstance(lin, fx.Node) else None
    last = (dim[0] if dim else 0) in (-1, None if val is None else val.dim() - 1)
    if not (last and len(sizes) == 2 and sizes[0] == sizes[1] and isinstance(lin, fx.Node)):
        return None
    if lin.target != aten.linear.default or lin.kwargs or len(lin.args) != 2 or not _only_user(lin, split):
        return None
    return lin, [mul, silu, gate, up, split, lin]


class FuseGatedLinear(NodeRewritePass):
    """``silu(g) * u`` of ``[g | u] = linear(x, W_gate_up)`` -> ``hatac::linear_silu_mul(x, W_gate_up)``.

    A gated MLP whose gate and up projections are stacked (``fuse_linears``) computes both halves, a SiLU
    and a product: at decode, one GEMV that streams a program's gate and up rows together and stores only
    the product replaces a GEMM, a [gate | up] tensor and an elementwise kernel. Same math and the same
    roundings (the linear's output, then SiLU's). Runtime-only, like :class:`RouteDecodeLinears` (which
    it runs before: it takes ``aten.linear``)."""

    modes = (DECODE,)

    def rewrite(self, gm: fx.GraphModule, mul: fx.Node) -> bool:
        found = _gated_mlp(mul)
        if found is None:
            return False
        lin, pattern = found
        with gm.graph.inserting_before(mul):
            fused = gm.graph.call_function(torch.ops.hatac.linear_silu_mul.default, tuple(lin.args))
        fused.meta.update({k: v for k, v in mul.meta.items() if k in ("val", "tensor_meta", "stack_trace", "nn_module_stack")})
        mul.replace_all_uses_with(fused)
        for node in pattern:
            gm.graph.erase_node(node)
        return True
