"""See through the grouped-query expansion of keys and values in front of an attention node."""

from __future__ import annotations

import torch
import torch.fx as fx

from hatac.passes.base import PassBase, PassContext, PassResult

_UNSQUEEZE = (torch.ops.aten.unsqueeze.default,)
_EXPAND = (torch.ops.aten.expand.default,)
_RESHAPE = (torch.ops.aten.reshape.default, torch.ops.aten.view.default, torch.ops.aten._unsafe_view.default)


def strip_repeat_kv(node: fx.Node) -> fx.Node:
    """Given k or v as fed to SDPA, return the un-repeated (B, Hkv, S, D) tensor.

    transformers' ``repeat_kv`` is ``x[:, :, None].expand(B, Hkv, G, S, D).reshape(B, Hkv*G, S, D)``; a
    model that passes ``enable_gqa=True`` instead feeds the KV heads directly and nothing is stripped.
    """
    if node.op == "call_function" and node.target in _RESHAPE:
        expand = node.args[0]
        if isinstance(expand, fx.Node) and expand.target in _EXPAND:
            unsq = expand.args[0]
            if isinstance(unsq, fx.Node) and unsq.target in _UNSQUEEZE and unsq.args[1] == 2:
                return unsq.args[0]
    return node


class StripRepeatKV(PassBase):
    """Point each site's k and v at the KV-head tensors, so caches hold H_kv heads, not H_q."""

    def call(self, gm: fx.GraphModule, ctx: PassContext) -> PassResult:
        modified = False
        for site in ctx.sites.values():
            k, v = strip_repeat_kv(site.k), strip_repeat_kv(site.v)
            modified |= k is not site.k or v is not site.v
            site.k, site.v = k, v
            site.n_kv_heads = int(k.meta["val"].shape[1])
            if site.n_heads % site.n_kv_heads:
                raise ValueError(f"layer {site.layer}: {site.n_heads} query heads over {site.n_kv_heads} KV heads")
        return PassResult(gm, modified)
