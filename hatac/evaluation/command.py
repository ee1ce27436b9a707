"""What ``hatac eval`` does, minus argument parsing: load the model and data, pick learned W, run, print."""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Callable

import torch

from hatac.artifact.manifest import MANIFEST_NAME
from hatac.errors import HatacError
from hatac.evaluation import report
from hatac.evaluation.learned import calibrated_weights, weights_from_files
from hatac.evaluation.run import EvalSettings, run

LEARNED_MODES = ("calibrate", "cached", "off")


def artifact_settings(folder: Path, settings: EvalSettings, progress: Callable[[str], None]) -> dict[int, dict[int, torch.Tensor]]:
    """Evaluate what ``hatac convert`` made: the artifact's W become hatac-learned's (its one width, so the
    learned curves hold only that r), and its recipe sets the hash width, the dense layers, the sink/recent
    variant and one more budget in the sweep. Returns ``{r: W}``; what the evaluation cannot replay is named."""
    from hatac.artifact.manifest import read_manifest
    from hatac.config import HataConfig

    recipe = HataConfig.from_dict(read_manifest(folder)["recipe"])
    weights = weights_from_files([folder])
    settings.artifact = str(folder)
    settings.main_rbits, settings.rbits, settings.dense_layers = recipe.rbits, (recipe.rbits,), recipe.dense_layers
    if recipe.sink or recipe.recent:
        settings.hatac_forced = tuple(sorted({*settings.hatac_forced, (recipe.sink, recipe.recent)}))
    if recipe.budget < 1:
        settings.fractions = tuple(sorted({*settings.fractions, recipe.budget}))
    else:
        settings.counts = tuple(sorted({*settings.counts, int(recipe.budget)}))
    skipped = [name for name, v in (("layer_budgets", recipe.layer_budgets), ("extra_dense", recipe.extra_dense)) if v]
    if skipped:
        progress(f"warning: the evaluation applies one budget to every hashed layer; the recipe's {' and '.join(skipped)} are not replayed")
    progress(f"evaluating the artifact {folder}: its W (r={recipe.rbits}, {recipe.hash}) as hatac-learned, dense layers {recipe.dense_layers}, "
             f"budget {recipe.budget:g}" + (f", sink {recipe.sink} / recent {recipe.recent}" if recipe.sink or recipe.recent else ""))
    return weights


def evaluate(
    model_id: str,
    out_dir: Path,
    *,
    quick: bool = False,
    device: str | None = None,
    dtype: str | None = None,
    calib: Path,
    learned: str | None = None,
    learned_from: list[Path] = (),
    calib_effort: str = "auto",
    overrides: dict | None = None,
    progress: Callable[[str], None] = print,
    console=None,
) -> dict:
    """``learned``: ``calibrate`` (learned W for every r: from ``learned_from``, the cache, or calibrated now
    and cached), ``cached`` (only W from ``learned_from`` or the cache; other widths are left out of the
    learned curves), ``off``. Default: calibrate, or cached with ``quick``."""
    from hatac.artifact import store as artifact
    from hatac.data.assets import cache_root
    from hatac.data.calib import load_calibration

    learned = learned or ("cached" if quick else "calibrate")
    if learned not in LEARNED_MODES:
        raise HatacError(f"--learned must be one of {', '.join(LEARNED_MODES)}, got {learned!r}")
    settings = EvalSettings.quick() if quick else EvalSettings.default()
    fields = {f.name for f in dataclasses.fields(EvalSettings)}
    for k, v in (overrides or {}).items():
        if k not in fields:
            raise HatacError(f"unknown evaluation setting {k!r}")
        if v is not None:
            setattr(settings, k, v)
    given = weights_from_files(list(learned_from))
    if (Path(model_id) / MANIFEST_NAME).is_file():
        learned = "off" if learned == "off" else "cached"
        given.update(artifact_settings(Path(model_id), settings, progress))
    settings.validate()
    if settings.main_rbits not in settings.rbits:
        settings.rbits = tuple(sorted({*settings.rbits, settings.main_rbits}))
    dev = artifact.parse_device(device)
    dt = artifact.parse_dtype(dtype)
    from hatac.data.assets import resolve

    model_id = resolve(model_id, progress)  # a bundled model's name -> its folder
    progress(f"loading {model_id}")
    model, tokenizer = artifact.load_source_model(model_id, dev, dt)
    if tokenizer is None:
        raise HatacError(f"{model_id} has no tokenizer; hatac eval tokenizes its texts with it")
    samples = load_calibration(calib, tokenizer)
    progress(f"calibration text: {len(samples)} samples, {sum(map(len, samples))} tokens from {calib}")

    from hatac.evaluation.session import EvalModel

    em = EvalModel(model.to(dev), dense_layers=settings.dense_layers)  # one capture for calibration and every metric
    learn = None
    if learned != "off":
        cache_dir = cache_root() / "eval"

        def learn(r: int):
            if r in given:
                return given[r]
            t0 = time.perf_counter()
            w, summary = calibrated_weights(em, samples, r, 1 / 32, calib_effort, cache_dir=cache_dir, progress=progress)
            progress(f"learned W r={r}: {'cached' if 'cached' in summary else f'calibrated in {time.perf_counter() - t0:.0f}s'}")
            return w

        if learned == "cached":
            from hatac.calibration.learned import resolve_effort
            from hatac.evaluation.learned import cache_path

            calibrate_now, effort = learn, resolve_effort(calib_effort, dev)

            def learn(r: int):  # noqa: F811  (weights given or cached only; None leaves r out)
                if r in given or cache_path(cache_dir, model, samples, r, 1 / 32, effort).is_file():
                    return calibrate_now(r)
                progress(f"learned W r={r}: not cached, left out (--learned calibrate computes it)")
                return None

    results = run(model, tokenizer, out_dir, settings, calib_samples=samples, learn_weights=learn, device=dev, console=console, em=em)
    report.print_tables(results, console)
    written = [str(Path(out_dir) / "results.json"), *results["plots"]]
    progress(f"wrote {', '.join(written)} in {results['timings_s']['total']:.0f}s")
    return results
