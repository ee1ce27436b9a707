"""hatac: compile Hugging Face causal language models to hash-aware top-k attention (HATA).

    model = hatac.convert(hf_model, hatac.HataConfig(budget=0.03))   # capture, hash, rewrite
    hatac.save(model, "out/", tokenizer=tok)
    model = hatac.load("out/")                                       # a transformers model
    model = hatac.load("out/", options=hatac.DecodeOptions(rope=False))  # decode settings (docs/CONFIG.md)
    model.generate(ids, max_new_tokens=32)
"""

from hatac import ops as ops  # (registers the hatac:: ops)
from hatac.config import HataConfig
from hatac.errors import HatacError
from hatac.kernels.options import KernelOptions
from hatac.runtime.options import DecodeOptions
from hatac.version import __version__

_LAZY = {"convert": "hatac.converter", "save": "hatac.artifact.store", "load": "hatac.artifact.store"}


def __getattr__(name: str):
    """``convert``, ``save`` and ``load`` are the functions themselves (``help(hatac.load)`` shows their
    parameters), imported on first use so that ``import hatac`` stays light."""
    if name in _LAZY:
        import importlib

        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'hatac' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))


__all__ = ["DecodeOptions", "HataConfig", "HatacError", "KernelOptions", "convert", "load", "ops", "save", "__version__"]
