"""A user pass: keep chosen attention layers dense (exact attention, no hashing), e.g. the last one.

    hatac convert MODEL -o OUT --pass examples/passes/keep_layers_dense.py:KeepLayersDense
    hatac convert MODEL -o OUT --pass "examples/passes/keep_layers_dense.py:KeepLayersDense?layers=2,-1"

The layers come from the ``layers`` argument (indices joined by commas; negative ones count from the last
layer), else ``-1`` (the last layer). Runs before
the rewrite, so the chosen layers get no hash weights, no key-code cache and ``cache_attention`` in the
decode graph; the manifest stores the layers (:meth:`spec_args`) so ``hatac.load`` replays them.
"""

from __future__ import annotations

from hatac import HatacError
from hatac.passes import PassBase, PassResult


def parse_layers(text: str) -> tuple[int, ...]:
    try:
        layers = tuple(int(p) for p in text.split(",") if p.strip())
    except ValueError:
        raise HatacError(f"layers must be integers joined by commas, got {text!r}") from None
    if not layers:
        raise HatacError("no layers given")
    return layers


class KeepLayersDense(PassBase):
    """Mark the chosen layers dense (``site.hashed = False``)."""

    position = "before_rewrite"

    def __init__(self, layers: str | list[int] | tuple[int, ...] | None = None):
        if layers is None:
            layers = "-1"
        self.layers = parse_layers(layers) if isinstance(layers, str) else tuple(int(i) for i in layers)

    def call(self, gm, ctx):
        order = sorted(ctx.sites)
        for layer in self.layers:
            index = order[layer] if -len(order) <= layer < 0 else layer
            if index not in ctx.sites:
                raise HatacError(f"layer {layer} is not an attention layer of this model (layers {order[0]}..{order[-1]})")
            ctx.sites[index].hashed = False
        return PassResult(gm, False)

    def spec_args(self) -> dict[str, str]:
        return {"layers": ",".join(str(i) for i in self.layers)}
