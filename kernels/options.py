"""Kernel choices and launch tuning: frozen, typed options, one current value per process.

Each launch wrapper reads :func:`get` on the host when it launches (a CUDA graph keeps what was in effect
when it was captured). :func:`override` changes the current value for benches, tests and the decode step
(``DecodeOptions.kernels``) and restores it on exit; nothing else writes it. docs/CONFIG.md lists every field.

    from hatac.kernels import options
    with options.override(pdl=False, hamming_topk={"hint": False}):
        ...
"""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass, field

from hatac.errors import HatacError


_GROUP_NAMES: dict[type, str] = {}


def _group_name(cls) -> str:
    return _GROUP_NAMES.get(cls, cls.__name__)


def _choices(*values):
    return {"choices": values}


class _Checked:
    """Type-checks every field after ``__init__`` (bool is not an int here; an int is a float)."""

    def __post_init__(self):
        hints = typing.get_type_hints(type(self))
        for f in dataclasses.fields(self):
            value, kind = getattr(self, f.name), hints[f.name]
            where = f"{_group_name(type(self))}.{f.name}"
            args = typing.get_args(kind)
            if type(None) in args:
                if value is None:
                    continue
                kind = next(a for a in args if a is not type(None))
            ok = {
                bool: isinstance(value, bool),
                int: isinstance(value, int) and not isinstance(value, bool),
                float: isinstance(value, (int, float)) and not isinstance(value, bool),
                str: isinstance(value, str),
            }.get(kind, isinstance(value, kind) if isinstance(kind, type) else True)
            if not ok:
                raise HatacError(f"kernel option {where} must be {getattr(kind, '__name__', kind)}, got {value!r}")
            if kind is float:
                object.__setattr__(self, f.name, float(value))
            choices = f.metadata.get("choices")
            if choices and value not in choices:
                raise HatacError(f"kernel option {where} must be one of {', '.join(map(repr, choices))}, got {value!r}")
            if kind is int and f.metadata.get("min") is not None and value < f.metadata["min"]:
                raise HatacError(f"kernel option {where} must be at least {f.metadata['min']}, got {value!r}")


@dataclass(frozen=True)
class HammingTopkOptions(_Checked):
    """``hatac::hamming_topk`` (kernels/hamming_topk.py): the three-pass counting select."""

    score_block_t: int = field(default=512, metadata={"min": 1})  # launch 1 (scoring): slots a block
    score_warps: int = 4
    programs: int = 2048  # launch 1 aims at this many programs (rows x splits)
    max_splits: int = 64
    score_prefetch: bool = True  # load the next block of codes before scoring this one
    # Before waiting for the previous kernel, bulk-prefetch up to this many slots of the split's codes into L2
    # (Hopper, PDL; 0: off). The first blocks only: whole splits of a long cache do not fit in the L2 at once.
    score_l2_prefetch: int = field(default=1024, metadata={"min": 0})
    score_l2_ahead: int = 0  # and, in the loop, bulk-prefetch the block this many blocks ahead (0: no)
    # With the K/V caches passed in, the write pass prefetches the selected rows into L2 (prefetch.global.L2 a
    # 128-byte line) when they take at most kv_prefetch_l2 of it.
    kv_prefetch: bool = True
    kv_prefetch_l2: float = 0.7
    # Launches 2, 3; select_warps None: one warp a program when there are many rows, four when few rows must
    # fill the GPU from fewer programs (select_geometry).
    select_block_t: int = field(default=1024, metadata={"min": 1})
    select_warps: typing.Optional[int] = None
    select_programs: int = 2048
    select_max_splits: int = 64
    # With select_warps None, one-warp programs whose split spans at least this many blocks take blocks twice as
    # long and two warps instead (0: never); docs/PERFORMANCE.md has the measurements behind the rule.
    select_wide_blocks: int = 4
    # Write pass: load the first block of keys before working out the threshold when a split has at most this
    # many blocks (0: never).
    write_prefetch_blocks: int = 2
    hint: bool = True  # decode (one query row): keep each row's threshold bin between calls (selection_hint)
    # coarse bins the hint's window holds: 2 (the threshold's and its nearer neighbour) or 1 (the threshold's)
    hint_window: int = field(default=2, metadata=_choices(1, 2))
    # Rows of the per-slot key buffer start every multiple of this many slots, so the JIT sees a row stride
    # divisible by 16 and vectorizes the key stores and loads.
    key_row_align: int = field(default=64, metadata={"min": 1})
    score_maxnreg: typing.Optional[int] = None  # register caps (ptxas maxrregcount) for launch 1 and 2-3
    select_maxnreg: typing.Optional[int] = None
    split_round: str = field(default="up", metadata=_choices("up", "down"))  # split lengths to whole blocks
    interp_score_block_t: int = field(default=64, metadata={"min": 1})  # block sizes under the interpreter
    interp_select_block_t: int = field(default=128, metadata={"min": 1})


