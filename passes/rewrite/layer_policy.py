"""Decide per layer, from the recipe, whether it is hashed and with which settings."""

from __future__ import annotations

import torch.fx as fx

from hatac.passes.base import PassBase, PassContext, PassResult


class AssignLayerPolicy(PassBase):
    """Layers below ``dense_layers`` (and any in ``extra_dense``) stay dense, and so do sliding-window
    layers unless the recipe's ``hash_sliding`` is on (see :class:`HataConfig`); the rest get the
    recipe's bits, budget, sink and recent. User passes that run after this one may change any site's
    policy."""

    def call(self, gm: fx.GraphModule, ctx: PassContext) -> PassResult:
        cfg = ctx.config
        for site in ctx.sites.values():
            site.hashed = cfg.is_hashed(site.layer, site.window)
            site.budget = cfg.budget_of(site.layer)
            site.sink, site.recent, site.rbits = cfg.sink, cfg.recent, cfg.rbits
        return PassResult(gm, False)
