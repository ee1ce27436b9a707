"""Validation metric for hash training: recall of the true top-k keys at the inference budget.

Definition (chosen to match what decode does, through hatac.reference):
- Hash selection: ``hash_encode`` queries and keys with W, ``hamming_scores`` (Hamming distance summed
  over the G query heads of each KV head), ``select_topk`` at ``budget`` (fraction or token count, with
  ``keep_counts``' rules) over keys 0..pos: exactly the decode path's selection, one per KV head.
- Oracle selection: the same ``select_topk`` (same keep count, same sink/recent forcing, same tie rule) on
  the exact scores ``sum over the group's G query heads of q.k`` (largest wins). Summing raw logits over
  the group mirrors the summed Hamming score: one shared selection per KV head, scored by the whole group.
- recall = |hash set & oracle set| / |oracle set| per (query, KV head), averaged uniformly over all
  (query, KV head) rows. Forced sink/recent slots are in both sets, so keep them 0 (the default) to
  measure the hash alone.
"""

from __future__ import annotations

import torch

from hatac.reference import hamming_scores, hash_encode, select_topk, topk_width

from .collect import PairBatch


def group_scores(batch: PairBatch) -> torch.Tensor:
    """(P, Hkv, n, L) exact q.k summed over each KV head's G query heads."""
    p, hq, n, _ = batch.q.shape
    hkv = batch.k.shape[1]
    return batch.exact_scores().reshape(p, hkv, hq // hkv, n, -1).sum(2)


def _q_pos(batch: PairBatch) -> torch.Tensor:
    return batch.pos.clamp_min(0)  # padded rows select slot 0; they are masked out of the mean


def oracle_topk(batch: PairBatch, budget: float, sink: int = 0, recent: int = 0) -> torch.Tensor:
    """(P, Hkv, n, K) int32 slots of the true top keys (see module doc), -1 padded."""
    length = batch.k.shape[2]
    kk = topk_width(length, budget, sink, recent)
    return select_topk(-group_scores(batch), _q_pos(batch), kk, budget, sink, recent)


def hash_topk(w: torch.Tensor, batch: PairBatch, budget: float, sink: int = 0, recent: int = 0) -> torch.Tensor:
    """(P, Hkv, n, K) int32 slots the hash selects with W (Hkv, D, R), exactly as decode would."""
    length = batch.k.shape[2]
    kk = topk_width(length, budget, sink, recent)
    w = w.to(batch.q.device)
    scores = hamming_scores(hash_encode(batch.q, w), hash_encode(batch.k, w))
    return select_topk(scores, _q_pos(batch), kk, budget, sink, recent)


def overlap(pred: torch.Tensor, true: torch.Tensor, length: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per row: how many of ``true``'s slots ``pred`` also holds, and ``true``'s size (-1 = unused)."""
    sentinel = length
    true_l = torch.where(true >= 0, true.long(), torch.full_like(true, sentinel, dtype=torch.long))
    pred_l = torch.where(pred >= 0, pred.long(), torch.full_like(pred, sentinel, dtype=torch.long))
    member = torch.zeros(*true.shape[:-1], length + 1, dtype=torch.bool, device=true.device)
    member.scatter_(-1, true_l, True)
    member[..., sentinel] = False
    hits = member.gather(-1, pred_l).sum(-1)
    return hits, (true >= 0).sum(-1)


def batch_recall(
    w: torch.Tensor,
    batch: PairBatch,
    budget: float,
    sink: int = 0,
    recent: int = 0,
    oracle: torch.Tensor | None = None,
) -> tuple[float, int]:
    """(sum of per-row recall, number of rows) over a batch's real (query, KV head) rows."""
    true = oracle if oracle is not None else oracle_topk(batch, budget, sink, recent)
    pred = hash_topk(w, batch, budget, sink, recent)
    hits, n_true = overlap(pred, true, batch.k.shape[2])
    rows = batch.qmask.unsqueeze(1).expand_as(hits) & (n_true > 0)
    rec = hits.double() / n_true.clamp_min(1).double()
    return float(rec[rows].sum()), int(rows.sum())


def recall_at_k(
    w: torch.Tensor,
    batches: list[PairBatch],
    budget: float,
    sink: int = 0,
    recent: int = 0,
    oracles: list[torch.Tensor] | None = None,
) -> float:
    """Mean recall of the true top-k (module doc) over all batches; ``oracles`` caches oracle_topk per batch."""
    total, count = 0.0, 0
    for i, b in enumerate(batches):
        s, c = batch_recall(w, b, budget, sink, recent, oracles[i] if oracles is not None else None)
        total, count = total + s, count + c
    return total / count if count else float("nan")
