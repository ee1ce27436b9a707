"""Expose each hashed layer's post-RoPE queries and keys as graph outputs, for calibration."""

from __future__ import annotations

import torch.fx as fx

from hatac.passes.base import OBSERVE, PassBase, PassContext, PassResult


class ExposeQueriesKeys(PassBase):
    """The observe variant returns ``(logits, q_L0, k_L0, q_L1, k_L1, ...)`` over the hashed layers, in
    layer order, with attention left as captured (dense, no cache)."""

    modes = (OBSERVE,)

    def call(self, gm: fx.GraphModule, ctx: PassContext) -> PassResult:
        out = next(n for n in gm.graph.nodes if n.op == "output")
        logits = out.args[0]
        extra = []
        layers = [s for s in ctx.sites.values() if s.hashed]
        for site in layers:
            extra += [site.q, site.k]
        out.args = ((logits, *extra),)
        ctx.meta["observed_layers"] = [s.layer for s in layers]
        return PassResult(gm, True)
