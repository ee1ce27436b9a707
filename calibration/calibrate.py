"""Calibrate every hashed layer: collected pairs in, one W (Hkv, D, r) per layer out, with its recall.

Layers are trained one at a time. Memory bound beyond what the collector already stores (see
collect.py): one layer's padded float32 copies of its stored queries and keys on the training device, the
cached label matrices of its training batches (4 bytes x Hq x sum over training queries of the padded key
length of their batch), and one mini-batch's activations (a few tensors of ``max_batch_pairs`` entries).
All of it is released before the next layer starts.

Initial W = :func:`random_weights` (the sign-random-projection baseline) for the same seed, so
``recall_random`` is the recall of exactly the W that training started from.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import torch

from hatac.config import HataConfig
from hatac.graphs import LayerSpec
from hatac.hashing import HashingInputs, Weights, register_hash_method

from .collect import PairCollector
from .metrics import oracle_topk, recall_at_k
from .train import TrainConfig, train_layer


def layer_seed(seed: int, layer_idx: int) -> int:
    """The per-layer seed of random_weights and of the batch order."""
    return (seed * 1_000_003 + layer_idx * 9_176 + 1) % (2**63)


def random_weights(layers: Iterable[int], hkv: int, d: int, r: int, seed: int = 0) -> dict[int, torch.Tensor]:
    """Untrained W per layer: standard normal (Hkv, D, r) float32 on cpu, from a Generator seeded per layer.

    The same (seed, layer) gives the same W whatever other layers are asked for."""
    out = {}
    for layer in layers:
        g = torch.Generator().manual_seed(layer_seed(seed, layer))
        out[layer] = torch.randn(hkv, d, r, generator=g, dtype=torch.float32)
    return out


@dataclass
class CalibrationResult:
    """weights: {layer: (Hkv, D, r) float32 cpu}; stats: {layer: recall_learned, recall_random, steps,
    best_step, seconds, n_queries (train + held-out), n_train, n_heldout, n_keys, n_pairs}."""

    weights: dict[int, torch.Tensor]
    stats: dict[int, dict] = field(default_factory=dict)
    config: TrainConfig | None = None


def calibrate(
    collector: PairCollector,
    layers: Iterable[int],
    head_dim: int,
    n_kv_heads: int,
    n_q_heads: int,
    rbits: int,
    budget: float,
    seed: int = 0,
    device: torch.device | str | None = None,
    progress: Callable[[str], None] | None = None,
    config: TrainConfig | None = None,
) -> CalibrationResult:
    """Train W for each of ``layers`` from the collector's pairs and measure held-out recall@budget.

    device None trains where the collector stores its tensors. ``progress`` gets one line per layer.
    A layer with no collected queries keeps its random W (steps 0, recalls NaN).
    """
    if (collector.head_dim, collector.n_kv_heads, collector.n_q_heads) != (head_dim, n_kv_heads, n_q_heads):
        raise ValueError(
            f"collector has (D, Hkv, Hq) = {(collector.head_dim, collector.n_kv_heads, collector.n_q_heads)}, "
            f"calibrate got {(head_dim, n_kv_heads, n_q_heads)}"
        )
    if rbits % 32:
        raise ValueError(f"rbits must be a multiple of 32, got {rbits}")
    cfg = config or TrainConfig()
    layers = list(layers)
    device = torch.device(device) if device is not None else collector.device
    init = random_weights(layers, n_kv_heads, head_dim, rbits, seed)
    result = CalibrationResult(weights={}, config=cfg)
    for layer in layers:
        t0 = time.perf_counter()
        train = collector.batches(layer, "train", cfg.max_batch_pairs, device)
        held = collector.batches(layer, "heldout", cfg.max_batch_pairs, device)
        stats = {
            "n_queries": collector.n_queries(layer),
            "n_train": collector.n_queries(layer, "train"),
            "n_heldout": collector.n_queries(layer, "heldout"),
            "n_keys": collector.n_keys(layer),
            "n_pairs": collector.n_pairs(layer),
        }
        if not train:
            result.weights[layer] = init[layer]
            stats.update(recall_learned=float("nan"), recall_random=float("nan"), steps=0, best_step=0,
                         seconds=time.perf_counter() - t0)
        else:
            tr = train_layer(train, held, init[layer], budget, cfg, seed=layer_seed(seed, layer))
            result.weights[layer] = tr.w.detach().float().cpu().contiguous()
            stats.update(recall_learned=tr.recall_best, recall_random=tr.recall_init, steps=tr.steps,
                         best_step=tr.best_step, seconds=time.perf_counter() - t0)
        del train, held
        result.stats[layer] = stats
        if progress is not None:
            progress(
                f"layer {layer}: recall@{budget:g} {stats['recall_random']:.3f} -> {stats['recall_learned']:.3f} "
                f"(random -> learned), {stats['steps']} steps, {stats['seconds']:.1f}s, "
                f"{stats['n_train']}+{stats['n_heldout']} queries, {stats['n_keys']} keys"
            )
    return result


def evaluate_weights(
    collector: PairCollector,
    weights: dict[int, torch.Tensor],
    budget: float,
    split: str = "heldout",
    device: torch.device | str | None = None,
    max_pairs: int = 1 << 24,
) -> dict[int, float]:
    """recall@budget of given W per layer on a collector split (e.g. to score saved weights)."""
    out = {}
    for layer, w in weights.items():
        batches = collector.batches(layer, split, max_pairs, device)
        with torch.no_grad():
            oracles = [oracle_topk(b, budget) for b in batches]
            out[layer] = recall_at_k(w, batches, budget, oracles=oracles)
    return out


@register_hash_method("random")
def random_hashing(specs: dict[int, LayerSpec], config: HataConfig, inputs: HashingInputs) -> tuple[Weights, dict]:
    """Sign random projection: the untrained LSH baseline, the very W learned hashing starts from."""
    weights = {}
    for layer, s in specs.items():
        if s.hashed:
            weights.update(random_weights([layer], s.n_kv_heads, s.head_dim, s.rbits, config.seed))
    return weights, {"method": "random", "seed": config.seed}
