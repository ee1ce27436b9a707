"""hatac's pass API and built-in passes. See :mod:`hatac.passes.base` and :mod:`hatac.passes.pipeline`."""

from hatac.passes.base import (
    DECODE,
    OBSERVE,
    PREFILL,
    AttentionSite,
    PassBase,
    PassContext,
    PassError,
    PassManager,
    PassResult,
)
from hatac.passes.pipeline import AFTER_REWRITE, BEFORE_REWRITE, build_pipeline, load_pass

__all__ = [
    "AFTER_REWRITE",
    "BEFORE_REWRITE",
    "DECODE",
    "OBSERVE",
    "PREFILL",
    "AttentionSite",
    "PassBase",
    "PassContext",
    "PassError",
    "PassManager",
    "PassResult",
    "build_pipeline",
    "load_pass",
]
