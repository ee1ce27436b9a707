"""How hash projections are made, one handler per ``--hash`` method, looked up in a registry.

The handlers live with the code that makes the weights (``hatac.calibration`` registers ``random`` and
``learned`` when imported; :func:`hatac.convert` imports it). A handler takes the layer specs, the recipe and a :class:`HashingInputs` (the observe graph and the
calibration token ids, for methods that learn) and returns ``(weights, summary)``: one float32
``(H_kv, head_dim, r)`` tensor per hashed layer, and a JSON-able summary for the manifest.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import torch
import torch.fx as fx

from hatac.config import HataConfig
from hatac.errors import HatacError
from hatac.graphs import LayerSpec

Weights = dict[int, torch.Tensor]
HashHandler = Callable[[dict[int, LayerSpec], HataConfig, "HashingInputs"], tuple[Weights, dict]]
_HANDLERS: dict[str, HashHandler] = {}


@dataclass
class HashingInputs:
    observe_graph: fx.GraphModule | None = None
    observed_layers: list[int] = field(default_factory=list)
    samples: list[list[int]] = field(default_factory=list)
    device: torch.device | str = "cpu"
    progress: Callable[[str], None] | None = None


def register_hash_method(name: str):
    def deco(fn: HashHandler) -> HashHandler:
        _HANDLERS[name] = fn
        return fn

    return deco


def hash_weights_for(specs: dict[int, LayerSpec], config: HataConfig, inputs: HashingInputs) -> tuple[Weights, dict]:
    handler = _HANDLERS.get(config.hash)
    if handler is None:
        raise HatacError(f"no hash method {config.hash!r}; known: {', '.join(sorted(_HANDLERS))}")
    return handler(specs, config, inputs)
