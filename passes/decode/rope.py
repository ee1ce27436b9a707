"""A hashed decode layer's rotary embedding moves into its encode launch: ``hatac::rope_hash_encode_step_kv``.

Why: in the decode step the query and key are rotated by inductor's kernels (two a layer, torch 2.11), which
launch without programmatic dependent launch between the q/k/v GEMM and hatac's encode; the encode already
loads q and k, so rotating them there costs no extra memory traffic and drops those launches (H100 timeline,
batch 8 / 32K: docs/PERFORMANCE.md, Decisions). Same math, same rounding
(float32, one rounding to the input dtype). Runtime-only, like ``FuseAddRMSNorm``: applied by
``hatac.runtime.decode_step.runtime_decode_graph``; ``DecodeOptions(rope=False)`` turns it off.

Matched: ``hatac::hash_encode_step_kv(rope(q), rope(k), ...)`` with ``rope(x) = x * unsqueeze(cos, 1) +
cat(-x[..., D/2:], x[..., :D/2]) * unsqueeze(sin, 1)`` (the rotate-half form of Llama, Qwen, Mistral and
Gemma), or its partial form ``cat([rope(x[..., :R]), x[..., R:]], -1)`` (Phi-3 and the partial rotary
embeddings), the same cos and sin for q and k, all of one dtype, and the rotated key read by nothing else.
Interleaved (GPT-J style) rotary embeddings do not match and keep their kernels.
"""

from __future__ import annotations

import operator

import torch
import torch.fx as fx

from hatac.passes.base import DECODE, NodeRewritePass
from hatac.passes.decode.match import ASSERT as _ASSERT
from hatac.passes.decode.match import calls as _call
from hatac.passes.decode.match import drop_asserts
from hatac.passes.decode.match import meta_val as _val

aten = torch.ops.aten


def _pair(node: fx.Node, pred):
    """(a, b) of a two-argument node with ``pred(a)`` true, trying both orders; None if neither."""
    if len(node.args) != 2 or node.kwargs:
        return None
    for a, b in (node.args, node.args[::-1]):
        if pred(a):
            return a, b
    return None


def _slice(node, x: fx.Node, lo: int, hi: int, d: int) -> bool:
    """Whether ``node`` is ``x[..., lo:hi]`` on the last of x's d-wide dims."""
    if not _call(node, aten.slice.Tensor) or node.args[0] is not x or node.kwargs:
        return False
    dim, start, end = (list(node.args[1:]) + [0, None, None])[:3]
    end = d if end is None else end
    return dim in (-1, 3) and start == lo and isinstance(end, int) and min(end, d) == hi


def _unsqueezed(node) -> fx.Node | None:
    """``t`` of ``unsqueeze(t, 1)``, else None."""
    if _call(node, aten.unsqueeze.default) and tuple(node.args[1:]) == (1,):
        return node.args[0]
    return None


