"""Save and load converted models.

An artifact folder holds the source model's config, tokenizer and weights (safetensors: it loads offline
on its own), ``hash_weights.safetensors`` (one ``(H_kv, head_dim, r)`` tensor per hashed layer, named
``layer.<i>``) and the ``hatac.json`` manifest. Loading replays the recipe on the saved weights with the
saved hash projections: the graph is captured and rewritten again, so an artifact never pickles code.

Writes go to a temporary sibling folder that is renamed into place only when complete.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import os
import shutil
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from hatac.version import __version__
from hatac.config import HataConfig
from hatac.errors import HatacError, SettingError
from hatac.artifact.manifest import FORMAT, FORMAT_VERSION, HASH_WEIGHTS_NAME, read_manifest, sha256_file, weight_files, write_manifest
from hatac.runtime.model import HataForCausalLM
from hatac.runtime.options import DecodeOptions
from hatac.runtime.options import check as check_options

if TYPE_CHECKING:
    from hatac.distributed.allreduce import AllReduceOptions

DTYPES = {"auto": None, "float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16, "float16": torch.float16, "fp16": torch.float16}


def parse_dtype(name: str | None) -> torch.dtype | None:
    if name is None:
        return None
    if name not in DTYPES:
        raise SettingError("dtype", f"must be one of {', '.join(DTYPES)}, got {name!r}")
    return DTYPES[name]


def parse_device(name: str | None) -> torch.device:
    try:
        dev = torch.device(name or ("cuda" if torch.cuda.is_available() else "cpu"))
    except RuntimeError:
        raise SettingError("device", f"{name!r} is not a device torch knows") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise SettingError("device", "is cuda, but torch sees no CUDA device")
    return dev


def check_output_dir(out: str | Path, overwrite: bool = False) -> Path:
    """Refuse an output folder that cannot be written, before any work: a file in its place or in place of
    one of its parents, a folder that is not empty (unless ``overwrite``), a parent we may not write to."""
    out = Path(out).expanduser()
    if out.exists() and not out.is_dir():
        raise HatacError(f"output {out} exists and is not a directory")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise HatacError(f"output directory {out} is not empty (pass overwrite=True, or --overwrite, to replace it)")
    parent = out.absolute().parent
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir():
        raise HatacError(f"cannot write {out}: {parent} is a file, not a directory")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise HatacError(f"cannot write {out}: no permission to create files in {parent}")
    return out


@contextlib.contextmanager
def atomic_dir(out: Path, overwrite: bool = False):
    """Yield a temporary folder next to ``out``; on success it replaces ``out``, on failure it is removed."""
    out = check_output_dir(out, overwrite)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.partial-", dir=out.parent))
    try:
        yield tmp
        if out.exists():
            old = out.with_name(f".{out.name}.old-{os.getpid()}")
            out.rename(old)
            tmp.rename(out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            tmp.rename(out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def resolve_model_dir(model_id: str) -> Path | None:
    """The local folder of a model given as a path or an already-downloaded hub id (None if unknown)."""
    p = Path(model_id)
    if p.is_dir():
        return p
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(model_id, local_files_only=True))
    except Exception:
        return None


def load_source_model(model_id: str, device: torch.device, dtype: torch.dtype | None):
    """Load a causal LM and its tokenizer from a folder or hub id, with one-line errors."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    p = Path(model_id)
    looks_local = p.is_absolute() or model_id.startswith((".", "~")) or p.exists() or model_id.count("/") > 1
    if looks_local and not p.is_dir():
        raise HatacError(f"model folder {model_id} does not exist")
    try:
        model = AutoModelForCausalLM.from_pretrained(model_id, dtype=dtype or "auto")
    except Exception as exc:
        msg = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise HatacError(f"cannot load model {model_id}: {msg}") from None
    try:
        tokenizer = AutoTokenizer.from_pretrained(model_id)
    except Exception:
        tokenizer = None
    return model.to(device).eval(), tokenizer


