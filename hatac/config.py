"""The recipe: every setting that turns a model into a HATA model.

A small versioned dataclass, serialized into the artifact's manifest, and replayable on a fresh copy of
the source model (``hatac.convert(model, HataConfig.from_dict(manifest["recipe"]))``).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from hatac.errors import HatacError, SettingError

HASH_METHODS = ("random", "learned")


@dataclass
class HataConfig:
    """Settings of a conversion. ``budget`` < 1 is a fraction of the current context, >= 1 a token count."""

    rbits: int = 128
    budget: float = 512.0
    dense_layers: int = 2
    sink: int = 0
    recent: int = 0
    hash: str = "learned"
    seed: int = 0
    # Calibration work for learned hashing: auto (full on CUDA, fast elsewhere), fast or full.
    calib_effort: str = "auto"
    # Layers kept dense beyond the first ``dense_layers`` (by index), e.g. from a user pass.
    extra_dense: tuple[int, ...] = ()
    # Per-layer budget overrides {layer index: budget}.
    layer_budgets: dict[int, float] = field(default_factory=dict)
    # Sliding-window layers (Gemma 2/3's local layers, Mistral's window) stay dense unless this is on. Their
    # window already bounds what a decode step reads (a fixed count, not a share of the context), so
    # hashing them saves at most window - budget reads a step (nothing at budget >= window: the
    # selection is then the whole window) while adding the key-code cache, the encode work and top-k
    # error; the long-context cost is in the global layers. When on, the selection honours the window
    # (hamming_topk and cache_attention take it), so it is still correct, only rarely worth it.
    hash_sliding: bool = False
    # Decode graphs encode the query and the new key in one op that also writes the key's code, key and
    # value rows (hatac.passes.fusion.encode_write.FuseEncodeStep, FuseCacheWrites): one kernel a hashed layer
    # instead of five. Same values.
    fuse_encode: bool = True
    # Linears that share an input (q/k/v, gate/up) run as one GEMM on their stacked weight
    # (hatac.passes.fusion.sibling_linears.FuseSiblingLinears): fewer, larger GEMMs at decode. Same math; the
    # stacked GEMM may round differently in the last bits.
    fuse_linears: bool = True
    version: int = 1

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        if not isinstance(self.rbits, int) or self.rbits < 32 or self.rbits > 1024 or self.rbits % 32:
            raise SettingError("rbits", f"must be a multiple of 32 between 32 and 1024, got {self.rbits}")
        for name, b in [("budget", self.budget), *((f"layer_budgets[{i}]", v) for i, v in self.layer_budgets.items())]:
            if not b > 0 or (b >= 1 and float(b) != int(b)):
                raise SettingError(name, f"must be a fraction in (0, 1) or a whole token count >= 1, got {b}")
        if self.dense_layers < 0:
            raise SettingError("dense_layers", f"must be >= 0, got {self.dense_layers}")
        for name in ("sink", "recent"):
            if getattr(self, name) < 0:
                raise SettingError(name, f"must be >= 0, got {getattr(self, name)}")
        if self.calib_effort not in ("auto", "fast", "full"):
            raise SettingError("calib_effort", f"must be auto, fast or full, got {self.calib_effort!r}")
        if self.hash not in HASH_METHODS:
            raise SettingError("hash", f"must be one of {', '.join(HASH_METHODS)}, got {self.hash!r}")

    def is_hashed(self, layer: int, window: int = 0) -> bool:
        """Whether ``layer`` (with sliding ``window``, 0 = global attention) is hashed."""
        if window and not self.hash_sliding:
            return False
        return layer >= self.dense_layers and layer not in self.extra_dense

    def budget_of(self, layer: int) -> float:
        return float(self.layer_budgets.get(layer, self.budget))

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["extra_dense"] = list(self.extra_dense)
        d["layer_budgets"] = {str(k): v for k, v in self.layer_budgets.items()}
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "HataConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise HatacError(f"recipe has unknown settings: {', '.join(sorted(unknown))}")
        d = dict(d)
        # Recipes written before hash_sliding existed hashed sliding-window layers like any other: replay
        # them as they were converted.
        d.setdefault("hash_sliding", True)
        d["extra_dense"] = tuple(int(i) for i in d.get("extra_dense", ()))
        d["layer_budgets"] = {int(k): float(v) for k, v in d.get("layer_budgets", {}).items()}
        return cls(**d)
