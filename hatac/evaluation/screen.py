"""Screen hash-training settings on a few layers, on evaluation text, before paying for a full ``hatac eval``.

A full learned-W calibration of SmolLM2 at the GPU ("full") effort takes ~45 min on a 2-core CPU; four
layers take ~7 min. This calibrates only the given layers, once per variant (``TrainConfig`` overrides on
top of the effort's settings), then measures recall@k and attention mass of each variant's W, and of the
random W training starts from, on evaluation documents with the selection code of ``hatac eval``
(:func:`hatac.evaluation.recall.layer_recall`). Calibration and evaluation text never overlap (as in
``hatac eval``). A screen is a pre-check: a variant is adopted only on the full evaluation.

    python -m hatac.evaluation.screen smollm2 --layers 2,11,20,29 --rbits 128 --effort full \\
        --variant paper: --variant group:group_labels=true -o screen.json
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path

import torch

from hatac.errors import HatacError
from hatac.evaluation.budgets import label, parse
from hatac.evaluation.policies import HashPolicy
from hatac.evaluation.recall import layer_recall, query_positions
from hatac.evaluation.session import EvalModel


def parse_variant(text: str) -> tuple[str, dict]:
    """'name:key=value,key=value' -> (name, {key: value}) with TrainConfig field types; one-line errors."""
    from hatac.calibration.train import TrainConfig

    name, _, rest = text.partition(":")
    if not name:
        raise HatacError(f"--variant takes NAME:[KEY=VALUE,...], got {text!r}")
    types = {f.name: type(f.default) for f in dataclasses.fields(TrainConfig)}
    out = {}
    for item in filter(None, rest.split(",")):
        key, eq, value = item.partition("=")
        if not eq or key not in types:
            raise HatacError(f"--variant {name}: {item!r} is not KEY=VALUE with KEY a TrainConfig field ({', '.join(types)})")
        t = types[key]
        if t is bool:
            if value.lower() not in ("true", "false", "1", "0"):
                raise HatacError(f"--variant {name}: {key} takes true or false, got {value!r}")
            out[key] = value.lower() in ("true", "1")
        else:
            out[key] = t(value)
    return name, out


def screen(
    em: EvalModel,
    calib_samples: list[list[int]],
    documents: list,
    layers: list[int],
    rbits: int,
    variants: dict[str, dict],
    effort: str = "full",
    budgets: tuple[float, ...] = (1 / 32, 1 / 16, 512.0),
    recall_queries: int = 96,
    loss_from: int = 1024,
    seed: int = 0,
    progress=print,
) -> dict:
    """{"calibration": {variant: {layer: stats}}, "recall"/"mass": {variant: {budget: mean}}, "per_layer": ...}.

    Every variant trains from the same collected pairs (the conversion's collector settings for ``effort``)
    and the same random W; "random" is that W, untrained."""
    from hatac.calibration.calibrate import calibrate, random_weights
    from hatac.calibration.collect import PairCollector
    from hatac.calibration.learned import EFFORTS, HELDOUT_PROMPTS_MIN
    from hatac.calibration.train import TrainConfig

    bad = [layer for layer in layers if layer not in em.shape.hashed_layers]
    if bad or not layers:
        raise HatacError(f"layers {bad or layers} are not hashed layers of the model (hashed: {em.shape.hashed_layers})")
    if effort not in EFFORTS:
        raise HatacError(f"effort must be one of {', '.join(EFFORTS)}, got {effort!r}")
    plan = EFFORTS[effort]
    shape = em.shape
    col = PairCollector(shape.n_heads, shape.n_kv_heads, shape.head_dim, queries_per_prompt=plan["queries_per_prompt"], seed=seed,
                        store_dtype=torch.float32, heldout_prompts=len(calib_samples) >= HELDOUT_PROMPTS_MIN)  # fmt: skip
    for i, ids in enumerate(calib_samples):
        obs = em.observe(torch.tensor([ids]))
        for layer in layers:
            col.add(layer, obs[layer][0][0], obs[layer][1][0], prompt_id=i)
    weights = {"random": random_weights(layers, shape.n_kv_heads, shape.head_dim, rbits, seed)}
    calib_stats: dict = {}
    for name, overrides in variants.items():
        t0 = time.perf_counter()
        cfg = TrainConfig(**{**plan["train"], **overrides})
        res = calibrate(col, layers, shape.head_dim, shape.n_kv_heads, shape.n_heads, rbits, 1 / 32, seed=seed, device=em.device, config=cfg)
        weights[name] = res.weights
        calib_stats[name] = {str(k): {"recall_random": round(v["recall_random"], 4), "recall_learned": round(v["recall_learned"], 4), "steps": v["steps"]}
                             for k, v in res.stats.items()}  # fmt: skip
        progress(f"{name}: calibrated {len(layers)} layers in {time.perf_counter() - t0:.0f}s, held-out recall@1/32 "
                 + " ".join(f"{k}:{v['recall_random']:.3f}->{v['recall_learned']:.3f}" for k, v in calib_stats[name].items()))  # fmt: skip
    acc: dict = {}
    for d in documents:
        obs = em.observe(torch.tensor([d.ids]))
        pos = query_positions(len(d), loss_from, recall_queries)
        for layer in layers:
            q, k = obs[layer]
            res = layer_recall(q, k, pos, {n: HashPolicy(w, n) for n, w in weights.items()}, list(budgets), layer)
            for name, by_b in res.items():
                for b, (rec, ms, n) in by_b.items():
                    a = acc.setdefault((name, label(b), layer), [0.0, 0.0, 0])
                    a[0], a[1], a[2] = a[0] + rec, a[1] + ms, a[2] + n
        del obs
    out: dict = {"layers": layers, "rbits": rbits, "effort": effort, "variants": variants, "documents": [d.name for d in documents],
                 "calibration": calib_stats, "recall": {}, "mass": {}, "per_layer_recall": {}}  # fmt: skip
    for name in weights:
        for b in map(label, budgets):
            per = {layer: acc[(name, b, layer)] for layer in layers}
            out["recall"].setdefault(name, {})[b] = round(sum(v[0] / v[2] for v in per.values()) / len(per), 4)
            out["mass"].setdefault(name, {})[b] = round(sum(v[1] / v[2] for v in per.values()) / len(per), 4)
            out["per_layer_recall"].setdefault(name, {})[b] = {str(layer): round(v[0] / v[2], 4) for layer, v in per.items()}
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("model", nargs="?", default="smollm2")
    ap.add_argument("--layers", required=True, help="comma-separated hashed layers, e.g. 2,11,20,29")
    ap.add_argument("--rbits", type=int, default=128)
    ap.add_argument("--effort", default="full")
    ap.add_argument("--variant", action="append", default=[], help="NAME:[KEY=VALUE,...] TrainConfig overrides (repeatable)")
    ap.add_argument("--docs", type=int, default=2)
    ap.add_argument("--doc-tokens", type=int, default=4096)
    ap.add_argument("--queries", type=int, default=96, help="query positions per document")
    ap.add_argument("--budgets", default="1/32,1/16,512")
    ap.add_argument("--device", default=None)
    ap.add_argument("--calib", type=Path, default=None, help="calibration prompts (.jsonl/.txt); default: the bundled prompts")
    ap.add_argument("-o", "--output", type=Path, default=None, help="write the results as JSON here")
    a = ap.parse_args(argv)
    try:
        from hatac.artifact import store as artifact
        from hatac.data.calib import load_calibration
        from hatac.data import calibration_file
        from hatac.data.texts import eval_documents

        variants = dict(parse_variant(v) for v in a.variant) or {"default": {}}
        layers = [int(x) for x in a.layers.split(",")]
        model_id = a.model
        from hatac.data.assets import resolve

        model_id = resolve(model_id)  # a bundled model's name ('smollm2', 'gemma3-270m') -> its folder
        model, tok = artifact.load_source_model(model_id, artifact.parse_device(a.device), torch.float32)
        em = EvalModel(model)
        samples = load_calibration(a.calib or calibration_file(), tok)
        docs = eval_documents(tok, a.doc_tokens, a.doc_tokens, n=a.docs)
        res = screen(em, samples, docs, layers, a.rbits, variants, a.effort, tuple(parse(b) for b in a.budgets.split(",")), a.queries)
    except HatacError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    for key in ("recall", "mass"):
        print(f"{key} (mean over layers {a.layers}, r {a.rbits}):")
        for name, by_b in res[key].items():
            print(f"  {name:12s} " + "  ".join(f"{b} {v:.3f}" for b, v in by_b.items()))
    if a.output:
        a.output.write_text(json.dumps(res, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
