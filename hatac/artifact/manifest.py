"""The artifact's ``hatac.json``: what produced it (source model and its weights' hashes, the recipe, the
user passes), what it holds (per-layer specs, the hash-weight tensors) and how calibration went.

Checked with a JSON schema on load, so a hand-edited or foreign manifest fails with one clear line.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import jsonschema

from hatac.errors import HatacError

FORMAT = "hatac"
FORMAT_VERSION = 1
MANIFEST_NAME = "hatac.json"
HASH_WEIGHTS_NAME = "hash_weights.safetensors"

_LAYER = {
    "type": "object",
    "required": ["layer", "module_path", "n_heads", "n_kv_heads", "head_dim", "hashed", "rbits", "budget", "sink", "recent", "window"],
    "properties": {
        "layer": {"type": "integer", "minimum": 0},
        "module_path": {"type": "string"},
        "n_heads": {"type": "integer", "minimum": 1},
        "n_kv_heads": {"type": "integer", "minimum": 1},
        "head_dim": {"type": "integer", "minimum": 1},
        "hashed": {"type": "boolean"},
        "rbits": {"type": "integer", "minimum": 32, "multipleOf": 32},
        "budget": {"type": "number", "exclusiveMinimum": 0},
        "sink": {"type": "integer", "minimum": 0},
        "recent": {"type": "integer", "minimum": 0},
        "window": {"type": "integer", "minimum": 0},
    },
}

SCHEMA = {
    "type": "object",
    "required": ["format", "format_version", "hatac_version", "source", "recipe", "passes", "layers", "hash_weights", "calibration"],
    "properties": {
        "format": {"const": FORMAT},
        "format_version": {"type": "integer"},
        "hatac_version": {"type": "string"},
        "source": {
            "type": "object",
            "required": ["model", "architecture", "weights_sha256"],
            "properties": {
                "model": {"type": "string"},
                "architecture": {"type": "string"},
                "weights_sha256": {"type": "object", "additionalProperties": {"type": "string", "pattern": "^[0-9a-f]{64}$"}},
            },
        },
        "recipe": {"type": "object"},
        "passes": {"type": "array", "items": {"type": "string"}},
        "layers": {"type": "array", "items": _LAYER, "minItems": 1},
        "hash_weights": {
            "type": "object",
            "required": ["file", "sha256", "tensors"],
            "properties": {
                "file": {"type": "string"},
                "sha256": {"type": "string", "pattern": "^[0-9a-f]{64}$"},
                "tensors": {"type": "object", "additionalProperties": {"type": "array", "items": {"type": "integer"}}},
            },
        },
        "calibration": {"type": "object"},
    },
}


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def weight_files(folder: Path) -> list[Path]:
    """The weight files of a Hugging Face model folder."""
    files = sorted(folder.glob("*.safetensors")) or sorted(folder.glob("*.bin")) or sorted(folder.glob("*.gguf"))
    return [f for f in files if f.name != HASH_WEIGHTS_NAME]


def read_manifest(folder: Path) -> dict:
    path = folder / MANIFEST_NAME
    if not folder.is_dir():
        raise HatacError(f"{folder} is not a directory")
    if not path.is_file():
        raise HatacError(f"{folder} is not a hatac artifact: it has no {MANIFEST_NAME}")
    try:
        manifest = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise HatacError(f"cannot read {path}: {exc}") from None
    if isinstance(manifest, dict) and manifest.get("format_version") not in (None, FORMAT_VERSION):
        raise HatacError(
            f"{path} has artifact format version {manifest.get('format_version')}; this hatac reads version {FORMAT_VERSION}"
        )
    try:
        jsonschema.validate(manifest, SCHEMA)
    except jsonschema.ValidationError as exc:
        where = "/".join(str(p) for p in exc.absolute_path) or "(top level)"
        raise HatacError(f"{path} is not a valid hatac manifest: at {where}: {exc.message}") from None
    return manifest


def write_manifest(folder: Path, manifest: dict) -> None:
    jsonschema.validate(manifest, SCHEMA)
    (folder / MANIFEST_NAME).write_text(json.dumps(manifest, indent=2, sort_keys=False) + "\n")
