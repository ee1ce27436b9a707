"""What every exporter shares: the graphs of a converted model, example inputs and dynamic shapes for
them, each node's layer and shape, and atomic writes."""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.fx as fx

from hatac.errors import HatacError
from hatac.export.op_counts import layer_of, op_label
from hatac.ops import op_name
from hatac.passes.rewrite.cache_inputs import TOPK_WIDTH, WRITE_POS

DECODE, PREFILL = "decode", "prefill"
VARIANTS = (DECODE, PREFILL)


@dataclass(frozen=True)
class ExampleSizes:
    """The sizes example inputs are made with. Batch, prefill length, kept logits and cache length are
    exported as dynamic dimensions, so they only need to be distinct and > 1 (torch.export specializes
    a dimension whose example is 0 or 1); the decode step is one token, a static dimension."""

    batch: int = 2
    prefill_len: int = 8
    decode_past: int = 9
    keep: int = 3
    capacity: int = 24

    def seq(self, variant: str) -> int:
        return 1 if variant == DECODE else self.prefill_len

    def past(self, variant: str) -> int:
        return self.decode_past if variant == DECODE else 0


SIZES = ExampleSizes()


def graph_of(model, variant: str) -> fx.GraphModule:
    if variant not in VARIANTS:
        raise HatacError(f"graph must be one of {', '.join(VARIANTS)}, got {variant!r}")
    return model.decode_graph if variant == DECODE else model.prefill_graph


def input_names(gm: fx.GraphModule) -> list[str]:
    return [n.name for n in gm.graph.nodes if n.op == "placeholder"]


def _cache_kind(name: str) -> tuple[str, int] | None:
    for prefix in ("k_cache_", "v_cache_", "key_codes_"):
        if name.startswith(prefix) and name[len(prefix):].isdigit():
            return prefix[:-1], int(name[len(prefix):])
    return None


