"""Find the attention sites of a captured graph, and refuse the ones hatac cannot rewrite."""

from __future__ import annotations

import math

import torch
import torch.fx as fx

from hatac.errors import HatacError
from hatac.passes.base import AttentionSite, PassBase, PassContext, PassResult

SDPA_TARGETS = (
    torch.ops.aten.scaled_dot_product_attention.default,
    torch._C._nn.scaled_dot_product_attention,
    torch.nn.functional.scaled_dot_product_attention,
)
# Module attributes that mark attention SDPA cannot express; hatac refuses these layers rather than
# silently computing something else.
UNSUPPORTED_ATTRS = {
    "attn_logit_softcapping": "logit soft-capping",
    "sinks": "learned attention sinks",
}


def is_sdpa(node: fx.Node) -> bool:
    return node.op == "call_function" and node.target in SDPA_TARGETS


def module_path(node: fx.Node) -> str:
    """The innermost module path a node was traced under ('' when unknown)."""
    stack = node.meta.get("nn_module_stack") or {}
    if not stack:
        return ""
    return list(stack.values())[-1][0]


def _shape(node) -> tuple:
    val = node.meta.get("val") if isinstance(node, fx.Node) else None
    if val is None:
        raise HatacError(f"node {getattr(node, 'name', node)} carries no shape metadata")
    return tuple(val.shape)


def _static(dim, what: str, node: fx.Node) -> int:
    try:
        return int(dim)
    except (TypeError, ValueError):
        raise HatacError(f"node {node.name}: {what} is not static ({dim})") from None


class FindAttentionSites(PassBase):
    """Record every scaled-dot-product-attention node as an :class:`AttentionSite`, keyed by layer.

    The layer index is the attention module's ``layer_idx`` when it has one, else the order of
    appearance. Attention the graph computes some other way (a softmax outside SDPA) is an error, as is
    an attention module whose settings SDPA cannot express (soft-capping, sinks).
    """

    def call(self, gm: fx.GraphModule, ctx: PassContext) -> PassResult:
        modules = dict(ctx.model.named_modules())
        sites: dict[int, AttentionSite] = {}
        for order, node in enumerate(n for n in gm.graph.nodes if is_sdpa(n)):
            path = module_path(node)
            module = modules.get(path)
            layer = getattr(module, "layer_idx", None)
            layer = int(layer) if isinstance(layer, int) else order
            where = f"layer {layer} ({path or 'unknown module'}), node {node.name}"
            for attr, what in UNSUPPORTED_ATTRS.items():
                if getattr(module, attr, None) is not None:
                    raise HatacError(f"cannot rewrite {where}: attention uses {what}, which hatac does not support")
            q, k, v = node.args[:3]
            mask = node.args[3] if len(node.args) > 3 else node.kwargs.get("attn_mask")
            if isinstance(mask, fx.Node) and mask.meta.get("val") is not None and mask.meta["val"].dtype != torch.bool:
                raise HatacError(f"cannot rewrite {where}: attention adds a float bias (ALiBi or similar)")
            dropout = node.args[4] if len(node.args) > 4 else node.kwargs.get("dropout_p", 0.0)
            if dropout:
                raise HatacError(f"cannot rewrite {where}: attention dropout {dropout} is on (put the model in eval mode)")
            _, hq, _, d = _shape(q)
            scale = node.kwargs.get("scale")
            if scale is None and len(node.args) > 6:
                scale = node.args[6]
            window = getattr(module, "sliding_window", None) or 0
            if layer in sites:
                raise HatacError(f"cannot rewrite {where}: layer {layer} has two attention nodes")
            sites[layer] = AttentionSite(
                layer=layer,
                module_path=path,
                node=node,
                q=q,
                k=k,
                v=v,
                n_heads=_static(hq, "the query head count", node),
                n_kv_heads=_static(_shape(k)[1], "the key head count", node),
                head_dim=_static(d, "the head dim", node),
                scale=float(scale) if scale is not None else 1.0 / math.sqrt(_static(d, "the head dim", node)),
                window=int(window),
            )
        self._refuse_manual_attention(gm, modules)
        if not sites:
            raise HatacError("no scaled_dot_product_attention node found in the captured graph")
        ctx.sites = dict(sorted(sites.items()))
        return PassResult(gm, False)

    @staticmethod
    def _refuse_manual_attention(gm: fx.GraphModule, modules: dict) -> None:
        """A softmax inside a module with a ``layer_idx`` is attention written out by hand (matmul, maybe a
        tanh soft-cap, softmax): hatac cannot rewrite it, so refuse, naming the layer and node."""
        for node in gm.graph.nodes:
            if not (node.op == "call_function" and "softmax" in str(node.target)):
                continue
            path = module_path(node)
            layer = getattr(modules.get(path), "layer_idx", None)
            if layer is None:
                continue
            how = "by hand"
            seen, todo = set(), list(node.all_input_nodes)
            while todo:  # look back through this module's nodes for a soft-cap
                n = todo.pop()
                if n in seen or module_path(n) != path:
                    continue
                seen.add(n)
                if "tanh" in str(n.target):
                    how = "with logit soft-capping (tanh)"
                    break
                todo.extend(n.all_input_nodes)
            raise HatacError(
                f"cannot rewrite layer {layer} ({path}), node {node.name}: attention is computed {how}, "
                "not by scaled_dot_product_attention; hatac does not support it"
            )
