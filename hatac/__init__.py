"""hatac: compile Hugging Face causal language models to hash-aware top-k attention (HATA).

    model = hatac.convert(hf_model, hatac.HataConfig(budget=0.03))   # capture, hash, rewrite
    hatac.save(model, "out/", tokenizer=tok)
    model = hatac.load("out/")                                       # a transformers model
    model = hatac.load("out/", options=hatac.DecodeOptions(rope=False))  # decode settings (docs/CONFIG.md)
    model.generate(ids, max_new_tokens=32)
"""

from hatac.version import __version__  # noqa: E402

from hatac import ops as ops  # noqa: E402  (registers the hatac:: ops)
from hatac.config import HataConfig  # noqa: E402
from hatac.errors import HatacError  # noqa: E402
from hatac.kernels.options import KernelOptions  # noqa: E402
from hatac.runtime.options import DecodeOptions  # noqa: E402


def convert(*args, **kwargs):
    from hatac.converter import convert as _convert

    return _convert(*args, **kwargs)


def save(*args, **kwargs):
    from hatac.artifact.store import save as _save

    return _save(*args, **kwargs)


def load(*args, **kwargs):
    from hatac.artifact.store import load as _load

    return _load(*args, **kwargs)


__all__ = ["DecodeOptions", "HataConfig", "HatacError", "KernelOptions", "convert", "load", "ops", "save", "__version__"]
