"""Fusions over the rewritten graph: FuseEncodeStep (a pattern pass; recipe fuse_encode) and FuseSelectAttention
(a node walk, as its pattern has scalar arguments; recipe fuse_select). Both run by default."""

from __future__ import annotations

import torch
import torch.fx as fx

import hatac.ops  # noqa: F401  (registers the hatac:: ops the patterns name)
from hatac.passes.base import DECODE, PassBase, PassContext, PassResult
from hatac.passes.pattern import PatternPass, count_targets, mutated_args

ops = torch.ops.hatac


class FuseEncodeStep(PatternPass):
    """Decode graph, hashed layers: ``hash_encode(k)`` + ``cache_write(codes)`` + ``hash_encode(q)`` become
    one ``hatac::hash_encode_step(q, k, W, key_codes, write_pos)``, so a GPU backend can encode the new
    key and the query in one launch. Same values, same code cache (the op is defined as exactly this
    sequence; see :func:`hatac.reference.hash_encode_step`).

    On by default (``HataConfig.fuse_encode``); with ``fuse_encode=False`` apply it by hand with
    ``--pass hatac.passes.fusions:FuseEncodeStep`` (or ``passes=[FuseEncodeStep()]``).
    """

    position = "after_rewrite"
    modes = (DECODE,)

    @staticmethod
    def pattern(q, k, w, key_codes, write_pos):
        codes = torch.ops.hatac.hash_encode.default(k, w)
        torch.ops.hatac.cache_write.default(key_codes, codes, write_pos)
        return torch.ops.hatac.hash_encode.default(q, w)

    @staticmethod
    def replacement(q, k, w, key_codes, write_pos):
        return torch.ops.hatac.hash_encode_step.default(q, k, w, key_codes, write_pos)

    def ensures(self, gm: fx.GraphModule, ctx: PassContext) -> None:
        hashed = sum(s.hashed for s in ctx.sites.values())
        fused = count_targets(gm, ops.hash_encode_step.default)
        if fused != hashed:
            raise ValueError(f"fused {fused} of {hashed} hashed layers (a layer's encode/write/encode did not match)")


def _bound_args(node: fx.Node) -> dict:
    """A call's arguments by schema name, defaults filled in."""
    out = {}
    for i, arg in enumerate(node.target._schema.arguments):
        if i < len(node.args):
            out[arg.name] = node.args[i]
        elif arg.name in node.kwargs:
            out[arg.name] = node.kwargs[arg.name]
        else:
            out[arg.name] = arg.default_value
    return out


class FuseSelectAttention(PassBase):
    """Decode graph, hashed layers: ``idx = hamming_topk(...)`` feeding only ``sparse_attention(q, K, V,
    idx, scale)`` becomes one ``hatac::topk_attention``, so a GPU backend places each split's winners and
    attends to them in the same kernel (one launch boundary and one wave fewer a layer). Same values:
    the op is defined as exactly this pair (:func:`hatac.reference.topk_attention`).

    Runs after user passes placed after the rewrite, so they still see (and may replace) the select; a
    pair is left alone when its indices have another user or a node between the two ops writes one of
    their inputs. On by default (``HataConfig.fuse_select``); ``fuse_select=False`` (``hatac convert
    --no-fuse-select``) keeps the two ops.
    """

    position = "after_rewrite"
    modes = (DECODE,)

    @staticmethod
    def _pairs(graph: fx.Graph) -> list[tuple[fx.Node, fx.Node, dict, dict]]:
        """(select, attention, their arguments) for every pair that can be fused."""
        order = {n: i for i, n in enumerate(graph.nodes)}
        nodes = list(graph.nodes)
        pairs = []
        for attn in nodes:
            if attn.op != "call_function" or attn.target is not ops.sparse_attention.default:
                continue
            a = _bound_args(attn)
            sel = a["indices"]
            if not (isinstance(sel, fx.Node) and sel.op == "call_function" and sel.target is ops.hamming_topk.default):
                continue
            if len(sel.users) != 1:
                continue
            s = _bound_args(sel)
            inputs = {x for x in (*s.values(), a["q"], a["k_cache"], a["v_cache"]) if isinstance(x, fx.Node)}
            if any(set(mutated_args(n)) & inputs for n in nodes[order[sel] + 1 : order[attn]]):
                continue  # the select would move past a write to what it reads
            pairs.append((sel, attn, s, a))
        return pairs

    def call(self, gm: fx.GraphModule, ctx: PassContext) -> PassResult:
        graph = gm.graph
        pairs = self._pairs(graph)
        for sel, attn, s, a in pairs:
            with graph.inserting_before(attn):
                new = graph.call_function(
                    ops.topk_attention.default,
                    (a["q"], s["q_codes"], s["k_codes"], a["k_cache"], a["v_cache"], s["q_pos"], s["k"], s["budget"],
                     a["scale"], s["sink"], s["recent"], s["window"]),
                )
            new.meta.update(attn.meta)
            attn.replace_all_uses_with(new)
            graph.erase_node(attn)
            graph.erase_node(sel)
        return PassResult(gm, bool(pairs))

    def ensures(self, gm: fx.GraphModule, ctx: PassContext) -> None:
        left = self._pairs(gm.graph)
        if left:
            raise ValueError(f"{left[0][0].name} still feeds {left[0][1].name} alone: not fused")
