"""A functional form of a rewritten graph, for formats with no in-place updates (ONNX).

hatac's graphs update their caches in place (``hatac::cache_write`` and ``hatac::hash_encode_step``
mutate a graph input; that is how the runtime keeps one cache across steps with no copies). ONNX has no
in-place update of an input, and ``torch.onnx.export`` keeps only a program's user outputs, so an
input mutation recorded by torch.export would be dropped. :func:`functionalize` therefore rewrites the
graph before export:

- ``cache_write(cache, values, write_pos)`` becomes ``cache_new = cache_update(cache, values, write_pos)``
  (an out-of-place scatter on dim 2: ONNX ``ScatterElements``), and every later use of ``cache`` reads
  ``cache_new``;
- ``hash_encode_step(q, k, W, key_codes, write_pos)`` becomes the functional
  ``hatac_export::hash_encode_step`` returning ``(q_codes, key_codes_new)``; ``hash_encode_step_kv``
  becomes the two ``cache_update``s of its K and V writes followed by the same;
- each updated graph input is returned after the logits, in input order: the step's outputs are
  ``(logits, k_cache_0_new, v_cache_0_new, ..., key_codes_L_new, ...)``;
- with ``decompose_dense`` (the default), ``cache_attention`` (the dense path: prefill, and dense layers
  in decode) becomes standard ops (matmul, a position mask, softmax), so dense layers export as plain ONNX.

The functional graph computes the same logits and the same updated caches as the original (tested),
up to float rounding of the decomposed dense attention.
"""

from __future__ import annotations

import copy
import operator

import torch
import torch.fx as fx
from torch import Tensor

from hatac import reference
from hatac.errors import HatacError
from hatac.passes.fusion.encode_write import unfold_cache_writes
from hatac.passes.pattern import mutated_args

ops = torch.ops.hatac


def cache_update(cache: Tensor, values: Tensor, write_pos: Tensor) -> Tensor:
    """Out-of-place ``hatac::cache_write``: a copy of ``cache`` with ``values[b, :, s]`` at slot
    ``write_pos[b, s]`` (dim 2)."""
    b, h, s, x = values.shape
    idx = write_pos.to(torch.int64).view(b, 1, s, 1).expand(b, h, s, x)
    return cache.scatter(2, idx, values.to(cache.dtype))


def dense_cache_attention(q: Tensor, k_cache: Tensor, v_cache: Tensor, q_pos: Tensor, scale: float, window: int = 0) -> Tensor:
    """``hatac::cache_attention`` in standard ops: each query attends to slots ``[q_pos - window + 1,
    q_pos]`` (``0..q_pos`` without a window); KV heads are repeated for their G query heads."""
    b, hq, s, d = q.shape
    hkv, t, dv = k_cache.shape[1], k_cache.shape[2], v_cache.shape[3]
    g = hq // hkv
    k = k_cache.to(q.dtype).unsqueeze(2).expand(b, hkv, g, t, d).reshape(b, hq, t, d)
    v = v_cache.to(q.dtype).unsqueeze(2).expand(b, hkv, g, t, dv).reshape(b, hq, t, dv)
    slot = torch.arange(t, device=q.device).view(1, 1, t)
    hi = q_pos.to(torch.int64).unsqueeze(-1)  # (B, S, 1)
    allowed = slot <= hi
    if window > 0:
        allowed = allowed & (slot > hi - window)
    scores = torch.matmul(q, k.transpose(-1, -2)) * scale
    scores = scores.masked_fill(~allowed.unsqueeze(1), float("-inf"))
    return torch.matmul(torch.softmax(scores, dim=-1), v)


@torch.library.custom_op("hatac_export::hash_encode_step", mutates_args=())
def hash_encode_step(q: Tensor, k: Tensor, w: Tensor, k_codes: Tensor, write_pos: Tensor) -> tuple[Tensor, Tensor]:
    """Functional ``hatac::hash_encode_step``: (query codes, a copy of ``k_codes`` with the new keys' codes)."""
    new = k_codes.clone()
    q_codes = reference.hash_encode_step(q, k, w, new, write_pos)
    return q_codes, new


@hash_encode_step.register_fake
def _(q, k, w, k_codes, write_pos):
    return q.new_empty((q.shape[0], q.shape[1], q.shape[2], w.shape[2] // 32), dtype=torch.int32), torch.empty_like(k_codes)


def functionalize(gm: fx.GraphModule, decompose_dense: bool = True) -> tuple[fx.GraphModule, list[str]]:
    """The functional graph (sharing ``gm``'s parameters) and the names of the inputs it returns updated."""
    graph = copy.deepcopy(gm.graph)
    unfold_cache_writes(graph)  # hash_encode_step_kv: its K and V writes become cache_updates below
    new_gm = fx.GraphModule(gm, graph, class_name=f"{type(gm).__name__}Functional")
    latest: dict[fx.Node, fx.Node] = {}  # original tensor -> its newest version
    root_of: dict[fx.Node, fx.Node] = {}  # a version -> the original tensor
    updated: list[fx.Node] = []

    def bump(original: fx.Node, version: fx.Node) -> None:
        root = root_of.get(original, original)
        latest[root] = version
        root_of[version] = root
        if root.op == "placeholder" and root not in updated:
            updated.append(root)

    for node in list(graph.nodes):
        if node.op == "placeholder":
            continue
        node.args = fx.map_arg(node.args, lambda n: latest.get(n, n))
        node.kwargs = fx.map_arg(node.kwargs, lambda n: latest.get(n, n))
        if node.op == "output":
            continue
        if node.op == "call_function" and node.target is ops.cache_write.default:
            cache, values, pos = node.args
            with graph.inserting_before(node):
                version = graph.call_function(cache_update, (cache, values, pos))
            version.meta.update({k: v for k, v in node.meta.items() if k in ("hatac_layer", "nn_module_stack")})
            graph.erase_node(node)
            bump(cache, version)
        elif node.op == "call_function" and node.target is ops.hash_encode_step.default:
            q, k, w, codes, pos = node.args
            with graph.inserting_before(node):
                both = graph.call_function(torch.ops.hatac_export.hash_encode_step.default, (q, k, w, codes, pos))
                q_codes = graph.call_function(operator.getitem, (both, 0))
                version = graph.call_function(operator.getitem, (both, 1))
            for n in (both, q_codes, version):
                n.meta.update({k: v for k, v in node.meta.items() if k in ("hatac_layer", "nn_module_stack")})
            node.replace_all_uses_with(q_codes)
            graph.erase_node(node)
            bump(codes, version)
        elif node.op == "call_function" and node.target is ops.cache_attention.default and decompose_dense:
            node.target = dense_cache_attention
        elif mutated_args(node):
            raise HatacError(f"cannot export node {node.name} ({node.target}): it updates {', '.join(a.name for a in mutated_args(node))} in place and hatac has no functional form of it")
    out = next(n for n in graph.nodes if n.op == "output")
    logits = out.args[0]
    order = [n for n in graph.nodes if n.op == "placeholder"]
    updated.sort(key=order.index)
    out.args = ((logits, *[latest[p] for p in updated]),)
    graph.lint()
    new_gm.recompile()
    return new_gm, [p.name for p in updated]

