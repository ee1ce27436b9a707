"""Build the graph variants of a converted model from one captured graph.

``observe`` finds the attention sites and exposes q/k for calibration; ``prefill`` and ``decode`` are
the two graphs the runtime runs. All three share the model's parameters.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
import torch.fx as fx

from hatac.capture import CapturedGraph
from hatac.config import HataConfig
from hatac.passes.base import DECODE, OBSERVE, PREFILL, PassBase, PassContext, PassManager
from hatac.passes.pipeline import build_pipeline


@dataclass(frozen=True)
class LayerSpec:
    """What the runtime and the artifact need to know of one attention layer."""

    layer: int
    module_path: str
    n_heads: int
    n_kv_heads: int
    head_dim: int
    hashed: bool
    rbits: int
    budget: float
    sink: int
    recent: int
    window: int

    def to_dict(self) -> dict:
        return dict(self.__dict__)


def _copy_graph_module(captured: CapturedGraph) -> fx.GraphModule:
    gm = captured.graph_module
    return fx.GraphModule(gm, copy.deepcopy(gm.graph), class_name=f"Hata{type(captured.model).__name__}")


def build_variant(
    captured: CapturedGraph,
    config: HataConfig,
    mode: str,
    hash_weights: dict[int, torch.Tensor] | None = None,
    user_passes: list[PassBase] = (),
) -> tuple[fx.GraphModule, PassContext]:
    """Run the pass pipeline on a fresh copy of the captured graph for one variant."""
    ctx = PassContext(config=config, model=captured.model, mode=mode, hash_weights=dict(hash_weights or {}))
    gm = _copy_graph_module(captured)
    ctx.inputs.update({n.name: n for n in gm.graph.nodes if n.op == "placeholder"})
    result = PassManager(build_pipeline(list(user_passes), fuse_encode=config.fuse_encode, fuse_linears=config.fuse_linears)).run(gm, ctx)
    return result.graph_module, ctx


def layer_specs(ctx: PassContext) -> dict[int, LayerSpec]:
    return {
        s.layer: LayerSpec(
            layer=s.layer,
            module_path=s.module_path,
            n_heads=s.n_heads,
            n_kv_heads=s.n_kv_heads,
            head_dim=s.head_dim,
            hashed=s.hashed,
            rbits=s.rbits,
            budget=s.budget,
            sink=s.sink,
            recent=s.recent,
            window=s.window,
        )
        for s in ctx.sites.values()
    }


@dataclass
class HataGraphs:
    """The runnable variants and the per-layer specs they were built with."""

    prefill: fx.GraphModule
    decode: fx.GraphModule
    layers: dict[int, LayerSpec]
    has_logits_to_keep: bool
    captured: fx.GraphModule


def build_graphs(
    captured: CapturedGraph,
    config: HataConfig,
    hash_weights: dict[int, torch.Tensor],
    user_passes: list[PassBase] = (),
) -> HataGraphs:
    prefill, _ = build_variant(captured, config, PREFILL, hash_weights, user_passes)
    decode, ctx = build_variant(captured, config, DECODE, hash_weights, user_passes)
    return HataGraphs(prefill=prefill, decode=decode, layers=layer_specs(ctx), has_logits_to_keep=captured.has_logits_to_keep, captured=captured.graph_module)


def analyze(captured: CapturedGraph, config: HataConfig, user_passes: list[PassBase] = ()) -> tuple[fx.GraphModule, dict[int, LayerSpec], list[int]]:
    """The observe variant, the layer specs and the order of its extra (q, k) outputs."""
    gm, ctx = build_variant(captured, config, OBSERVE, None, user_passes)
    return gm, layer_specs(ctx), list(ctx.meta.get("observed_layers", []))
