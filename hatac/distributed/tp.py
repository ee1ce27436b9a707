"""Tensor-parallel decoding: each process holds a shard of the model and of its caches.

Megatron-style sharding done on the transformers model *before* capture, driven by the model's own
tensor-parallel plan (``config.base_model_tp_plan``, the table transformers' ``tp_plan="auto"`` reads):

- ``colwise`` linears (q/k/v, gate/up) keep this rank's contiguous block of output features: its query
  heads, its KV heads (query head h uses KV head h // G, so the blocks line up), its MLP columns;
- ``rowwise`` linears (o_proj, down_proj) keep the matching block of input features and sum their partial
  outputs over the ranks with ``hatac::all_reduce`` (``hatac/distributed/allreduce.py``), so the collective is a node
  of the exported graph: it runs eagerly, under ``torch.compile`` and inside the CUDA graph of the static
  decode step; on GPUs of one host small (decode) messages take a one-shot symmetric-memory all-reduce,
  everything else the functional NCCL (or gloo) all-reduce;
- ``replicated_with_grad_allreduce`` modules (Qwen3's per-head q/k norms) stay whole;
- ``lm_head`` is split over the vocabulary and its logits all-gathered (when the vocabulary divides);
  the embedding stays replicated.

The capture and the passes then see an ordinary model with fewer heads: every hatac op runs on the
rank's heads only (K, V, key codes and hash projections of its KV heads; no K or V is ever gathered),
and ``HataCache`` allocates just those heads. Each rank's hash projections are its KV heads' slice of the
artifact's ``(H_kv, d, r)`` tensors. All ranks compute identical logits, so ``generate()`` runs the same
on every rank.

Why not transformers' ``tp_plan="auto"`` itself: it turns parameters into DTensors and redistributes
activations in module hooks whose form changed between transformers releases (5.17 vs 5.23), so the
graph torch.export captures would differ by version and carry DTensor plumbing the passes and the CUDA
graph would have to understand. The plan is the same; only the sharding is done here, on plain tensors.
"""

from __future__ import annotations

import re

import torch
import torch.distributed._functional_collectives as funcol

import hatac.distributed.allreduce  # noqa: F401 - registers hatac::all_reduce
from hatac.distributed.groups import Group
from hatac.errors import HatacError

COLWISE, ROWWISE, REPLICATED = "colwise", "rowwise", "replicated_with_grad_allreduce"


def check_shardable(config, world: int) -> None:
    """One-line errors for models whose heads or MLP do not split evenly over ``world`` processes."""
    hq = int(config.num_attention_heads)
    hkv = int(getattr(config, "num_key_value_heads", None) or hq)
    if hkv % world:
        raise HatacError(f"tensor parallel over {world} processes needs the KV head count ({hkv}) to be a multiple of {world}")
    inter = getattr(config, "intermediate_size", None)
    if inter is not None and int(inter) % world:
        raise HatacError(f"tensor parallel over {world} processes needs the MLP width ({inter}) to be a multiple of {world}")


def _plan_key(name: str) -> str:
    return re.sub(r"\.\d+(?=\.|$)", ".*", name)


def _block(n: int, tp: Group) -> slice:
    size = n // tp.world
    return slice(tp.rank * size, (tp.rank + 1) * size)


def _all_reduce_hook(pg, with_bias):
    group_name = getattr(pg, "group_name", None)  # None only for shards made without a process group (tests)

    def hook(module, args, out):
        out = torch.ops.hatac.all_reduce(out, group_name)
        return out + module.tp_bias if with_bias else out

    return hook


def _all_gather_last_hook(pg):
    def hook(module, args, out):
        return funcol.all_gather_tensor(out.contiguous(), out.dim() - 1, pg)

    return hook


def _colwise(lin: torch.nn.Linear, tp: Group, name: str) -> None:
    if lin.out_features % tp.world:
        raise HatacError(f"tensor parallel: {name} has {lin.out_features} output features, not a multiple of {tp.world}")
    rows = _block(lin.out_features, tp)
    lin.weight = torch.nn.Parameter(lin.weight.data[rows].clone(), requires_grad=False)
    if lin.bias is not None:
        lin.bias = torch.nn.Parameter(lin.bias.data[rows].clone(), requires_grad=False)
    lin.out_features = lin.weight.shape[0]


def _rowwise(lin: torch.nn.Linear, tp: Group, name: str) -> None:
    if lin.in_features % tp.world:
        raise HatacError(f"tensor parallel: {name} has {lin.in_features} input features, not a multiple of {tp.world}")
    cols = _block(lin.in_features, tp)
    lin.weight = torch.nn.Parameter(lin.weight.data[:, cols].clone(), requires_grad=False)
    bias = None
    if lin.bias is not None:  # added once, after the sum over ranks
        lin.register_buffer("tp_bias", lin.bias.data.clone())
        lin.bias, bias = None, True
    lin.in_features = lin.weight.shape[1]
    lin.register_forward_hook(_all_reduce_hook(tp.pg, bool(bias)))


def shard(model: torch.nn.Module, tp: Group, vocab_parallel: bool = True) -> torch.nn.Module:
    """Keep this rank's shard of ``model``'s weights (in place) and add the collectives; returns ``model``."""
    config = model.config
    check_shardable(config, tp.world)
    plan = dict(getattr(config, "base_model_tp_plan", None) or {})
    if not plan:
        raise HatacError(f"{type(model).__name__} has no tensor-parallel plan (config.base_model_tp_plan); hatac cannot shard it")
    base = model.base_model
    todo = []
    for name, module in base.named_modules():  # check everything before changing anything
        style = plan.get(_plan_key(name))
        if style is None:
            continue
        if style == REPLICATED:
            continue
        if style not in (COLWISE, ROWWISE) or not isinstance(module, torch.nn.Linear):
            raise HatacError(f"tensor parallel: {name} of {type(model).__name__} is planned as {style!r} ({type(module).__name__}); hatac shards only colwise/rowwise linears")
        width = module.out_features if style == COLWISE else module.in_features
        if width % tp.world:
            raise HatacError(f"tensor parallel: {name} has {width} {'output' if style == COLWISE else 'input'} features, not a multiple of {tp.world}")
        todo.append((name, module, style))
    if not todo:
        raise HatacError(f"tensor parallel: the plan of {type(model).__name__} matches none of its modules")
    for name, module, style in todo:
        (_colwise if style == COLWISE else _rowwise)(module, tp, name)
    for module in base.modules():  # attention modules that keep head counts as attributes
        for attr in ("num_heads", "num_key_value_heads"):
            if isinstance(getattr(module, attr, None), int) and hasattr(module, "head_dim"):
                setattr(module, attr, getattr(module, attr) // tp.world)
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if vocab_parallel and isinstance(head, torch.nn.Linear) and head.bias is None and head.out_features % tp.world == 0:
        _colwise(head, tp, "lm_head")
        head.register_forward_hook(_all_gather_last_hook(tp.pg))
    model.hatac_tp = tp
    return model


def shard_hash_weights(weights: dict[int, torch.Tensor], tp: Group) -> dict[int, torch.Tensor]:
    """Each layer's (H_kv, d, r) projections cut to this rank's KV heads."""
    return {layer: w[_block(w.shape[0], tp)].contiguous() for layer, w in weights.items()}


def shard_layer_dicts(layers: list[dict], world: int) -> list[dict]:
    """Saved layer specs as one rank's shard sees them (heads divided by ``world``)."""
    return [{**s, "n_heads": s["n_heads"] // world, "n_kv_heads": s["n_kv_heads"] // world} for s in layers]