def example_inputs(model, variant: str, sizes: ExampleSizes = SIZES, seed: int = 0) -> dict[str, object]:
    """Inputs for one step of ``variant``, keyed by graph input name, in the graph's order.

    Caches hold random keys, values and codes in the first ``past`` slots (zeros after), positions and
    write slots continue each row from ``past``, and ``topk_width`` is what the runtime would pass.
    """
    gm = graph_of(model, variant)
    g = torch.Generator().manual_seed(seed)
    device = next(model.parameters()).device
    dtype = model.hf_model.dtype
    b, s, past, t = sizes.batch, sizes.seq(variant), sizes.past(variant), sizes.capacity
    if past + s > t:
        raise HatacError(f"example cache of {t} slots cannot hold {past} + {s} tokens")
    vocab = int(getattr(model.config, "vocab_size", 2) or 2)
    pos = (past + torch.arange(s)).expand(b, s).contiguous()
    keep = min(sizes.keep, s)
    out: dict[str, object] = {}
    for name in input_names(gm):
        kind = _cache_kind(name)
        if name == "input_ids":
            v = torch.randint(0, vocab, (b, s), generator=g)
        elif name in ("position_ids", WRITE_POS):
            v = pos.clone()
        elif name == "logits_to_keep":
            v = torch.arange(s - keep, s)
        elif name == TOPK_WIDTH:
            v = model.topk_width(past + s)
        elif kind is not None:
            what, layer = kind
            spec = model.layers[layer]
            if what == "key_codes":
                v = torch.zeros(b, spec.n_kv_heads, t, spec.rbits // 32, dtype=torch.int32)
                v[:, :, :past] = torch.randint(-(2**31), 2**31 - 1, (b, spec.n_kv_heads, past, spec.rbits // 32), generator=g, dtype=torch.int64).to(torch.int32)
            else:
                v = torch.zeros(b, spec.n_kv_heads, t, spec.head_dim)
                v[:, :, :past] = torch.randn(b, spec.n_kv_heads, past, spec.head_dim, generator=g)
                v = v.to(dtype)
        else:
            raise HatacError(f"the {variant} graph has an input {name!r} hatac cannot make an example of (added by a user pass?)")
        out[name] = v.to(device) if isinstance(v, torch.Tensor) else v
    return out


def clone_inputs(inputs: dict[str, object]) -> dict[str, object]:
    return {k: v.clone() if isinstance(v, torch.Tensor) else v for k, v in inputs.items()}


def dynamic_shapes(gm: fx.GraphModule, variant: str) -> tuple:
    """torch.export dynamic shapes, in input order: batch everywhere, chunk length and kept logits in
    prefill, cache length on every cache, ``topk_width`` a symbolic int."""
    Dim = torch.export.Dim
    batch = Dim("batch", min=1, max=1 << 16)
    seq = Dim("seq", min=2, max=1 << 20)
    keep = Dim("keep", min=1, max=1 << 20)
    cache = Dim("cache_len", min=2, max=1 << 22)
    out = []
    for name in input_names(gm):
        if name in ("input_ids", "position_ids", WRITE_POS):
            out.append({0: batch} if variant == DECODE else {0: batch, 1: seq})
        elif name == "logits_to_keep":
            out.append(None if variant == DECODE else {0: keep})
        elif name == TOPK_WIDTH:
            out.append(Dim.DYNAMIC)
        elif _cache_kind(name) is not None:
            out.append({0: batch, 2: cache})
        else:
            out.append(None)
    return tuple(out)


# -- nodes ------------------------------------------------------------------------------------------

def layer_paths(model) -> dict[str, int]:
    """The module path of each decoder layer (the attention module's parent) -> layer index."""
    return {s.module_path.rsplit(".", 1)[0]: s.layer for s in model.layers.values()}


def node_layer(node: fx.Node, paths: dict[str, int]) -> int | None:
    """The layer a node belongs to: by the module it was traced under, by parameter name for get_attr
    nodes, or by the ``hatac_layer`` tag the rewrite puts on its nodes."""
    if node.op == "get_attr":
        target = str(node.target)
        for prefix, layer in paths.items():
            if target.startswith(prefix + "."):
                return layer
        return node.meta.get("hatac_layer")
    if node.op in ("placeholder", "output"):
        return None
    return layer_of(node, paths)


def hatac_op(node: fx.Node) -> str | None:
    """The hatac op a node calls, by short name (``hamming_topk``), else None."""
    return op_name(node.target) if node.op == "call_function" else None


def target_label(node: fx.Node) -> str:
    if node.op == "call_function":
        name = hatac_op(node)
        return f"hatac.{name}" if name else (op_label(node) or str(node.target))
    return str(node.target)


def describe(value) -> str:
    if isinstance(value, torch.Tensor):
        dims = ", ".join(str(d) for d in value.shape)
        return f"{str(value.dtype).replace('torch.', '')}[{dims}]"
    if isinstance(value, (tuple, list)):
        return "(" + ", ".join(describe(v) for v in value) + ")"
    if isinstance(value, (int, float, bool, torch.SymInt)):
        return type(value).__name__
    return ""


def node_shapes(gm: fx.GraphModule, inputs: dict[str, object]) -> dict[str, str]:
    """``dtype[shape]`` of every node's value for ``inputs``, computed with fake tensors (no real compute,
    the inputs untouched). Empty if the graph cannot run on fake tensors."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    shapes: dict[str, str] = {}

    class _Record(fx.Interpreter):
        def run_node(self, n):
            result = super().run_node(n)
            shapes[n.name] = describe(result)
            return result

    mode = FakeTensorMode(allow_non_fake_inputs=True)
    try:
        with mode:
            args = [mode.from_tensor(v) if isinstance(v, torch.Tensor) else v for v in inputs.values()]
            _Record(gm).run(*args)
    except Exception:  # shapes are a courtesy: an exotic user op without a fake impl must not stop an export
        return {}
    return shapes


def shapes_for(model, variant: str) -> dict[str, str]:
    """:func:`node_shapes` of ``variant`` for the example inputs; empty when the graph has an input
    hatac cannot make an example of."""
    try:
        inputs = example_inputs(model, variant)
    except HatacError:
        return {}
    return node_shapes(graph_of(model, variant), inputs)


def op_counts(nodes) -> Counter:
    return Counter(target_label(n) for n in nodes if n.op == "call_function")


# -- writing ----------------------------------------------------------------------------------------

@contextlib.contextmanager
def atomic_file(path: Path, overwrite: bool = False):
    """Yield a temporary sibling of ``path``; on success it is renamed onto ``path``."""
    path = Path(path)
    if path.is_dir():
        raise HatacError(f"output {path} is a directory; this format writes one file")
    if path.exists() and not overwrite:
        raise HatacError(f"output {path} exists (pass --overwrite to replace it)")
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.partial-", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


@contextlib.contextmanager
def atomic_dir(path: Path, overwrite: bool = False):
    """A temporary sibling folder renamed onto ``path`` when complete (:func:`hatac.artifact.store.atomic_dir`),
    with the permissions a plain ``mkdir`` would give it."""
    from hatac.artifact.store import atomic_dir as _atomic_dir

    with _atomic_dir(Path(path), overwrite) as tmp:
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o777 & ~umask)
        yield tmp
