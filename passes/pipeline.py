"""The ordered list of passes a conversion runs, and where user passes go in it.

Order: find sites -> see through GQA repeats -> per-layer policy -> [user passes, position
"before_rewrite": change policies] -> add cache inputs -> rewrite -> [user passes, position
"after_rewrite": rework hatac ops] -> dead-code elimination (always last).
"""

from __future__ import annotations

import importlib

from hatac.errors import HatacError
from hatac.passes.base import PassBase
from hatac.passes.cache_inputs import AddCacheInputs
from hatac.passes.cleanup import EliminateDeadCode
from hatac.passes.find_attention import FindAttentionSites
from hatac.passes.layer_policy import AssignLayerPolicy
from hatac.passes.observe import ExposeQueriesKeys
from hatac.passes.repeat_kv import StripRepeatKV
from hatac.passes.rewrite_attention import RewriteDenseAttention, RewriteHashedAttention

BEFORE_REWRITE = "before_rewrite"
AFTER_REWRITE = "after_rewrite"
POSITIONS = (BEFORE_REWRITE, AFTER_REWRITE)


def build_pipeline(user_passes: list[PassBase] = ()) -> list[PassBase]:
    """hatac's passes with ``user_passes`` slotted in by their ``position`` attribute (default before_rewrite)."""
    before, after = [], []
    for p in user_passes:
        position = getattr(p, "position", BEFORE_REWRITE)
        if position not in POSITIONS:
            raise HatacError(f"pass {p.name}: position must be one of {', '.join(POSITIONS)}, got {position!r}")
        (before if position == BEFORE_REWRITE else after).append(p)
    return [
        FindAttentionSites(),
        StripRepeatKV(),
        AssignLayerPolicy(),
        *before,
        AddCacheInputs(),
        RewriteDenseAttention(),
        RewriteHashedAttention(),
        ExposeQueriesKeys(),
        *after,
        EliminateDeadCode(),
    ]


def load_pass(spec: str) -> PassBase:
    """Instantiate a user pass from ``module:Class`` (or ``path/to/file.py:Class``), with no arguments."""
    if ":" not in spec:
        raise HatacError(f"--pass takes module:Class, got {spec!r}")
    mod_name, _, cls_name = spec.rpartition(":")
    try:
        if mod_name.endswith(".py"):
            import importlib.util

            loader_spec = importlib.util.spec_from_file_location(f"hatac_user_pass_{abs(hash(mod_name))}", mod_name)
            if loader_spec is None or loader_spec.loader is None:
                raise ImportError(f"cannot load {mod_name}")
            module = importlib.util.module_from_spec(loader_spec)
            loader_spec.loader.exec_module(module)
        else:
            module = importlib.import_module(mod_name)
    except Exception as exc:
        raise HatacError(f"cannot import pass module {mod_name!r}: {type(exc).__name__}: {exc}") from None
    cls = getattr(module, cls_name, None)
    if cls is None:
        raise HatacError(f"module {mod_name!r} has no {cls_name!r}")
    obj = cls() if isinstance(cls, type) else cls
    if not isinstance(obj, PassBase):
        raise HatacError(f"{spec} is not a hatac pass (subclass hatac.passes.PassBase)")
    return obj
