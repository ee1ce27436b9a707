"""Perplexity with top-k attention at every position, one pass per document (or per batch of documents).

Each document runs once through the decode graph (hashed layers select with the policy at every
position, causally: equal to decoding it token by token; the first ``dense_layers`` layers stay dense),
and once through the dense prefill graph for the baseline. The loss counts the tokens at positions
``>= loss_from`` only, where the context is long enough for the budget to matter; logits are computed
for those positions only. Documents of equal length can run as the rows of one batch
(:func:`documents_nll`): every row computes what it would alone (rows never share a selection), and on a
GPU one pass of B rows costs about what one row does, since the per-layer selection is launch-bound.
"""

from __future__ import annotations

import torch

from hatac.evaluation.policies import Policy
from hatac.evaluation.session import EvalModel


@torch.no_grad()
def documents_nll(em: EvalModel, docs: list[list[int]], policy: Policy | None, budget: float, loss_from: int) -> list[tuple[float, int]]:
    """Per document, (summed negative log-likelihood, tokens) of its tokens at positions ``loss_from..``.

    ``docs`` must have equal lengths (they run as one batch); ``policy`` None runs dense attention."""
    if len({len(d) for d in docs}) != 1:
        raise ValueError(f"documents of one batch must have equal lengths, got {sorted({len(d) for d in docs})}")
    x = torch.tensor(docs, dtype=torch.long)
    n = x.shape[1]
    if not 1 <= loss_from < n:
        raise ValueError(f"loss_from must be in [1, {n}), got {loss_from}")
    cache = em.new_cache(capacity=n)
    if policy is None:
        logits = em.dense(cache, x, logits_from=loss_from - 1)
    else:
        logits = em.sparse(cache, x, policy, budget, logits_from=loss_from - 1)
    target = x[:, loss_from:].to(logits.device)
    out = []
    for row in range(x.shape[0]):  # one row at a time: a float copy of every row's logits can be GBs
        nll = torch.nn.functional.cross_entropy(logits[row, :-1].float(), target[row], reduction="sum").item()  # row i predicts token loss_from + i
        out.append((nll, int(target.shape[1])))
    return out


def document_nll(em: EvalModel, ids: list[int], policy: Policy | None, budget: float, loss_from: int) -> tuple[float, int]:
    """(summed negative log-likelihood, tokens) of the tokens at positions ``loss_from..`` of ``ids``."""
    return documents_nll(em, [ids], policy, budget, loss_from)[0]