def save(model: HataForCausalLM, out: str | Path, tokenizer=None, source: str = "", source_dir: Path | None = None, passes: list[str] = (), overwrite: bool = False) -> Path:
    """Write ``model`` (from :func:`hatac.convert`) as an artifact folder that :func:`hatac.load` reads.

    Args:
        model: the converted model.
        out: the folder to write; it must not exist or be empty, unless ``overwrite``. Written to a
            temporary folder beside it and renamed when complete, so a failure leaves nothing behind.
        tokenizer: saved with the model when given (``hatac generate`` needs one).
        source: where the model came from (a hub id or folder), recorded in the manifest.
        source_dir: the source model's folder; its weight files' sha256 go into the manifest.
        passes: the user pass specs (``module:Class?arg=value``) the model was converted with, replayed on load.
        overwrite: replace an existing artifact folder.

    Returns the artifact folder.
    """
    out = Path(out)
    if getattr(model.hf_model, "hatac_tp", None) is not None:
        raise HatacError("this model holds one tensor-parallel shard; save the artifact from a model loaded without tp")
    sha = {f.name: sha256_file(f) for f in weight_files(source_dir)} if source_dir else {}
    hashed = {f"layer.{i}": w.detach().float().contiguous().cpu() for i, w in sorted(model.hash_weights.items())}
    with atomic_dir(out, overwrite) as tmp:
        model.hf_model.save_pretrained(tmp, safe_serialization=True)
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
        save_file(hashed, str(tmp / HASH_WEIGHTS_NAME), metadata={"format": FORMAT, "layout": "(H_kv, head_dim, r) float32"})
        manifest = {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "hatac_version": __version__,
            "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "source": {
                "model": source or str(getattr(model.config, "_name_or_path", "")),
                "architecture": type(model.hf_model).__name__,
                "model_type": getattr(model.config, "model_type", ""),
                "dtype": str(model.hf_model.dtype).replace("torch.", ""),
                "weights_sha256": sha,
            },
            "recipe": model.recipe.to_dict(),
            "passes": list(passes),
            "layers": [s.to_dict() for s in model.layers.values()],
            "hash_weights": {
                "file": HASH_WEIGHTS_NAME,
                "sha256": sha256_file(tmp / HASH_WEIGHTS_NAME),
                "tensors": {k: list(v.shape) for k, v in hashed.items()},
            },
            "calibration": model.manifest.get("calibration", {}),
        }
        write_manifest(tmp, manifest)
    model.manifest = manifest
    return out


def _check_weights(manifest: dict, weights: dict[str, torch.Tensor], folder: Path) -> dict[int, torch.Tensor]:
    declared = manifest["hash_weights"]["tensors"]
    if set(declared) != set(weights):
        missing, extra = sorted(set(declared) - set(weights)), sorted(set(weights) - set(declared))
        raise HatacError(f"manifest in {folder} does not match its tensors: missing {missing}, unexpected {extra}")
    hashed = {f"layer.{s['layer']}": s for s in manifest["layers"] if s["hashed"]}
    if set(hashed) != set(weights):
        raise HatacError(f"manifest in {folder} does not match its tensors: hashed layers {sorted(hashed)} vs tensors {sorted(weights)}")
    for name, w in weights.items():
        s = hashed[name]
        expect = [s["n_kv_heads"], s["head_dim"], s["rbits"]]
        if list(w.shape) != expect or list(w.shape) != declared[name]:
            raise HatacError(f"manifest in {folder} does not match its tensors: {name} has shape {list(w.shape)}, manifest says {expect}")
    return {int(name.split(".")[1]): w for name, w in weights.items()}


def read_hash_weights(folder: Path, manifest: dict) -> dict[int, torch.Tensor]:
    """The hash projections by layer, checked against the manifest (file digest, names, shapes)."""
    wfile = folder / manifest["hash_weights"]["file"]
    if not wfile.is_file():
        raise HatacError(f"{folder} is missing {wfile.name}")
    if sha256_file(wfile) != manifest["hash_weights"]["sha256"]:
        raise HatacError(f"manifest in {folder} does not match its tensors: {wfile.name} has another sha256")
    try:
        return _check_weights(manifest, load_file(str(wfile)), folder)
    except SafetensorError as exc:
        raise HatacError(f"cannot read {wfile}: {exc}") from None


