"""``--hash learned``: run the calibration prompts through the observe graph, collect post-RoPE queries and
keys of every hashed layer, train W per layer, and record recall@budget of learned and random W.

The observe graph is the captured graph with each hashed layer's (q, k) exposed as outputs, so what is
collected is exactly what the rewritten attention will hash, for any architecture the capture handles.
Prompts run one at a time (no padding); each layer's sample is bounded by the collector (see
collect.py), and training runs layer by layer, so no step holds every layer's pairs at once.
"""

from __future__ import annotations

import time

import torch

from hatac.distributed import groups as distributed
from hatac.config import HataConfig
from hatac.errors import HatacError, SettingError
from hatac.graphs import LayerSpec
from hatac.hashing import HashingInputs, Weights, register_hash_method

from .calibrate import calibrate
from .collect import PairCollector
from .train import TrainConfig

# How much calibration work a conversion does. "full" is the trainer's default (32 query positions a
# prompt, up to 300 full-batch steps): minutes a layer on a 2-core CPU, seconds on a GPU. "fast" is the CPU
# setting: more query positions (48 a prompt, so the held-out set is ~130 queries on the 14 prompts of
# hatac/data/calib.jsonl) but one prompt a step (mini-batches of <= 2^20 pairs) at lr 0.3, 100 steps.
# Measured on SmolLM2 layers 2/12/24, r 128, held-out recall@1/32 (random 0.397): old fast (8 queries a
# prompt, full batch) 0.478 in 90 s a layer; this 0.50 in ~30 s (150 steps); lr 1.0 diverged. Since training
# starts from unit-norm columns (train.py), a SmolLM2 layer trains in ~1.5 s at this effort and the
# default `hatac convert smollm2` spends ~60 s collecting and ~40 s training (2-core CPU, 2026-12-07);
# 300 steps with patience 4 gained nothing on evaluation text (screen of layers 2/6/.../29, recall@1/32
# 0.483 vs 0.481, `python -m hatac.evaluation.screen smollm2 --layers 2,6,10,14,18,22,26,29 --effort fast
# --variant fast: --variant s300:max_steps=300,patience=4`). "auto" picks "full" on CUDA, "fast" elsewhere.
EFFORTS = {
    "full": {"queries_per_prompt": 32, "train": {}},
    "fast": {"queries_per_prompt": 48, "train": {"max_steps": 100, "eval_every": 25, "patience": 2, "lr": 0.3, "max_batch_pairs": 1 << 20}},
}


# Collected (query, key) data held at once: layers are calibrated in groups whose worst-case collector
# size (PairCollector's per-layer caps) fits in this many bytes, one pass over the prompts per group.
# SmolLM2-135M's 28 hashed layers (~55 MB each) fit in one group; a Llama-3-8B-shaped model (~290 MB a
# layer at the default caps) takes 3 passes instead of holding ~9 GB.
COLLECT_BYTES = 4 << 30
# From this many calibration prompts on, the held-out split is whole prompts (see PairCollector).
HELDOUT_PROMPTS_MIN = 10


def layer_groups(layers: list[int], specs: dict[int, LayerSpec], queries_per_prompt: int, budget_bytes: int) -> list[list[int]]:
    """Split ``layers`` into consecutive groups whose collectors' worst-case bytes fit ``budget_bytes``."""
    probe = PairCollector(1, 1, 1, queries_per_prompt=queries_per_prompt)
    groups: list[list[int]] = []
    used = 0
    for layer in layers:
        s = specs[layer]
        need = 4 * s.head_dim * (probe.max_keys_per_layer * s.n_kv_heads + probe.max_queries_per_layer * s.n_heads)
        if groups and used + need <= budget_bytes:
            groups[-1].append(layer)
            used += need
        else:
            groups.append([layer])
            used = need
    return groups


def resolve_effort(effort: str, device: torch.device) -> str:
    if effort == "auto":
        return "full" if device.type == "cuda" else "fast"
    if effort not in EFFORTS:
        raise SettingError("calib_effort", f"must be auto, {', '.join(EFFORTS)}; got {effort!r}")
    return effort


def _clean(v):
    """JSON-safe stats: NaN (a layer with nothing collected) becomes null, floats are rounded."""
    if isinstance(v, float):
        return None if v != v else round(v, 4)
    return v


def _observe(inputs: HashingInputs, ids: list[int], device) -> tuple:
    gm = inputs.observe_graph
    names = {n.name for n in gm.graph.nodes if n.op == "placeholder"}
    t = torch.tensor([ids], dtype=torch.long, device=device)
    feed = {"input_ids": t, "position_ids": torch.arange(len(ids), device=device).unsqueeze(0)}
    if "logits_to_keep" in names:
        feed["logits_to_keep"] = torch.tensor([len(ids) - 1], device=device)
    with torch.no_grad():
        return gm(**feed)


