"""Fusions over the rewritten graph, written as pattern passes (FuseEncodeStep and FuseCacheWrites run by
default: recipe fuse_encode)."""

from __future__ import annotations

import torch
import torch.fx as fx

import hatac.ops  # noqa: F401  (registers the hatac:: ops the patterns name)
from hatac.passes.base import DECODE, PassBase, PassContext, PassResult
from hatac.passes.rewrite.cache_inputs import k_cache_name, v_cache_name
from hatac.passes.pattern import _META_KEYS, PatternPass, count_targets

ops = torch.ops.hatac


class FuseEncodeStep(PatternPass):
    """Decode graph, hashed layers: ``hash_encode(k)`` + ``cache_write(codes)`` + ``hash_encode(q)`` become
    one ``hatac::hash_encode_step(q, k, W, key_codes, write_pos)``, so a GPU backend can encode the new
    key and the query in one launch. Same values, same code cache (the op is defined as exactly this
    sequence; see :func:`hatac.reference.hash_encode_step`).

    On by default (``HataConfig.fuse_encode``); with ``fuse_encode=False`` apply it by hand with
    ``--pass hatac.passes.fusion.encode_write:FuseEncodeStep`` (or ``passes=[FuseEncodeStep()]``).
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


class FuseCacheWrites(PassBase):
    """Decode graph, hashed layers: the new key's and value's ``cache_write`` + ``hash_encode_step`` become
    one ``hatac::hash_encode_step_kv(q, k, v, W, k_cache, v_cache, key_codes, write_pos)``, so the launch
    that encodes the new key also writes it and its value into their caches (two launches fewer a hashed
    layer). Same values, same caches (the op is defined as exactly this sequence; see
    :func:`hatac.reference.hash_encode_step_kv`).

    Not a pattern pass: nothing in the dataflow ties the value's write to its layer's encode (any
    ``cache_write`` with the same ``write_pos`` would match a pattern's), so each ``hash_encode_step`` is
    paired with the writes of its own layer's K cache (of the key it encodes) and V cache, found by the
    layer's cache inputs. The writes move to the encode's place, which is refused (the layer left as it
    is) when anything else touches those caches in between.

    Runs after FuseEncodeStep and after user passes placed after the rewrite (so they still see the
    separate writes), whenever ``HataConfig.fuse_encode`` is on.
    """

    position = "after_rewrite"
    modes = (DECODE,)

    def call(self, gm: fx.GraphModule, ctx: PassContext) -> PassResult:
        graph = gm.graph
        order = {n: i for i, n in enumerate(graph.nodes)}
        writes = {}  # cache input -> the cache_write nodes into it
        for n in graph.nodes:
            if n.op == "call_function" and n.target is ops.cache_write.default:
                writes.setdefault(n.args[0], []).append(n)
        fused = 0
        for step in [n for n in graph.nodes if n.op == "call_function" and n.target is ops.hash_encode_step.default]:
            layer = step.meta.get("hatac_layer")
            q, k, w, codes, pos = step.args
            k_cache = ctx.inputs.get(k_cache_name(layer)) if layer is not None else None
            v_cache = ctx.inputs.get(v_cache_name(layer)) if layer is not None else None
            kw = [n for n in writes.get(k_cache, []) if n.args[1] is k and n.args[2] is pos and order[n] < order[step]]
            vw = [n for n in writes.get(v_cache, []) if n.args[2] is pos and order[n] < order[step]]
            if len(kw) != 1 or len(vw) != 1 or not self._movable((kw[0], vw[0]), step, order):
                continue
            with graph.inserting_before(step):
                new = graph.call_function(ops.hash_encode_step_kv.default, (q, k, vw[0].args[1], w, k_cache, v_cache, codes, pos))
            new.meta.update(step.meta)
            step.replace_all_uses_with(new)
            for old in (step, kw[0], vw[0]):
                graph.erase_node(old)
            fused += 1
        ctx.meta.setdefault("pattern_matches", {})[self.name] = fused
        if fused:
            gm.recompile()
        return PassResult(gm, bool(fused))

    @staticmethod
    def _movable(moved, step, order) -> bool:
        """No other node reads or writes a moved write's cache between that write and ``step``."""
        for write in moved:
            for user in write.args[0].users:
                if user not in moved and user is not step and order[write] < order[user] < order[step]:
                    return False
        return True


def unfold_cache_writes(graph: fx.Graph) -> int:
    """The inverse of :class:`FuseCacheWrites`, for consumers written for the separate ops (the functional
    export, the evaluation's policy pass): every ``hash_encode_step_kv`` back into its K and V
    ``cache_write`` followed by ``hash_encode_step``, in place. Returns how many were unfolded."""
    unfolded = 0
    for node in [n for n in graph.nodes if n.op == "call_function" and n.target is ops.hash_encode_step_kv.default]:
        q, k, v, w, k_cache, v_cache, codes, pos = node.args
        with graph.inserting_before(node):
            writes = [graph.call_function(ops.cache_write.default, (cache, values, pos)) for cache, values in ((k_cache, k), (v_cache, v))]
            step = graph.call_function(ops.hash_encode_step.default, (q, k, w, codes, pos))
        for write in writes:
            write.meta.update({key: node.meta[key] for key in _META_KEYS if key in node.meta})
        step.meta.update(node.meta)
        node.replace_all_uses_with(step)
        graph.erase_node(node)
        unfolded += 1
    return unfolded
