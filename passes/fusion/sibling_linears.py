"""Sibling linears (q/k/v, gate/up: one input, several weights) become one GEMM on the stacked weight.

Why: at decode a projection is a GEMV-like GEMM of a few rows, bound by reading its weight, and each
launch has a fixed cost the small ones never amortize. On the H100 at batch 8, Llama-3-8B's q, k and v
as three GEMMs take 42 us a layer against 30 us for one on the stacked (6144, 4096) weight; gate and up
save ~1 us (docs/PERFORMANCE.md, Decisions).

No weight is copied for good: the stacked weight is built once and the model's own parameters become
row views of it (so ``state_dict``, ``save_pretrained`` and every other graph of the model see the same
tensors, and a graph built later finds them already adjacent and stacks them as a view). A converted model
is not moved afterwards (its captured graphs hold their device and dtype; ``HataForCausalLM`` refuses
moves), so the views stay views.
"""

from __future__ import annotations

import operator
from collections import defaultdict

import torch
import torch.fx as fx

from hatac.passes.base import PassBase, PassContext, PassResult

aten = torch.ops.aten
PREFIX = "hatac_stacked_linear"


def _tensor(gm: fx.GraphModule, node: fx.Node) -> torch.Tensor | None:
    if node is None or not isinstance(node, fx.Node) or node.op != "get_attr":
        return None
    obj = gm
    for part in str(node.target).split("."):
        obj = getattr(obj, part, None)
    return obj if isinstance(obj, torch.Tensor) and type(obj) in (torch.Tensor, torch.nn.Parameter) else None


def _adjacent(ts: list[torch.Tensor]) -> bool:
    """Whether ``ts`` (contiguous, same dtype) already lie back to back in one storage, in this order."""
    first = ts[0]
    end = first.data_ptr()
    for t in ts:
        if not t.is_contiguous() or t.untyped_storage().data_ptr() != first.untyped_storage().data_ptr() or t.data_ptr() != end:
            return False
        end += t.numel() * t.element_size()
    return True


def stack_rows(ts: list[torch.Tensor]) -> torch.Tensor:
    """One tensor holding ``ts`` stacked along dim 0, with every ``t`` made a row view of it (in place of
    its data), so the stack costs no memory beyond the moment it is built. Already adjacent: a view."""
    rows = sum(t.shape[0] for t in ts)
    shape = (rows, *ts[0].shape[1:])
    if _adjacent(ts):
        first = ts[0]
        return torch.empty(0, dtype=first.dtype, device=first.device).set_(
            first.untyped_storage(), first.storage_offset(), shape, torch.empty(shape, device="meta").stride()
        )
    with torch.no_grad():
        stacked = torch.cat([t.detach() for t in ts])
    start = 0
    for t in ts:
        t.data = stacked[start : start + t.shape[0]]
        start += t.shape[0]
    return stacked


def _module_path(node: fx.Node) -> str:
    stack = node.meta.get("nn_module_stack") or {}
    return str(list(stack.values())[-1][0]) if stack else ""


def _fake_val(node: fx.Node):
    return node.meta.get("val") if isinstance(node, fx.Node) else None


class FuseSiblingLinears(PassBase):
    """``linear(x, W_i[, b_i])`` nodes that share ``x`` become one ``linear(x, stack(W_i)[, stack(b_i)])``
    and a split of its output. Runs last (before dead-code elimination), so user passes see the model's own
    projections; on by default through the recipe's ``fuse_linears``."""

    def call(self, gm: fx.GraphModule, ctx: PassContext) -> PassResult:
        groups: dict[tuple, list[fx.Node]] = defaultdict(list)
        for node in gm.graph.nodes:
            if node.op != "call_function" or node.target != aten.linear.default or len(node.args) < 2 or node.kwargs:
                continue
            w = _tensor(gm, node.args[1])
            bias = node.args[2] if len(node.args) > 2 else None
            b = _tensor(gm, bias) if bias is not None else None
            if w is None or w.dim() != 2 or (bias is not None and (b is None or b.dim() != 1)):
                continue
            groups[(node.args[0], w.shape[1], w.dtype, w.device, bias is not None)].append(node)
        used = set()
        modified = False
        for nodes in groups.values():
            weights = [str(node.args[1].target) for node in nodes]
            if len(nodes) < 2 or len(set(weights)) != len(weights) or used & set(weights):
                continue  # one linear, a weight used twice, or a weight already stacked in another group
            used |= set(weights)
            self._fuse(gm, nodes)
            modified = True
        # The weights' get_attr nodes left unused go with EliminateDeadCode, and the manager recompiles.
        return PassResult(gm, modified)

    def _fuse(self, gm: fx.GraphModule, nodes: list[fx.Node]) -> None:
        ws = [_tensor(gm, n.args[1]) for n in nodes]
        sizes = [w.shape[0] for w in ws]
        names = []
        parts = [ws]
        if len(nodes[0].args) > 2:
            parts.append([_tensor(gm, n.args[2]) for n in nodes])
        for tensors in parts:
            name = f"{PREFIX}_{sum(1 for n, _ in gm.named_buffers() if n.startswith(PREFIX))}"
            gm.register_buffer(name, stack_rows(tensors), persistent=False)
            names.append(name)
        x = nodes[0].args[0]
        first = nodes[0]  # groups are collected in graph order
        graph = gm.graph
        leaves = [_module_path(n).rpartition(".")[2] or "linear" for n in nodes]
        with graph.inserting_before(first):
            attrs = [graph.get_attr(name) for name in names]
            fused = graph.create_node("call_function", aten.linear.default, (x, *attrs), name="_".join(["stacked", *leaves]))
            split = graph.call_function(aten.split_with_sizes.default, (fused, sizes, -1))
            outs = [graph.call_function(operator.getitem, (split, i)) for i in range(len(nodes))]
        vals = [_fake_val(n) for n in nodes]
        mode = torch._guards.detect_fake_mode(vals) if all(v is not None for v in vals) else None
        if mode is not None:  # keep shapes on the new nodes, as the captured graph has them everywhere
            with mode:
                fused.meta["val"] = torch.cat(vals, dim=-1)
            split.meta["val"] = list(vals)
            for attr, name in zip(attrs, names):
                attr.meta["val"] = mode.from_tensor(getattr(gm, name), static_shapes=True)
        for key in ("hatac_layer", "stack_trace"):
            if key in first.meta:
                fused.meta[key] = split.meta[key] = first.meta[key]
        stacks = [n.meta.get("nn_module_stack") or {} for n in nodes]  # the modules all of them sit in
        fused.meta["nn_module_stack"] = split.meta["nn_module_stack"] = {
            k: v for k, v in stacks[0].items() if all(st.get(k) == v for st in stacks[1:])
        }
        for node, out in zip(nodes, outs):
            out.meta.update(node.meta)
            node.replace_all_uses_with(out)
            graph.erase_node(node)

