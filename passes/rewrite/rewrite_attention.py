"""Rewrite attention nodes into hatac ops.

Hashed layer, decode variant::

    cache_write(k_cache, k, write_pos); cache_write(v_cache, v, write_pos)
    key_codes_new = hash_encode(k, W);   cache_write(key_codes, key_codes_new, write_pos)
    q_codes = hash_encode(q, W)
    idx = hamming_topk(q_codes, key_codes, position_ids, topk_width, budget, sink, recent, window, k_cache, v_cache)
    out = sparse_attention(q, k_cache, v_cache, idx, scale)

(the caches passed to ``hamming_topk`` are a hint: its GPU body prefetches the selected rows into L2.)

Prefill variant, and dense layers in both variants: the writes (key codes too on hashed layers, so every
key is encoded exactly once, when it enters the cache), then ``cache_attention`` over the cache.
"""

from __future__ import annotations

import torch
import torch.fx as fx

from hatac.passes.base import DECODE, PREFILL, AttentionSite, PassBase, PassContext, PassResult
from hatac.passes.rewrite.cache_inputs import TOPK_WIDTH, WRITE_POS, codes_name, k_cache_name, v_cache_name

ops = torch.ops.hatac


def hash_weight_name(layer: int) -> str:
    return f"hatac_w_{layer}"


def _tag(node: fx.Node, site: AttentionSite) -> fx.Node:
    node.meta["hatac_layer"] = site.layer
    node.meta["nn_module_stack"] = dict(site.node.meta.get("nn_module_stack") or {})
    return node


def _call(graph: fx.Graph, site: AttentionSite, op, *args) -> fx.Node:
    return _tag(graph.call_function(op, tuple(args)), site)


def _write_kv(gm: fx.GraphModule, ctx: PassContext, site: AttentionSite) -> fx.Node | None:
    """Write the new keys and values (and, on hashed layers, their codes); return the W node if hashed."""
    graph, wp = gm.graph, ctx.inputs[WRITE_POS]
    k_cache, v_cache = ctx.inputs[k_cache_name(site.layer)], ctx.inputs[v_cache_name(site.layer)]
    _call(graph, site, ops.cache_write.default, k_cache, site.k, wp)
    _call(graph, site, ops.cache_write.default, v_cache, site.v, wp)
    if not site.hashed:
        return None
    name = hash_weight_name(site.layer)
    w = ctx.hash_weights.get(site.layer)
    if w is None:
        raise ValueError(f"layer {site.layer} is hashed but has no hash weights")
    expect = (site.n_kv_heads, site.head_dim, site.rbits)
    if tuple(w.shape) != expect:
        raise ValueError(f"hash weights of layer {site.layer} have shape {tuple(w.shape)}, expected {expect}")
    device = next(ctx.model.parameters()).device
    gm.register_buffer(name, w.detach().to(device=device, dtype=torch.float32).contiguous())
    w_node = _tag(graph.get_attr(name), site)
    codes = _call(graph, site, ops.hash_encode.default, site.k, w_node)
    _call(graph, site, ops.cache_write.default, ctx.inputs[codes_name(site.layer)], codes, wp)
    return w_node


def _replace(site: AttentionSite, out: fx.Node, gm: fx.GraphModule) -> None:
    site.node.replace_all_uses_with(out)
    gm.graph.erase_node(site.node)
    site.node = out


class RewriteDenseAttention(PassBase):
    """Every layer in the prefill variant, and the dense layers in the decode variant."""

    modes = (PREFILL, DECODE)

    def call(self, gm: fx.GraphModule, ctx: PassContext) -> PassResult:
        modified = False
        for site in ctx.sites.values():
            if ctx.mode == DECODE and site.hashed:
                continue
            with gm.graph.inserting_before(site.node):
                _write_kv(gm, ctx, site)
                k_cache, v_cache = ctx.inputs[k_cache_name(site.layer)], ctx.inputs[v_cache_name(site.layer)]
                pos = ctx.inputs["position_ids"]
                out = _call(gm.graph, site, ops.cache_attention.default, site.q, k_cache, v_cache, pos, site.scale, site.window)
            _replace(site, out, gm)
            modified = True
        return PassResult(gm, modified)


class RewriteHashedAttention(PassBase):
    """Hashed layers in the decode variant: hash-encode, Hamming top-k, sparse attention."""

    modes = (DECODE,)

    def call(self, gm: fx.GraphModule, ctx: PassContext) -> PassResult:
        modified = False
        for site in ctx.sites.values():
            if not site.hashed:
                continue
            graph = gm.graph
            with graph.inserting_before(site.node):
                w = _write_kv(gm, ctx, site)
                k_cache, v_cache = ctx.inputs[k_cache_name(site.layer)], ctx.inputs[v_cache_name(site.layer)]
                q_codes = _call(graph, site, ops.hash_encode.default, site.q, w)
                idx = _call(
                    graph, site, ops.hamming_topk.default, q_codes, ctx.inputs[codes_name(site.layer)],
                    ctx.inputs["position_ids"], ctx.inputs[TOPK_WIDTH], float(site.budget), site.sink, site.recent, site.window,
                    k_cache, v_cache,
                )
                out = _call(graph, site, ops.sparse_attention.default, site.q, k_cache, v_cache, idx, site.scale)
            _replace(site, out, gm)
            modified = True
        return PassResult(gm, modified)
