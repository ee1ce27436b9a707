"""HATA training labels: which keys a query should hash close to, and how strongly.

Per query head, the top ``frac`` (10%) of its causal keys by exact q.k are positives with weights falling
linearly from ``hi`` (20, the best key) to ``lo`` (1, the last positive); every other causal key is a
negative with weight -1; non-causal / padded slots get 0 so they drop out of any weighted sum. Labels are
computed on demand from the stored queries and keys (never stored by the collector), so changing the label
rule needs no re-capture.
"""

from __future__ import annotations

import torch


def positives_count(n_valid: torch.Tensor, frac: float = 0.1) -> torch.Tensor:
    """How many positives a row with ``n_valid`` causal keys gets: ceil(frac * n), at least 1 if n > 0."""
    n = n_valid.to(torch.int64)
    m = torch.ceil(n.to(torch.float64) * frac).to(torch.int64)
    return torch.where(n > 0, m.clamp_min(1), torch.zeros_like(m)).minimum(n)


def hata_labels(
    scores: torch.Tensor, valid: torch.Tensor, frac: float = 0.1, hi: float = 20.0, lo: float = 1.0
) -> torch.Tensor:
    """Label every (query, key) pair of a score matrix.

    scores: (..., L) exact q.k (any float dtype); valid: bool, broadcastable to scores, True where the key
    is causal for the query. Returns float32 (..., L): hi..lo (linear by rank, best first) on the top
    ``positives_count`` valid keys of each row, -1 on the other valid keys, 0 on invalid slots. Ties between
    equal scores are broken by ``torch.topk`` (deterministic for a given input).
    """
    valid = valid.expand_as(scores)
    m = positives_count(valid.sum(-1), frac)  # (...)
    labels = -valid.to(torch.float32)
    m_max = int(m.max()) if m.numel() else 0
    if m_max == 0:
        return labels
    masked = scores.float().masked_fill(~valid, float("-inf"))
    top_idx = masked.topk(m_max, dim=-1, sorted=True).indices  # (..., m_max), best first
    rank = torch.arange(m_max, device=scores.device, dtype=torch.float32)
    denom = (m - 1).clamp_min(1).unsqueeze(-1).to(torch.float32)
    weight = hi - (hi - lo) * rank / denom  # (..., m_max); m == 1 gives hi
    in_top = rank < m.unsqueeze(-1)
    weight = torch.where(in_top, weight, labels.gather(-1, top_idx))
    return labels.scatter(-1, top_idx, weight)
