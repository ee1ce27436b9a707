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

from hatac.config import HataConfig
from hatac.errors import HatacError
from hatac.graphs import LayerSpec
from hatac.hashing import HashingInputs, Weights, register_hash_method

from .calibrate import calibrate
from .collect import PairCollector


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
        raise HatacError("learned hashing needs calibration prompts: pass --calib FILE.jsonl (or --hash random)")
    if not hashed:
        return {}, {"method": "learned", "layers": {}}
    if inputs.observe_graph is None or list(inputs.observed_layers) != hashed:
        raise HatacError("learned hashing needs the observe graph of the hashed layers")
    say = inputs.progress or (lambda msg: None)
    device = torch.device(inputs.device)
    t0 = time.perf_counter()
    collectors: dict[tuple, PairCollector] = {}
    layer_collector: dict[int, PairCollector] = {}
    for layer in hashed:
        s = specs[layer]
        key = (s.n_heads, s.n_kv_heads, s.head_dim)
        if key not in collectors:
            collectors[key] = PairCollector(*key, seed=config.seed, store_dtype=torch.float32)
        layer_collector[layer] = collectors[key]
    n_tokens = 0
    for i, ids in enumerate(inputs.samples):
        outs = _observe(inputs, ids, device)
        qk = outs[1:]
        for j, layer in enumerate(hashed):
            layer_collector[layer].add(layer, qk[2 * j][0], qk[2 * j + 1][0], prompt_id=i)
        del outs, qk
        n_tokens += len(ids)
        say(f"collected prompt {i + 1}/{len(inputs.samples)} ({len(ids)} tokens)")
    t_collect = time.perf_counter() - t0
    weights: Weights = {}
    stats: dict[str, dict] = {}
    for n, layer in enumerate(hashed, 1):
        s = specs[layer]
        res = calibrate(
            layer_collector[layer], [layer], s.head_dim, s.n_kv_heads, s.n_heads, s.rbits, s.budget,
            seed=config.seed, device=device, progress=lambda msg, n=n: say(f"[{n}/{len(hashed)}] {msg}"),
        )
        weights[layer] = res.weights[layer]
        stats[str(layer)] = {k: (round(v, 4) if isinstance(v, float) else v) for k, v in res.stats[layer].items()}
    learned = [v["recall_learned"] for v in stats.values() if v["recall_learned"] == v["recall_learned"]]
    random = [v["recall_random"] for v in stats.values() if v["recall_random"] == v["recall_random"]]
    summary = {
        "method": "learned",
        "seed": config.seed,
        "samples": len(inputs.samples),
        "tokens": n_tokens,
        "budget_for_recall": config.budget,
        "mean_recall_learned": round(sum(learned) / len(learned), 4) if learned else None,
        "mean_recall_random": round(sum(random) / len(random), 4) if random else None,
        "seconds_collect": round(t_collect, 1),
        "seconds_total": round(time.perf_counter() - t0, 1),
        "device": str(device),
        "layers": stats,
    }
    say(f"calibrated {len(hashed)} layers in {summary['seconds_total']}s: mean recall {summary['mean_recall_random']} (random) -> {summary['mean_recall_learned']} (learned)")
    return weights, summary