def _rope(out) -> tuple[fx.Node, fx.Node, fx.Node, list[fx.Node]] | None:
    """Match ``out = x * unsqueeze(cos, 1) + cat(-x2, x1) * unsqueeze(sin, 1)`` for a (B, H, S, D) x with
    halves x1, x2 (either order of each product and of the sum). Returns (x, cos, sin, the nodes computed
    for this alone, users first) or None."""
    if not _call(out, aten.add.Tensor) or len(out.args) != 2 or out.kwargs:
        return None
    for m_cos, m_sin in (out.args, out.args[::-1]):
        if not (_call(m_cos, aten.mul.Tensor) and _call(m_sin, aten.mul.Tensor)):
            continue
        ps = _pair(m_sin, lambda n: _call(n, aten.cat.default))
        if ps is None:
            continue
        cat, su = ps
        parts, dim = (list(cat.args) + [0])[:2]
        if dim not in (-1, 3) or len(parts) != 2 or not _call(parts[0], aten.neg.default) or cat.kwargs:
            continue
        neg, lo = parts
        hi = neg.args[0]
        x = lo.args[0] if _call(lo, aten.slice.Tensor) else None
        v = _val(x)
        if v is None or v.dim() != 4 or v.shape[-1] % 2:
            continue
        d = int(v.shape[-1])
        if not (_slice(hi, x, d // 2, d, d) and _slice(lo, x, 0, d // 2, d)):
            continue
        pc = _pair(m_cos, lambda n: n is x)
        cos, sin = (_unsqueezed(pc[1]) if pc else None), _unsqueezed(su)
        if cos is None or sin is None:
            continue
        chain = [out, m_cos, m_sin, cat, neg, hi, lo]
        inside = set(chain)
        if all(u in inside or _call(u, _ASSERT) for n in chain[1:] for u in n.users):
            return x, cos, sin, chain
    return None


def _rotary(out) -> tuple[fx.Node, fx.Node, fx.Node, list[fx.Node]] | None:
    """:func:`_rope` of a whole (B, H, S, D) tensor, or the partial form ``cat([rope(x[..., :R]), x[..., R:]], -1)``
    (Phi-3's, where ``x[..., :D]`` is an alias): (x, cos, sin, nodes users first) or None."""
    found = _rope(out)
    if found is not None:
        return found
    if not _call(out, aten.cat.default) or out.kwargs:
        return None
    parts, dim = (list(out.args) + [0])[:2]
    if dim not in (-1, 3) or len(parts) != 2:
        return None
    inner = _rope(parts[0])
    if inner is None:
        return None
    xr, cos, sin, chain = inner
    rest = parts[1]
    x = rest.args[0] if _call(rest, aten.slice.Tensor) else None
    v, vr = _val(x), _val(xr)
    if v is None or vr is None or v.dim() != 4:
        return None
    d, rot = int(v.shape[-1]), int(vr.shape[-1])
    whole = _call(xr, aten.alias.default) and xr.args[0] is x and rot == d
    if not (whole or _slice(xr, x, 0, rot, d)) or not _slice(rest, x, rot, d, d):
        return None
    chain = [out] + chain + [xr, rest]
    inside = set(chain)
    if not all(u in inside or _call(u, _ASSERT) for n in chain[1:] for u in n.users):
        return None
    return x, cos, sin, chain


def _compatible(q_rot, k_rot, cos, sin) -> bool:
    """One floating dtype for q, k, cos and sin and their rotations; cos, sin (B or 1, S, R) of q's S, for an even
    R up to the head dim."""
    vals = [_val(n) for n in (q_rot, k_rot, cos, sin)]
    if any(v is None for v in vals):
        return False
    qv, kv, cv, sv = vals
    if len({v.dtype for v in vals}) != 1 or qv.dtype not in (torch.float16, torch.bfloat16, torch.float32):
        return False
    if cv.dim() != 3 or tuple(cv.shape) != tuple(sv.shape) or cv.shape[1] != qv.shape[2]:
        return False
    return cv.shape[2] % 2 == 0 and cv.shape[2] <= qv.shape[3] and kv.shape[3] == qv.shape[3]


class FuseRoPEEncode(NodeRewritePass):
    """``hash_encode_step_kv(rope(q), rope(k), v, ...)`` -> ``rope_hash_encode_step_kv(q, k, v, cos, sin, ...)``;
    the op's rotated q replaces ``rope(q)`` everywhere else (the sparse attention reads it)."""

    modes = (DECODE,)

    def rewrite(self, gm: fx.GraphModule, node: fx.Node) -> bool:
        if not _call(node, torch.ops.hatac.hash_encode_step_kv.default) or node.kwargs:
            return False
        q_rot, k_rot, v, w, k_cache, v_cache, codes, pos = node.args
        mq, mk = _rotary(q_rot), _rotary(k_rot)
        if mq is None or mk is None or mq[1:3] != mk[1:3] or mq[0] is mk[0]:
            return False
        (q, cos, sin, q_chain), (k, _, _, k_chain) = mq, mk
        if any(u is not node and not _call(u, _ASSERT) for u in k_rot.users) or not _compatible(q_rot, k_rot, cos, sin):
            return False
        order = {n: i for i, n in enumerate(gm.graph.nodes)}
        if any(order[u] < order[node] for u in q_rot.users if u is not node and not _call(u, _ASSERT)):
            return False  # the rotated q is read before the encode: the fused op could not give it there
        with gm.graph.inserting_before(node):
            fused = gm.graph.call_function(
                torch.ops.hatac.rope_hash_encode_step_kv.default, (q, k, v, cos, sin, w, k_cache, v_cache, codes, pos))
            q_codes = gm.graph.call_function(operator.getitem, (fused, 0))
            rotated = gm.graph.call_function(operator.getitem, (fused, 1))
        for meta_key in ("hatac_layer", "nn_module_stack"):
            if meta_key in node.meta:
                fused.meta[meta_key] = node.meta[meta_key]
        q_codes.meta.update({k_: v_ for k_, v_ in node.meta.items() if k_ in ("val", "tensor_meta")})
        qv = _val(q_rot)
        rotated.meta["val"] = qv.new_empty(qv.shape) if qv is not None else None
        node.replace_all_uses_with(q_codes)
        gm.graph.erase_node(node)
        drop_asserts(gm.graph, q_rot)
        q_rot.replace_all_uses_with(rotated)
        for n in q_chain + k_chain:
            drop_asserts(gm.graph, n)
            if not n.users:
                gm.graph.erase_node(n)
        return True
