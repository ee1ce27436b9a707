"""Recall@k: how much of the exact top-k (the oracle's selection) a policy's selection holds, per layer.

Queries and keys are the dense model's post-RoPE q and k (the observe graph) on evaluation documents.
For sampled query positions, both selections come from :func:`hatac.evaluation.policies.select` at the
same budget (so through the same ``select_topk``, same keep count); recall is
``|policy set & oracle set| / |oracle set|`` per (query, KV head), averaged over them, per layer.
"""

from __future__ import annotations

import torch

from hatac.evaluation.policies import Oracle, Policy, select
from hatac.reference import topk_width


def overlap(pred: torch.Tensor, true: torch.Tensor, t: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per row of (..., K) slot lists (-1 unused): how many of ``true``'s slots ``pred`` holds, and |true|."""
    member = torch.zeros(*true.shape[:-1], t + 1, dtype=torch.bool, device=true.device)
    member.scatter_(-1, torch.where(true >= 0, true.long(), t), True)
    member[..., t] = False
    hits = member.gather(-1, torch.where(pred >= 0, pred.long(), t)).sum(-1)
    return hits, (true >= 0).sum(-1)


def query_positions(length: int, start: int, n: int) -> torch.Tensor:
    """``n`` query positions spread evenly over [start, length) (all of them when fewer)."""
    start = min(max(start, 0), length - 1)
    if length - start <= n:
        return torch.arange(start, length)
    return torch.linspace(start, length - 1, n).round().long().unique()


@torch.no_grad()
def layer_recall(
    q: torch.Tensor, k: torch.Tensor, positions: torch.Tensor, policies: dict[str, Policy], budgets: list[float], layer: int
) -> dict[str, dict[float, tuple[float, int]]]:
    """{policy: {budget: (sum of per-row recall, rows)}} for one layer of one document.

    q (1, Hq, L, D), k (1, Hkv, L, D); ``positions`` the query rows; keys are every slot up to each query.
    """
    pos = positions.to(q.device)
    qs = q[:, :, pos]
    q_pos = pos.view(1, -1)
    t = int(pos.max()) + 1
    kc = k[:, :, :t]
    out: dict[str, dict[float, tuple[float, int]]] = {name: {} for name in policies}
    oracle = Oracle()
    for budget in budgets:
        width = topk_width(t, budget)
        true = select(oracle, qs, kc, q_pos, width, budget, layer)
        for name, policy in policies.items():
            pred = select(policy, qs, kc, q_pos, width, budget, layer)
            hits, n = overlap(pred, true, t)
            r = (hits.float() / n.clamp_min(1).float()).sum().item()
            out[name][budget] = (r, int(n.numel()))
    return out
