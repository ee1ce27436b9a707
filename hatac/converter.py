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
    """Capture ``model``, make its hash projections, rewrite its attention: a :class:`HataForCausalLM`.

    Args:
        model: a transformers causal LM (``AutoModelForCausalLM``), on the device and in the dtype to convert in.
        config: the recipe (:class:`hatac.HataConfig`; every field in docs/CONFIG.md). Default: ``HataConfig()``.
        samples: calibration prompts as token-id lists, for ``hash="learned"``
            (``hatac.data.calibration_samples(tokenizer)`` gives the bundled ones).
        passes: user passes (:class:`hatac.passes.PassBase`), slotted into the pipeline by their ``position``.
        hash_weights: ``{layer: (H_kv, head_dim, r) tensor}`` to use instead of making projections (how
            :func:`hatac.load` replays an artifact).
        progress: called with one line at a time while calibrating (e.g. ``print``).
        options: how the model decodes (:class:`hatac.DecodeOptions`; default: the defaults); not part of
            the recipe, never saved.
        captured: a graph already captured from ``model`` (:func:`hatac.capture.capture`), to skip capture.

    Raises :class:`hatac.HatacError` (one line) when the model or the recipe cannot be converted.
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
