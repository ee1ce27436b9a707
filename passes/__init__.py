"""hatac's pass API and built-in passes. See :mod:`hatac.passes.base` and :mod:`hatac.passes.pipeline`."""

from hatac.passes.base import (
    DECODE,
    OBSERVE,
    PREFILL,
    AttentionSite,
    NodeRewritePass,
    PassBase,
    PassContext,
    PassError,
    PassManager,
    PassResult,
)
from hatac.passes.pattern import PatternPass
from hatac.passes.pipeline import AFTER_REWRITE, BEFORE_REWRITE, build_pipeline, load_pass, pass_spec

__all__ = [
    "AFTER_REWRITE",
    "BEFORE_REWRITE",
    "DECODE",
    "OBSERVE",
    "PREFILL",
    "AttentionSite",
    "NodeRewritePass",
    "PassBase",
    "PassContext",
    "PassError",
    "PassManager",
    "PassResult",
    "PatternPass",
    "build_pipeline",
    "load_pass",
    "pass_spec",
]
