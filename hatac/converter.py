"""``hatac.convert(model, HataConfig(...))``: the one entry point from a transformers model to a HATA model."""

from __future__ import annotations

from typing import Callable

import torch

from hatac.capture import CapturedGraph, capture
from hatac.config import HataConfig
from hatac.graphs import analyze, build_graphs
import hatac.calibration  # noqa: F401  (registers the hash methods)
from hatac.hashing import HashingInputs, hash_weights_for
from hatac.runtime.model import HataForCausalLM
from hatac.runtime.options import DecodeOptions
from hatac.passes.base import PassBase


def convert(
    model: torch.nn.Module,
    config: HataConfig | None = None,
    samples: list[list[int]] | None = None,
    passes: list[PassBase] = (),
    hash_weights: dict[int, torch.Tensor] | None = None,
    progress: Callable[[str], None] | None = None,
    captured: CapturedGraph | None = None,
    options: DecodeOptions | None = None,
) -> HataForCausalLM:
    """Capture ``model``, make its hash projections (or take ``hash_weights``), rewrite its attention.

    ``samples`` are calibration prompts as token-id lists (used by learned hashing). ``passes`` are user
    passes slotted into the pipeline by their ``position``. ``options``: how the model decodes
    (:class:`hatac.DecodeOptions`, default: the defaults); not part of the recipe, never saved.
    """
    config = config or HataConfig()
    model.eval()
    captured = captured or capture(model)
    observe_gm, specs, observed = analyze(captured, config, list(passes))
    summary: dict = {}
    if hash_weights is None:
        inputs = HashingInputs(observe_gm, observed, list(samples or []), next(model.parameters()).device, progress)
        hash_weights, summary = hash_weights_for(specs, config, inputs)
    graphs = build_graphs(captured, config, hash_weights, list(passes))
    return HataForCausalLM(model, graphs, config, hash_weights, manifest={"calibration": summary}, options=options)
