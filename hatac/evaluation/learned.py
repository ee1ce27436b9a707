"""Learned hash projections for the evaluation: hatac's own ``--hash learned`` calibration, per r, cached.

``learn_weights(r) -> {layer: W (Hkv, D, r)}`` is the hook :func:`hatac.evaluation.run` takes. The
default one here runs the registered ``learned`` hash method (calibration/) on the evaluation model's
observe graph with calibration prompts (``hatac/data/calib.jsonl``: calibration plays only), exactly what
``hatac convert --hash learned`` does, and keeps the result in a cache folder keyed by the model, the
prompts and the settings, so a second evaluation does not calibrate again. Weights can also come from
files (:func:`weights_from_files`): a ``hash_weights.safetensors`` of a converted artifact, or one saved
by :func:`save_weights`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
from pathlib import Path
from typing import Callable

import torch
from safetensors.torch import load_file, save_file

from hatac.config import HataConfig
from hatac.errors import HatacError
from hatac.evaluation.session import EvalModel
import hatac.calibration  # noqa: F401  (registers the hash methods)
from hatac.hashing import HashingInputs, hash_weights_for

LearnWeights = Callable[[int], dict[int, torch.Tensor]]


def model_fingerprint(model: torch.nn.Module) -> str:
    """sha256 over every parameter's name, shape and a strided sample of its values (cheap, stable)."""
    h = hashlib.sha256()
    for name, p in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(str(tuple(p.shape)).encode())
        flat = p.detach().reshape(-1)
        h.update(flat[:: max(1, flat.numel() // 4096)].float().cpu().numpy().tobytes())
    return h.hexdigest()


def save_weights(weights: dict[int, torch.Tensor], path: Path, meta: dict | None = None) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    save_file({f"layer_{k}": v.contiguous() for k, v in weights.items()}, str(tmp), metadata={"hatac_eval": json.dumps(meta or {})})
    tmp.replace(path)


def load_weights(path: Path) -> dict[int, torch.Tensor]:
    """{layer: W} from a safetensors file with ``layer_N`` or ``N``-suffixed keys (an artifact's hash weights too)."""
    try:
        raw = load_file(str(path))
    except Exception as e:
        raise HatacError(f"cannot read hash weights {path}: {e}") from None
    out = {}
    for key, w in raw.items():
        m = re.search(r"(\d+)$", key)
        if m is None or w.dim() != 3:
            raise HatacError(f"{path}: tensor {key!r} is not a per-layer (Hkv, D, r) hash projection")
        out[int(m.group(1))] = w.float()
    return out


def weights_from_files(paths: list[Path]) -> dict[int, dict[int, torch.Tensor]]:
    """{r: {layer: W}} from safetensors files or artifact folders (their hash_weights.safetensors)."""
    by_r: dict[int, dict[int, torch.Tensor]] = {}
    for p in map(Path, paths):
        f = p / "hash_weights.safetensors" if p.is_dir() else p
        if not f.is_file():
            raise HatacError(f"no hash weights at {p}")
        w = load_weights(f)
        rs = {int(v.shape[-1]) for v in w.values()}
        if len(rs) != 1:
            raise HatacError(f"{f}: layers have different hash widths {sorted(rs)}")
        by_r[rs.pop()] = w
    return by_r


def cache_path(cache_dir: Path, model: torch.nn.Module, samples: list[list[int]], rbits: int, budget: float, effort: str, seed: int = 0) -> Path:
    """Where :func:`calibrated_weights` keeps W for these inputs (``effort`` already resolved; its settings
    are part of the key, so changing what an effort does never returns W trained under the old settings)."""
    import dataclasses

    from hatac.calibration.learned import EFFORTS, HELDOUT_PROMPTS_MIN
    from hatac.calibration.train import TrainConfig

    plan = EFFORTS.get(effort)
    # The resolved trainer settings (defaults included) and the held-out policy, not just the plan's overrides.
    train = dataclasses.asdict(TrainConfig(**(plan or {}).get("train", {})))
    key = hashlib.sha256(
        json.dumps({"model": model_fingerprint(model), "samples": samples, "r": rbits, "budget": budget, "effort": effort, "plan": plan,
                    "train": train, "heldout_prompts_min": HELDOUT_PROMPTS_MIN, "seed": seed}).encode()
    ).hexdigest()[:20]
    return Path(cache_dir) / f"learned-r{rbits}-{key}.safetensors"


def calibrated_weights(
    em: EvalModel,
    samples: list[list[int]],
    rbits: int,
    budget: float,
    effort: str = "auto",
    seed: int = 0,
    cache_dir: Path | None = None,
    progress: Callable[[str], None] | None = None,
) -> tuple[dict[int, torch.Tensor], dict]:
    """hatac's learned W at ``rbits`` for every hashed layer of ``em`` (calibrated, or from the cache)."""
    from hatac.calibration.learned import resolve_effort

    effort = resolve_effort(effort, em.device)
    path = cache_path(cache_dir, em.model, samples, rbits, budget, effort, seed) if cache_dir else None
    if path is not None and path.is_file():
        if progress:
            progress(f"learned W r={rbits}: cached {path}")
        return load_weights(path), {"cached": str(path)}
    specs = {layer: dataclasses.replace(s, rbits=rbits, budget=budget) for layer, s in em.specs.items()}
    cfg = HataConfig(rbits=rbits, budget=budget, dense_layers=em.config.dense_layers, hash="learned", seed=seed, calib_effort=effort)
    inputs = HashingInputs(em.observe_graph, em.observed_layers, samples, em.device, progress)
    weights, summary = hash_weights_for(specs, cfg, inputs)
    weights = {k: v.detach().float().cpu() for k, v in weights.items()}
    if path is not None:
        save_weights(weights, path, {k: v for k, v in summary.items() if k != "layers"})
    return weights, summary


def default_learn_weights(em: EvalModel, samples: list[list[int]], budget: float, effort: str = "auto", cache_dir: Path | None = None, progress=None) -> LearnWeights:
    """The ``learn_weights(r)`` hook backed by :func:`calibrated_weights`."""

    def learn(r: int) -> dict[int, torch.Tensor]:
        return calibrated_weights(em, samples, r, budget, effort, cache_dir=cache_dir, progress=progress)[0]

    return learn