@dataclass(frozen=True)
class GatedLinearOptions(_Checked):
    """``hatac::linear_silu_mul``'s tiles: block_n rows of each half a program."""

    block_n: int = 32
    block_k: int = 128
    stages: int = 5
    warps: int = 4


@dataclass(frozen=True)
class LinearOptions(_Checked):
    """``hatac::linear`` (kernels/linear.py): the Triton GEMV for a few rows."""

    max_rows: int = 16  # more rows go to F.linear (cuBLAS)
    block_n: int = 32
    block_k: int = 256
    stages: int = 5
    warps: int = 4
    # Take the GEMV only when its programs spread evenly over the SMs: programs / SMs over its ceiling at least this.
    min_wave_fill: float = 0.9
    gated: GatedLinearOptions = GatedLinearOptions()


@dataclass(frozen=True)
class SparseAttentionOptions(_Checked):
    """``hatac::sparse_attention`` over selected slots (kernels/sparse_attention.py)."""

    block_n: int = 64
    warps: int = 4
    stages: int = 2
    programs: int = 528
    max_splits: int = 64
    maxnreg: typing.Optional[int] = None  # ptxas register cap


@dataclass(frozen=True)
class DenseAttentionOptions(_Checked):
    """``hatac::sparse_attention`` with no indices (dense decoding): few programs, long pipelined streams."""

    block_n: int = 128
    warps: int = 4
    stages: int = 3
    programs: int = 66
    max_splits: int = 64


@dataclass(frozen=True)
class KernelOptions(_Checked):
    """Every kernel choice, grouped by kernel."""

    pdl: bool = True  # programmatic dependent launch on GPUs that have it (Hopper and later)
    hamming_topk: HammingTopkOptions = HammingTopkOptions()
    linear: LinearOptions = LinearOptions()
    sparse_attention: SparseAttentionOptions = SparseAttentionOptions()
    dense_attention: DenseAttentionOptions = DenseAttentionOptions()

    def replace(self, **changes) -> "KernelOptions":
        """A copy with ``changes``: a field's new value, or for a group a dict of its fields to change."""
        return _replace(self, changes)


def _replace(obj, changes: dict):
    known = {f.name: f for f in dataclasses.fields(obj)}
    updates = {}
    for name, value in changes.items():
        if name not in known:
            raise HatacError(f"unknown kernel option {_group_name(type(obj))}.{name}: choose from {', '.join(known)}")
        current = getattr(obj, name)
        if dataclasses.is_dataclass(current) and isinstance(value, dict):
            value = _replace(current, value)
        updates[name] = value
    return dataclasses.replace(obj, **updates)


_GROUP_NAMES.update({
    KernelOptions: "kernels", HammingTopkOptions: "hamming_topk", LinearOptions: "linear", GatedLinearOptions: "linear.gated",
    SparseAttentionOptions: "sparse_attention", DenseAttentionOptions: "dense_attention",
})

_current = KernelOptions()


def get() -> KernelOptions:
    """The kernel options in effect now."""
    return _current


class override:
    """Make ``base`` (default: the current options) with ``changes`` the current kernel options now; as a
    context manager, restore the previous ones on exit (also on an exception). ``previous`` holds them.

    ``override(pdl=False)``, ``override(hamming_topk={"hint": False})``, ``override(KernelOptions(...))``."""

    def __init__(self, base: KernelOptions | None = None, **changes):
        global _current
        if base is not None and not isinstance(base, KernelOptions):
            raise HatacError(f"kernel options must be a KernelOptions, got {type(base).__name__}")
        new = (base or _current).replace(**changes) if changes else (base or _current)
        self.previous, _current = _current, new

    def __enter__(self) -> KernelOptions:
        return _current

    def __exit__(self, *exc) -> None:
        self.restore()

    def restore(self) -> None:
        global _current
        _current = self.previous
