"""The ordered list of passes a conversion runs, and where user passes go in it.

Order: find sites -> see through GQA repeats -> per-layer policy -> [user passes, position
"before_rewrite": change policies] -> add cache inputs -> rewrite -> [user passes, position
"after_rewrite": rework hatac ops] -> fold cache writes into the encode -> stack sibling linears ->
dead-code elimination (always last).
"""

from __future__ import annotations

import importlib
import importlib.util
from pathlib import Path
from urllib.parse import parse_qsl, urlencode

from hatac.errors import HatacError
from hatac.passes.base import PassBase
from hatac.passes.rewrite.cache_inputs import AddCacheInputs
from hatac.passes.cleanup import EliminateDeadCode
from hatac.passes.rewrite.find_attention import FindAttentionSites
from hatac.passes.fusion.encode_write import FuseCacheWrites, FuseEncodeStep
from hatac.passes.rewrite.layer_policy import AssignLayerPolicy
from hatac.passes.rewrite.observe import ExposeQueriesKeys
from hatac.passes.rewrite.repeat_kv import StripRepeatKV
from hatac.passes.rewrite.rewrite_attention import RewriteDenseAttention, RewriteHashedAttention
from hatac.passes.fusion.sibling_linears import FuseSiblingLinears

BEFORE_REWRITE = "before_rewrite"
AFTER_REWRITE = "after_rewrite"
POSITIONS = (BEFORE_REWRITE, AFTER_REWRITE)


def build_pipeline(user_passes: list[PassBase] = (), fuse_encode: bool = False, fuse_linears: bool = False) -> list[PassBase]:
    """hatac's passes with ``user_passes`` slotted in by their ``position`` attribute (default before_rewrite).

    ``fuse_encode`` (the recipe's setting) adds the built-in FuseEncodeStep fusion ahead of user passes
    placed after the rewrite and FuseCacheWrites after them (user passes see the separate cache writes);
    ``fuse_linears`` adds FuseSiblingLinears after them (user passes see the model's own projections)."""
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
        *([FuseEncodeStep()] if fuse_encode else []),
        *after,
        *([FuseCacheWrites()] if fuse_encode else []),
        *([FuseSiblingLinears()] if fuse_linears else []),
        EliminateDeadCode(),
    ]


def split_spec(spec: str) -> tuple[str, str, dict[str, str]]:
    """``module:Class?key=value&key2=value2`` -> (module or file.py, Class, {key: value})."""
    base, sep, query = spec.partition("?")
    if ":" not in base:
        raise HatacError(f"--pass takes module:Class (or file.py:Class, optionally ?key=value&...), got {spec!r}")
    mod_name, _, cls_name = base.rpartition(":")
    if not mod_name or not cls_name:
        raise HatacError(f"--pass takes module:Class, got {spec!r}")
    kwargs: dict[str, str] = {}
    if sep:
        try:
            pairs = parse_qsl(query, keep_blank_values=True, strict_parsing=True)
        except ValueError:
            raise HatacError(f"pass arguments in {spec!r} are not key=value pairs joined by '&'") from None
        for key, value in pairs:
            if not key.isidentifier():
                raise HatacError(f"pass argument {key!r} in {spec!r} is not a valid name")
            kwargs[key] = value
    return mod_name, cls_name, kwargs


def load_pass(spec: str) -> PassBase:
    """Instantiate a user pass from ``module:Class`` or ``path/to/file.py:Class``.

    Arguments follow a ``?``, URL-query style, and reach the constructor as keyword strings:
    ``my_passes.py:KeepLayersDense?layers=2,3`` calls ``KeepLayersDense(layers="2,3")``.
    """
    mod_name, cls_name, kwargs = split_spec(spec)
    try:
        if mod_name.endswith(".py"):
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
    if isinstance(cls, type):
        try:
            obj = cls(**kwargs)
        except HatacError as exc:
            raise HatacError(f"pass {cls_name}: {exc}") from None
        except Exception as exc:
            raise HatacError(f"pass {cls_name} could not be created from {spec!r}: {type(exc).__name__}: {exc}") from None
    elif kwargs:
        raise HatacError(f"{mod_name}:{cls_name} is an instance, it takes no arguments ({spec!r})")
    else:
        obj = cls
    if not isinstance(obj, PassBase):
        raise HatacError(f"{spec} is not a hatac pass (subclass hatac.passes.PassBase)")
    return obj


def pass_spec(spec: str, p: PassBase) -> str:
    """The spec to store in a manifest for pass ``p`` loaded from ``spec``: a ``file.py`` path made
    absolute (so ``hatac.load`` works from any folder), and the pass's own :meth:`~PassBase.spec_args`
    (what it read from files or the environment) in place of the arguments as written."""
    mod_name, cls_name, kwargs = split_spec(spec)
    if mod_name.endswith(".py") and Path(mod_name).is_file():
        mod_name = str(Path(mod_name).resolve())
    args = p.spec_args()
    if args is None:
        args = kwargs
    query = urlencode({k: str(v) for k, v in args.items()}, safe=",:=/") if args else ""
    return f"{mod_name}:{cls_name}" + (f"?{query}" if query else "")
