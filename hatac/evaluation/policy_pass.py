"""An after-rewrite pass that hands each hashed layer's token selection to a swappable policy.

The decode graph of a converted model selects with ``idx = hamming_topk(q_codes, key_codes, pos, width,
budget, ...)`` and attends with ``sparse_attention(q, k_cache, v_cache, idx, scale)``. This pass replaces
every ``hamming_topk`` node with a call to one :class:`Selector` submodule, fed with the layer's
post-RoPE queries (``sparse_attention``'s argument 0), its K cache (argument 1), the query positions and
the selection width (``hamming_topk``'s arguments 2 and 3). The selector runs whichever policy and
budget are set on it at call time, so one converted graph runs every method at every budget, with the
same sparse attention, dense layers and cache as hatac itself.

The key-code cache is no longer read, so the pass also drops the code writes (``hash_encode`` of the
new keys, ``cache_write`` into ``key_codes_L``, or the fused ``hash_encode_step``; a
``hash_encode_step_kv`` is first unfolded, so its K and V writes stay) in both variants: a
policy hashes with its own W, and evaluation does not pay for codes nothing reads.
"""

from __future__ import annotations

import torch
import torch.fx as fx

from hatac.errors import HatacError
from hatac.evaluation.policies import Policy, select
from hatac.ops import op_name
from hatac.passes.base import DECODE, PREFILL, PassBase, PassContext, PassResult
from hatac.passes.fusion.encode_write import unfold_cache_writes

SELECTOR = "hatac_eval_selector"


class Selector(torch.nn.Module):
    """The callable the rewritten graphs call per hashed layer: ``policy`` at ``budget`` (set by the caller)."""

    def __init__(self):
        super().__init__()
        self.policy: Policy | None = None
        self.budget: float = 0.0

    def set(self, policy: Policy, budget: float) -> "Selector":
        self.policy, self.budget = policy, float(budget)
        return self

    def forward(self, q: torch.Tensor, k_cache: torch.Tensor, q_pos: torch.Tensor, width: int, layer: int = 0, window: int = 0) -> torch.Tensor:
        if self.policy is None:
            raise HatacError("no selection policy set on the evaluation selector")
        return select(self.policy, q, k_cache, q_pos, int(width), self.budget, layer, window)


def _is_codes_input(node) -> bool:
    return isinstance(node, fx.Node) and node.op == "placeholder" and node.name.startswith("key_codes_")


class UseSelectionPolicy(PassBase):
    """Replace ``hamming_topk`` with the shared :class:`Selector`; drop the key-code writes."""

    position = "after_rewrite"
    modes = (PREFILL, DECODE)

    def __init__(self, selector: Selector):
        self.selector = selector

    def call(self, gm: fx.GraphModule, ctx: PassContext) -> PassResult:
        graph = gm.graph
        gm.add_submodule(SELECTOR, self.selector)
        unfolded = unfold_cache_writes(graph)
        replaced = 0
        for node in list(graph.nodes):
            if node.op != "call_function" or op_name(node.target) != "hamming_topk":
                continue
            attn = [u for u in node.users if op_name(u.target) == "sparse_attention"]
            if len(attn) != 1 or len(node.users) != 1:
                raise HatacError(f"hamming_topk node {node.name} does not feed exactly one sparse_attention")
            q, k_cache = attn[0].args[0], attn[0].args[1]
            q_pos, width = node.args[2], node.args[3]
            window = node.args[7] if len(node.args) > 7 else node.kwargs.get("window", 0)
            layer = node.meta.get("hatac_layer", -1)
            with graph.inserting_before(node):
                new = graph.call_module(SELECTOR, (q, k_cache, q_pos, width), {"layer": layer, "window": window})
            new.meta.update({k: v for k, v in node.meta.items() if k in ("hatac_layer", "nn_module_stack")})
            node.replace_all_uses_with(new)
            graph.erase_node(node)
            replaced += 1
        if ctx.mode == DECODE and replaced != sum(s.hashed for s in ctx.sites.values()):
            raise HatacError(f"replaced {replaced} hamming_topk nodes, expected one per hashed layer")
        dropped = 0
        for node in reversed(list(graph.nodes)):
            name = op_name(node.target) if node.op == "call_function" else None
            if name == "cache_write" and _is_codes_input(node.args[0]):
                graph.erase_node(node)
                dropped += 1
            elif name == "hash_encode_step" and not node.users:
                graph.erase_node(node)
                dropped += 1
        return PassResult(gm, bool(replaced or dropped or unfolded))
