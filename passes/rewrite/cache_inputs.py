"""Add the step's state as explicit graph inputs: write positions, selection width and per-layer caches."""

from __future__ import annotations

import torch.fx as fx

from hatac.passes.base import DECODE, PREFILL, PassBase, PassContext, PassResult

WRITE_POS = "write_pos"
TOPK_WIDTH = "topk_width"


def k_cache_name(layer: int) -> str:
    return f"k_cache_{layer}"


def v_cache_name(layer: int) -> str:
    return f"v_cache_{layer}"


def codes_name(layer: int) -> str:
    return f"key_codes_{layer}"


class AddCacheInputs(PassBase):
    """After this pass the graph reads ``forward(input_ids, position_ids, [logits_to_keep], write_pos,
    [topk_width], k_cache_L, v_cache_L, [key_codes_L], ...)``. Caches are owned by the caller (the
    runtime's :class:`~hatac.runtime.cache.HataCache`), so they live exactly as long as it does and the
    same graph runs eagerly, compiled, or inside a CUDA graph with static buffers."""

    modes = (PREFILL, DECODE)

    def call(self, gm: fx.GraphModule, ctx: PassContext) -> PassResult:
        graph = gm.graph
        last = [n for n in graph.nodes if n.op == "placeholder"][-1]
        names = [WRITE_POS]
        if ctx.mode == DECODE and any(s.hashed for s in ctx.sites.values()):
            names.append(TOPK_WIDTH)
        for layer, site in ctx.sites.items():
            names += [k_cache_name(layer), v_cache_name(layer)]
            if site.hashed:
                names.append(codes_name(layer))
        for name in names:
            with graph.inserting_after(last):
                last = graph.placeholder(name)
            ctx.inputs[name] = last
        return PassResult(gm, True)
