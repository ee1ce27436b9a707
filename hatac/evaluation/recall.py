"""Recall@k: how much of the exact top-k (the oracle's selection) a policy's selection holds, per layer.

Queries and keys are the dense model's post-RoPE q and k (the observe graph) on evaluation documents.
For sampled query positions, both selections come from :func:`hatac.evaluation.policies.select` at the
same budget (so through the same ``select_topk``, same keep count); recall is
``|policy set & oracle set| / |oracle set|`` per (query, KV head), averaged over them, per layer.

Beside it, **attention mass**: the share of the dense softmax attention (averaged over the group's G
query heads) that falls on the selected tokens. Recall weighs every top-k token alike; mass weighs them
by what attention gives them, so it sees a selection that drops the few tokens holding most of the
attention (the first token, the query's own) even when its recall is high.
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


def attention_probs(qs: torch.Tensor, k: torch.Tensor, q_pos: torch.Tensor, scale: float) -> torch.Tensor:
    """(B, Hkv, S, T) dense causal softmax attention, averaged over each KV head's G query heads."""
    b, hq, s, d = qs.shape
    hkv, t = k.shape[1], k.shape[2]
    logits = torch.matmul(qs.float().reshape(b, hkv, hq // hkv, s, d), k.float().unsqueeze(2).transpose(-1, -2)) * scale
    future = torch.arange(t, device=k.device).view(1, 1, 1, 1, t) > q_pos.view(b, 1, 1, s, 1)
    return logits.masked_fill(future, float("-inf")).softmax(-1).mean(2)


def mass(idx: torch.Tensor, probs: torch.Tensor) -> torch.Tensor:
    """Per row: the attention mass on the selected slots (-1 unused). idx (..., K), probs (..., T)."""
    picked = torch.gather(probs, -1, idx.long().clamp_min(0))
    return (picked * (idx >= 0)).sum(-1)


@torch.no_grad()
def layer_recall(
    q: torch.Tensor, k: torch.Tensor, positions: torch.Tensor, policies: dict, budgets: list[float], layer: int, scale: float | None = None
) -> dict:
    """{policy: {budget: (sum of per-row recall, sum of per-row attention mass, rows)}} for one layer of one
    document. q (1, Hq, L, D), k (1, Hkv, L, D); ``positions`` the query rows; keys are every slot up to
    each query; ``scale`` the attention scale (default 1/sqrt(D))."""
    pos = positions.to(q.device)
    qs = q[:, :, pos]
    q_pos = pos.view(1, -1)
    t = int(pos.max()) + 1
    kc = k[:, :, :t]
    probs = attention_probs(qs, kc, q_pos, scale if scale is not None else q.shape[-1] ** -0.5)
    out: dict = {name: {} for name in policies}
    oracle = Oracle()
    for budget in budgets:
        width = topk_width(t, budget)
        true = select(oracle, qs, kc, q_pos, width, budget, layer)
        for name, policy in policies.items():
            w = topk_width(t, budget, policy.force_sink, policy.force_recent)
            pred = select(policy, qs, kc, q_pos, w, budget, layer)
            hits, n = overlap(pred, true, t)
            r = (hits.float() / n.clamp_min(1).float()).sum().item()
            out[name][budget] = (r, mass(pred, probs).sum().item(), int(n.numel()))
    return out