@register_hash_method("learned")
def learned_hashing(specs: dict[int, LayerSpec], config: HataConfig, inputs: HashingInputs) -> tuple[Weights, dict]:
    hashed = [layer for layer, s in specs.items() if s.hashed]
    if not inputs.samples:
        raise HatacError(
            "learned hashing needs calibration prompts: hatac.convert(model, config, samples=...) takes token-id lists "
            "(hatac.data.calibration_samples(tokenizer) gives the bundled prompts), or use HataConfig(hash='random')"
        )
    if not hashed:
        return {}, {"method": "learned", "layers": {}}
    if inputs.observe_graph is None or list(inputs.observed_layers) != hashed:
        raise HatacError("learned hashing needs the observe graph of the hashed layers")
    say = inputs.progress or (lambda msg: None)
    device = torch.device(inputs.device)
    effort = resolve_effort(config.calib_effort, device)
    plan = EFFORTS[effort]
    train_cfg = TrainConfig(**plan["train"])
    t0 = time.perf_counter()
    # Under torch.distributed (torchrun, one process a GPU) each process calibrates the layers of its rank
    # (layer i on rank i % N) and the weights are gathered: every process ends with all of them, equal to
    # a one-process run, since sampling and training are seeded per (seed, prompt) and (seed, layer).
    group = distributed.current()
    mine = hashed if group is None else [layer for layer in hashed if distributed.rank_of_layer(layer, group.world) == group.rank]
    qpp = plan["queries_per_prompt"]
    groups = layer_groups(mine, specs, qpp, COLLECT_BYTES)
    weights: Weights = {}
    stats: dict[str, dict] = {}
    n_tokens, t_collect, done = 0, 0.0, 0
    for gi, group_layers in enumerate(groups):
        # One pass over the prompts per group of layers: the collected pairs of at most COLLECT_BYTES
        # worth of layers are in memory at a time, then trained and dropped.
        t_group = time.perf_counter()
        collectors: dict[tuple, PairCollector] = {}
        layer_collector: dict[int, PairCollector] = {}
        for layer in group_layers:
            s = specs[layer]
            key = (s.n_heads, s.n_kv_heads, s.head_dim)
            if key not in collectors:
                collectors[key] = PairCollector(*key, queries_per_prompt=qpp, seed=config.seed, store_dtype=torch.float32,
                                                heldout_prompts=len(inputs.samples) >= HELDOUT_PROMPTS_MIN)
            layer_collector[layer] = collectors[key]
        n_tokens = 0
        where = f" (layer group {gi + 1}/{len(groups)})" if len(groups) > 1 else ""
        for i, ids in enumerate(inputs.samples):
            outs = _observe(inputs, ids, device)
            qk = outs[1:]
            for j, layer in enumerate(hashed):
                if layer in layer_collector:
                    layer_collector[layer].add(layer, qk[2 * j][0], qk[2 * j + 1][0], prompt_id=i)
            del outs, qk
            n_tokens += len(ids)
            say(f"collected prompt {i + 1}/{len(inputs.samples)} ({len(ids)} tokens){where}")
        t_collect += time.perf_counter() - t_group
        for layer in group_layers:
            done += 1
            s = specs[layer]
            res = calibrate(
                layer_collector[layer], [layer], s.head_dim, s.n_kv_heads, s.n_heads, s.rbits, s.budget,
                seed=config.seed, device=device, progress=lambda msg, n=done: say(f"[{n}/{len(mine)}] {msg}"), config=train_cfg,
            )
            weights[layer] = res.weights[layer]
            stats[str(layer)] = {k: _clean(v) for k, v in res.stats[layer].items()}
        del collectors, layer_collector
    if group is not None:
        parts = group.all_gather_object((weights, stats))
        weights = {layer: w for part in parts for layer, w in part[0].items()}
        weights = {layer: weights[layer] for layer in hashed}
        merged = {k: v for part in parts for k, v in part[1].items()}
        stats = {str(layer): merged[str(layer)] for layer in hashed}
    learned = [v["recall_learned"] for v in stats.values() if v["recall_learned"] is not None]
    random = [v["recall_random"] for v in stats.values() if v["recall_random"] is not None]
    summary = {
        "method": "learned",
        "seed": config.seed,
        "effort": effort,
        "samples": len(inputs.samples),
        "tokens": n_tokens,
        "budget_for_recall": config.budget,
        "mean_recall_learned": round(sum(learned) / len(learned), 4) if learned else None,
        "mean_recall_random": round(sum(random) / len(random), 4) if random else None,
        "seconds_collect": round(t_collect, 1),
        "layer_groups": len(groups),
        "seconds_total": round(time.perf_counter() - t0, 1),
        "device": str(device),
        "processes": group.world if group is not None else 1,
        "layers": stats,
    }
    # A layer whose trained W never beat its random start on the held-out queries keeps that start (the
    # best W seen); say so, in the output and the manifest, rather than ship it as "learned" in silence.
    summary["layers_not_improved"] = untrained = [
        int(k) for k, v in stats.items() if v["recall_learned"] is None or v["recall_random"] is None or v["recall_learned"] <= v["recall_random"]
    ]
    say(f"calibrated {len(hashed)} layers in {summary['seconds_total']}s: mean recall {summary['mean_recall_random']} (random) -> {summary['mean_recall_learned']} (learned)")
    if untrained:
        say(f"warning: {len(untrained)} of {len(hashed)} layers did not beat their random start on the held-out queries and keep it: "
            f"{', '.join(map(str, untrained))}")
    return weights, summary
