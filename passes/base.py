"""The pass API: small classes over a captured graph, run in order by a manager.

Modelled on ``torch.fx.passes.infra`` (``PassBase.call(gm) -> PassResult(graph_module, modified)``) and
vLLM's compile passes (one small class per job, a manager that orders them and always cleans up last).
A hatac pass also gets a :class:`PassContext`: the recipe, the model's config, the graph variant being
built and the attention sites found so far.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.fx as fx

from hatac.config import HataConfig
from hatac.errors import HatacError

# Graph variants a conversion builds from one captured graph.
PREFILL = "prefill"  # dense attention over the cache; keys of hashed layers are encoded into the code cache
DECODE = "decode"  # hashed layers select top-k keys by Hamming distance and attend to those only
OBSERVE = "observe"  # the original attention, with post-RoPE q and k of each site exposed (calibration)
MODES = (PREFILL, DECODE, OBSERVE)


@dataclass
class AttentionSite:
    """One attention node of the captured graph and what the passes decided about it."""

    layer: int
    module_path: str
    node: fx.Node
    q: fx.Node
    k: fx.Node
    v: fx.Node
    n_heads: int
    n_kv_heads: int
    head_dim: int
    scale: float
    window: int = 0
    hashed: bool = True
    budget: float = 0.0
    sink: int = 0
    recent: int = 0
    rbits: int = 128


@dataclass
class PassContext:
    """What passes share: the recipe, the model, the variant being built and the sites found."""

    config: HataConfig
    model: torch.nn.Module
    mode: str = DECODE
    sites: dict[int, AttentionSite] = field(default_factory=dict)
    hash_weights: dict[int, torch.Tensor] = field(default_factory=dict)
    inputs: dict[str, fx.Node] = field(default_factory=dict)
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def model_config(self):
        return self.model.config


@dataclass
class PassResult:
    graph_module: fx.GraphModule
    modified: bool


class PassError(HatacError):
    """A pass raised or left an invalid graph; the message names the pass."""


class PassBase:
    """Subclass and implement :meth:`call`. ``modes`` limits the graph variants the pass runs on."""

    modes: tuple[str, ...] = MODES

    @property
    def name(self) -> str:
        return type(self).__name__

    def requires(self, gm: fx.GraphModule, ctx: PassContext) -> None:
        """Check preconditions; raise to refuse."""

    def call(self, gm: fx.GraphModule, ctx: PassContext) -> PassResult:
        raise NotImplementedError

    def ensures(self, gm: fx.GraphModule, ctx: PassContext) -> None:
        """Check postconditions; raise when the pass did not do its job."""

    def spec_args(self) -> dict[str, str] | None:
        """Arguments that rebuild this pass exactly, for the artifact's manifest (``module:Class?k=v``).

        A pass that reads something outside the artifact (a file, an environment variable) returns what
        it read here, so ``hatac.load`` replays it without that file. None (the default) stores the spec
        as the user wrote it."""
        return None

    def __call__(self, gm: fx.GraphModule, ctx: PassContext) -> PassResult:
        self.requires(gm, ctx)
        result = self.call(gm, ctx)
        self.ensures(result.graph_module, ctx)
        return result


class NodeRewritePass(PassBase):
    """A pass that offers each node of the graph, once and in order, to :meth:`rewrite`, which replaces what
    it matches there (only that node and nodes before it) and says whether it changed the graph; the graph is
    linted and recompiled once at the end when anything changed. The runtime decode passes are of this kind."""

    def rewrite(self, gm: fx.GraphModule, node: fx.Node) -> bool:
        raise NotImplementedError

    def call(self, gm: fx.GraphModule, ctx: PassContext | None = None) -> PassResult:
        import hatac.ops  # noqa: F401  (defines the hatac ops a rewrite inserts)

        modified = False
        for node in list(gm.graph.nodes):
            modified |= self.rewrite(gm, node)
        if modified:
            gm.graph.lint()
            gm.recompile()
        return PassResult(gm, modified)


def _first_line(exc: BaseException, limit: int = 300) -> str:
    """An exception's first line, cut to ``limit`` characters (fx errors append a whole graph dump)."""
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _check_graph(gm: fx.GraphModule) -> None:
    gm.graph.lint()
    gm.recompile()


class PassManager:
    """Runs passes in order, then lints and recompiles once. On a broken graph it names the culprit."""

    def __init__(self, passes: list[PassBase]):
        self.passes = list(passes)

    def run(self, gm: fx.GraphModule, ctx: PassContext) -> PassResult:
        snapshot = copy.deepcopy(gm.graph)
        modified = False
        for p in self.passes:
            if ctx.mode not in p.modes:
                continue
            try:
                result = p(gm, ctx)
            except HatacError as exc:
                if isinstance(exc, PassError):
                    raise
                # hatac's own passes speak for themselves; a user pass is named, so its errors are traceable
                builtin = type(p).__module__.startswith("hatac.passes.")
                raise PassError(str(exc) if builtin else f"pass {p.name}: {exc}") from exc
            except Exception as exc:
                raise PassError(f"pass {p.name} failed: {type(exc).__name__}: {_first_line(exc)}") from exc
            if not isinstance(result, PassResult):
                raise PassError(f"pass {p.name} returned {type(result).__name__}, not PassResult")
            gm = result.graph_module
            modified |= result.modified
            try:  # lint after every pass (cheap), so a broken graph is blamed on the pass that broke it
                gm.graph.lint()
            except Exception as exc:
                raise PassError(f"pass {p.name} left an invalid graph: {type(exc).__name__}: {_first_line(exc)}") from exc
        try:
            _check_graph(gm)
        except Exception as exc:
            culprit = self._find_culprit(gm, snapshot, ctx)
            raise PassError(f"pass {culprit} left an invalid graph: {type(exc).__name__}: {_first_line(exc)}") from exc
        return PassResult(gm, modified)

    def _find_culprit(self, gm: fx.GraphModule, snapshot: fx.Graph, ctx: PassContext) -> str:
        """Replay the passes on the snapshot, checking after each, to name the one that broke the graph."""
        replay = fx.GraphModule(gm, snapshot)
        probe = copy.copy(ctx)
        probe.sites, probe.inputs, probe.meta = {}, {}, dict(ctx.meta)
        for p in self.passes:
            if ctx.mode not in p.modes:
                continue
            try:
                replay = p(replay, probe).graph_module
                _check_graph(replay)
            except Exception:
                return p.name
        return "(unknown)"
