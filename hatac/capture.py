"""Capture a Hugging Face causal LM's forward as one torch.fx graph.

Why torch.export (non-strict) of ``model(input_ids, position_ids, logits_to_keep, use_cache=False)``:
- it works on transformers 5 models of every architecture we test, with no per-model code;
  ``torch.fx.symbolic_trace`` does not, and ``torch.compile`` gives one graph per shape behind a
  compiled callable that a user's own ``torch.compile`` cannot nest;
- the graph keeps one ``aten.scaled_dot_product_attention`` per layer with the post-RoPE q, k, v as its
  inputs, tagged with the module path (``nn_module_stack``) it came from: exactly the sites to rewrite;
- with ``use_cache=False`` no cache object enters the graph: the rewrite adds the caches as explicit graph
  inputs instead, so the same graph runs eagerly, under ``torch.compile`` and in ``torch.export``.

Batch and sequence length are dynamic. The causal mask that the graph builds becomes dead once the
attention nodes are rewritten (hatac's ops take positions, not masks) and is removed.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass

import torch
import torch.fx as fx

from hatac.errors import HatacError


@dataclass
class CapturedGraph:
    """A model's forward as a flat-signature GraphModule: ``forward(input_ids, position_ids[, logits_to_keep])``.

    The module shares its parameters with ``model``.
    """

    graph_module: fx.GraphModule
    model: torch.nn.Module
    has_logits_to_keep: bool


def _example_inputs(model: torch.nn.Module, has_keep: bool, auto: bool = False):
    vocab = int(getattr(model.config, "vocab_size", 2) or 2)
    device = next(model.parameters()).device
    ids = torch.randint(0, vocab, (2, 8), device=device)
    pos = torch.arange(8, device=device).expand(2, 8).contiguous()
    kwargs = {"input_ids": ids, "position_ids": pos, "use_cache": False}
    # Named ranges first; ``auto`` lets export place the bounds itself, for torch versions whose solver
    # cannot prove a harmless guard over the named range (torch 2.11 with transformers 5.17:
    # ``min(64*seq, 128*seq) == 64*seq``).
    batch = torch.export.Dim.AUTO if auto else torch.export.Dim("batch", min=1, max=4096)
    seq = torch.export.Dim.AUTO if auto else torch.export.Dim("seq", min=2, max=1 << 20)
    dynamic = {"input_ids": {0: batch, 1: seq}, "position_ids": {0: batch, 1: seq}, "use_cache": None}
    if has_keep:
        kwargs["logits_to_keep"] = torch.tensor([6, 7], device=device)
        dynamic["logits_to_keep"] = {0: torch.export.Dim.AUTO if auto else torch.export.Dim("keep", min=1, max=1 << 20)}
    return kwargs, dynamic


def _flatten_signature(gm: fx.GraphModule, keep: tuple[str, ...]) -> None:
    """Drop the pytree codegen, the input guard and unused inputs: forward(*keep) -> logits."""
    graph = gm.graph
    for node in list(graph.nodes):
        if node.op == "call_module" and "guards" in str(node.target):
            graph.erase_node(node)
    graph._codegen = fx.graph.CodeGen()
    for node in list(graph.nodes):
        if node.op == "placeholder" and node.name not in keep:
            if node.users:
                raise HatacError(f"captured graph uses input {node.name!r}, which hatac does not feed")
            graph.erase_node(node)
    out = next(n for n in graph.nodes if n.op == "output")
    result = out.args[0]
    while isinstance(result, (tuple, list)):
        result = result[0]
    out.args = (result,)
    for name in list(gm._modules):
        if "guards" in name:
            delattr(gm, name)
    graph.lint()
    gm.recompile()


def _check_dynamic(ep, has_keep: bool) -> None:
    """Batch and sequence length (and the kept-logits count) must stay symbolic, or the graph would only
    run at the example's shape."""
    placeholders = {n.name: n for n in ep.graph.nodes if n.op == "placeholder"}
    for name, dims in (("input_ids", (0, 1)), ("position_ids", (0, 1)), *((("logits_to_keep", (0,)),) if has_keep else ())):
        node = placeholders.get(name)
        val = node.meta.get("val") if node is not None else None
        if val is None:
            continue
        for d in dims:
            if isinstance(val.shape[d], int):
                raise HatacError(f"torch.export specialized dimension {d} of {name} to {val.shape[d]}; hatac needs it dynamic")


def capture(model: torch.nn.Module) -> CapturedGraph:
    """Export ``model``'s forward with SDPA attention and return its flat graph."""
    config = model.config
    if getattr(config, "is_encoder_decoder", False):
        raise HatacError(f"{type(model).__name__} is an encoder-decoder model; hatac converts causal LMs")
    try:
        model.set_attn_implementation("sdpa")
    except (ValueError, AttributeError):
        # No SDPA path (e.g. soft-capped attention): capture the eager attention, so the pass that finds
        # attention sites can name the layer and node it cannot rewrite.
        model.set_attn_implementation("eager")
    has_keep = "logits_to_keep" in inspect.signature(model.forward).parameters
    was_training = model.training
    model.eval()
    try:
        ep = None
        for auto in (False, True):
            kwargs, dynamic = _example_inputs(model, has_keep, auto)
            try:
                with torch.no_grad():
                    ep = torch.export.export(model, (), kwargs, dynamic_shapes=dynamic, strict=False)
                break
            except Exception as exc:  # export errors are long; keep the first line
                if not auto and "Constraints violated" in str(exc):
                    continue
                first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
                raise HatacError(f"could not capture {type(model).__name__} with torch.export: {first}") from exc
    finally:
        model.train(was_training)
    _check_dynamic(ep, has_keep)
    gm = ep.module()
    keep = ("input_ids", "position_ids") + (("logits_to_keep",) if has_keep else ())
    _flatten_signature(gm, keep)
    return CapturedGraph(graph_module=gm, model=model, has_logits_to_keep=has_keep)