def verify(path: str | Path) -> dict:
    """Check an artifact without loading its model: the manifest (schema, format version), the hash
    projections (digest, names and shapes against the manifest and its layers), and every safetensors file
    (its header parses and covers the file exactly, so a truncated or padded file fails). Returns the
    manifest and counts; raises :class:`HatacError` naming the first problem."""
    from safetensors import safe_open

    folder = Path(path)
    manifest = read_manifest(folder)
    hashed = read_hash_weights(folder, manifest)
    files = sorted(folder.glob("*.safetensors"))
    if not any(f.name != manifest["hash_weights"]["file"] for f in files):
        raise HatacError(f"{folder} has no model weights (*.safetensors)")
    tensors = 0
    for f in files:
        try:
            with safe_open(str(f), "pt") as st:
                tensors += len(list(st.keys()))
        except (SafetensorError, OSError) as exc:
            raise HatacError(f"cannot read {f}: {str(exc).strip() or type(exc).__name__}") from None
    return {"manifest": manifest, "hash_layers": len(hashed), "files": len(files), "tensors": tensors}


def load(path: str | Path, device: str | torch.device | None = None, dtype: str | torch.dtype | None = None, tp: bool = False,
         options: DecodeOptions | None = None, allreduce: AllReduceOptions | None = None) -> HataForCausalLM:
    """Load an artifact folder as a :class:`HataForCausalLM` whose ``generate()`` runs hatac's graphs.

    The recipe in the manifest is replayed on the saved weights (capture, the same passes, the saved hash
    projections), the projections checked against the manifest's sha256 first.

    Args:
        path: the artifact folder (from :func:`hatac.save` or ``hatac convert``).
        device: where to load it (``"cuda"``, ``"cpu"``, ...); default: the GPU if there is one.
        dtype: ``"bfloat16"``, ``"float16"``, ``"float32"`` or a torch dtype; default: the saved one.
        tp: under ``torchrun --nproc-per-node N``, tensor parallel: each process loads its shard of the
            heads and MLP onto its own GPU (:mod:`hatac.distributed.tp`); every process must call ``generate``.
        options: how the model decodes (:class:`hatac.DecodeOptions`: runtime fusions and kernel choices);
            default: the defaults. Not part of the artifact.
        allreduce: the tensor-parallel all-reduce (:class:`hatac.distributed.allreduce.AllReduceOptions`),
            set for the process (its symmetric buffers are the process's); default: leave the process's as is.
    """
    from transformers import AutoModelForCausalLM

    from hatac.converter import convert
    from hatac.passes.pipeline import load_pass

    options = check_options(options)
    if allreduce is not None:
        from hatac.distributed import allreduce as all_reduce

        all_reduce.configure(allreduce)
    folder = Path(path)
    manifest = read_manifest(folder)
    weights = read_hash_weights(folder, manifest)
    recipe = HataConfig.from_dict(manifest["recipe"])
    dev = parse_device(str(device) if device is not None else None)
    dt = dtype if isinstance(dtype, torch.dtype) or dtype is None else parse_dtype(dtype)
    expected_layers = manifest["layers"]
    group = None
    if tp:
        from hatac.distributed import groups as distributed
        from hatac.distributed import tp as tensor_parallel

        group, dev = distributed.setup(dev)
        group = group if group.world > 1 else None  # one process: nothing to shard
    try:
        hf = AutoModelForCausalLM.from_pretrained(folder, dtype=dt or "auto")
    except Exception as exc:
        msg = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise HatacError(f"cannot load the weights in {folder}: {msg}") from None
    if group is not None:
        hf = tensor_parallel.shard(hf, group)
        weights = tensor_parallel.shard_hash_weights(weights, group)
        expected_layers = tensor_parallel.shard_layer_dicts(expected_layers, group.world)
    hf = hf.to(dev).eval()
    passes = [load_pass(spec) for spec in manifest["passes"]]
    model = convert(hf, recipe, passes=passes, hash_weights=weights, options=options)
    got = [s.to_dict() for s in model.layers.values()]
    if got != expected_layers:
        diff = next((a, b) for a, b in zip(got, expected_layers) if a != b) if len(got) == len(expected_layers) else (len(got), len(expected_layers))
        raise HatacError(f"manifest in {folder} does not match the model: replayed layer {diff[0]} vs saved {diff[1]}")
    model.manifest = manifest
    return model
