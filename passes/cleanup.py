"""Clean-up that always runs last."""

from __future__ import annotations

import torch.fx as fx

from hatac.passes.base import PassBase, PassContext, PassResult


class EliminateDeadCode(PassBase):
    """Drop what the rewrite left unused (the causal-mask construction, the repeated K/V), keeping the
    in-place cache writes, which the op schema marks as side effects."""

    def call(self, gm: fx.GraphModule, ctx: PassContext) -> PassResult:
        changed = gm.graph.eliminate_dead_code()
        gm.delete_all_unused_submodules()
        return PassResult(gm, bool(changed))
