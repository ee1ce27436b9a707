"""Perplexity with top-k attention at every position, one pass per document.

Each document runs once through the decode graph (hashed layers select with the policy at every
position, causally: equal to decoding it token by token; the first ``dense_layers`` layers stay dense),
and once through the dense prefill graph for the baseline. The loss counts the tokens at positions
``>= loss_from`` only, where the context is long enough for the budget to matter; logits are computed
for those positions only.
"""

from __future__ import annotations

import torch

from hatac.evaluation.policies import Policy
from hatac.evaluation.session import EvalModel


@torch.no_grad()
def document_nll(em: EvalModel, ids: list[int], policy: Policy | None, budget: float, loss_from: int) -> tuple[float, int]:
    """(summed negative log-likelihood, tokens) of the tokens at positions ``loss_from..`` of ``ids``.

    ``policy`` None runs dense attention."""
    x = torch.tensor([ids], dtype=torch.long)
    n = x.shape[1]
    if not 1 <= loss_from < n:
        raise ValueError(f"loss_from must be in [1, {n}), got {loss_from}")
    cache = em.new_cache(capacity=n)
    if policy is None:
        logits = em.dense(cache, x, logits_from=loss_from - 1)
    else:
        logits = em.sparse(cache, x, policy, budget, logits_from=loss_from - 1)
    logits = logits[0, :-1].float()  # row i predicts token loss_from + i
    target = x[0, loss_from:].to(logits.device)
    nll = torch.nn.functional.cross_entropy(logits, target, reduction="sum").item()
    return nll, int(target.numel())
