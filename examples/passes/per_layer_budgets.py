"""A user pass: per-layer top-k budgets from a JSON file ``{"layer": budget, ...}``.

    hatac convert MODEL -o OUT --pass examples/passes/per_layer_budgets.py:PerLayerBudgets
    hatac convert MODEL -o OUT --pass "examples/passes/per_layer_budgets.py:PerLayerBudgets?path=budgets.json"
    hatac convert MODEL -o OUT --pass "examples/passes/per_layer_budgets.py:PerLayerBudgets?budgets=2:0.25,-1:64"

Where the budgets come from, first found wins: the ``budgets`` argument (``layer:budget`` pairs joined
by commas), the ``path`` argument, then ``layer_budgets.json`` next to this file. Layers are indices; negative ones count from the last layer.
A budget is a fraction of the context (< 1) or a token count (>= 1), as ``--budget``.

The budgets are read once, when the pass is made, and stored inline in the artifact's manifest
(:meth:`spec_args`), so ``hatac.load`` replays the same budgets whether or not the file is still there.
Layers the recipe keeps dense keep their settings: a budget applies only when a layer is hashed.
"""

from __future__ import annotations

import json
from pathlib import Path

from hatac import HatacError
from hatac.passes import PassBase, PassResult

DEFAULT_FILE = Path(__file__).with_name("layer_budgets.json")


def _check_budget(layer, budget) -> float:
    try:
        b = float(budget)
    except (TypeError, ValueError):
        raise HatacError(f"budget of layer {layer} is not a number: {budget!r}") from None
    if not b > 0 or (b >= 1 and b != int(b)):
        raise HatacError(f"budget of layer {layer} must be a fraction in (0, 1) or a whole token count >= 1, got {budget!r}")
    return b


def _check_layer(layer) -> int:
    try:
        return int(layer)
    except (TypeError, ValueError):
        raise HatacError(f"layer {layer!r} is not an integer index") from None


def parse_budgets(text: str) -> dict[int, float]:
    """``"2:0.25,-1:64"`` -> {2: 0.25, -1: 64.0}."""
    out = {}
    for item in filter(None, (p.strip() for p in text.split(","))):
        layer, sep, budget = item.partition(":")
        if not sep:
            raise HatacError(f"budgets take layer:budget pairs joined by commas, got {item!r}")
        out[_check_layer(layer)] = _check_budget(layer, budget)
    return out


def read_budgets(path: str | Path) -> dict[int, float]:
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise HatacError(f"budgets file {path} does not exist") from None
    except (OSError, json.JSONDecodeError) as exc:
        raise HatacError(f"cannot read budgets file {path}: {exc}") from None
    if not isinstance(data, dict):
        raise HatacError(f"budgets file {path} must hold a JSON object {{\"layer\": budget}}")
    return {_check_layer(k): _check_budget(k, v) for k, v in data.items()}


class PerLayerBudgets(PassBase):
    """Set ``site.budget`` per layer, after the recipe's policy and before the rewrite."""

    position = "before_rewrite"

    def __init__(self, path: str | Path | None = None, budgets: str | dict | None = None):
        if budgets is not None:
            self.budgets = parse_budgets(budgets) if isinstance(budgets, str) else {_check_layer(k): _check_budget(k, v) for k, v in budgets.items()}
            self.source = "arguments"
        else:
            path = path or DEFAULT_FILE
            self.budgets = read_budgets(path)
            self.source = str(path)

    def call(self, gm, ctx):
        layers = sorted(ctx.sites)
        for layer, budget in self.budgets.items():
            index = layers[layer] if -len(layers) <= layer < 0 else layer
            if index not in ctx.sites:
                raise HatacError(f"layer {layer} (from {self.source}) is not an attention layer of this model (layers {layers[0]}..{layers[-1]})")
            ctx.sites[index].budget = budget
        return PassResult(gm, False)

    def spec_args(self) -> dict[str, str]:
        return {"budgets": ",".join(f"{layer}:{budget:g}" for layer, budget in sorted(self.budgets.items()))}
