"""The long-context tasks (:mod:`hatac.evaluation.tasks`) under every policy and budget, against dense.

Protocol, as passkey's: a trial's context (instruction and haystack with its needles) is prefilled densely
once; then, for dense and for each policy and budget, the cache is cut back to the context, the question
is decoded as one chunk (top-k attention at every position of it under the policy; dense attention for
the reference), and the answer is generated greedily, one token a step under the same policy, up to the
task's ``max_new`` tokens or the tokenizer's EOS. The answer's text is scored with RULER's string match
(fraction of the expected strings it contains). Trials run one at a time.

Results per task: dense's mean score (and up to three example answers), and per method and budget the
mean score (``acc``) and the mean over the trials dense answers fully (``acc_where_dense_ok``).
"""

from __future__ import annotations

from typing import Callable

import torch

from hatac.evaluation.budgets import label
from hatac.evaluation.policies import Policy
from hatac.evaluation.session import EvalModel
from hatac.evaluation.tasks import TaskBuilder, TaskSample, string_match

N_EXAMPLES = 3


@torch.no_grad()
def generate(em: EvalModel, cache, query: list[int], max_new: int, eos: set[int], policy: Policy | None = None, budget: float = 0.0) -> list[int]:
    """Greedy tokens after ``query`` (decoded as one chunk on ``cache``), ``policy`` None for dense attention."""

    def step(ids: list[int], logits_from: int | None) -> torch.Tensor:
        x = torch.tensor([ids])
        if policy is None:
            return em.dense(cache, x, logits_from=logits_from)
        return em.sparse(cache, x, policy, budget, logits_from=logits_from)

    logits = step(query, len(query) - 1)
    out: list[int] = []
    for i in range(max_new):
        tok = int(logits[0, -1].argmax())
        if tok in eos:
            break
        out.append(tok)
        if i + 1 < max_new:
            logits = step([tok], None)
    return out


def run_sample(em: EvalModel, tokenizer, sample: TaskSample, policies: dict[str, Policy], budgets: list[float]) -> dict:
    """{"dense": (score, answer text), policy name: {budget: (score, answer text)}} for one prompt."""
    eos = {tokenizer.eos_token_id} if tokenizer.eos_token_id is not None else set()
    cache = em.new_cache(capacity=sample.length + sample.max_new)
    em.dense(cache, torch.tensor([sample.context]), logits_from=len(sample.context) - 1)

    def answer(policy, budget):
        em.truncate(cache, len(sample.context))
        text = tokenizer.decode(generate(em, cache, sample.query, sample.max_new, eos, policy, budget), skip_special_tokens=True)
        return string_match(text, sample.answers), text

    out: dict = {"dense": answer(None, 0.0)}
    for name, policy in policies.items():
        out[name] = {b: answer(policy, b) for b in budgets}
    return out


def run_tasks(
    em: EvalModel,
    tokenizer,
    builder: TaskBuilder,
    tasks: list[str],
    length: int,
    trials: int,
    seed: int,
    policies: dict[str, Policy],
    budgets: list[float],
    on_trial: Callable[[str], None] | None = None,
) -> dict:
    """Every task's trials (samples seeded by (task, length, seed, trial)), aggregated per method and budget."""
    res: dict = {}
    for task in tasks:
        samples = [builder.build(task, length, f"{seed}-{t}") for t in range(trials)]
        runs = []
        for sample in samples:
            runs.append(run_sample(em, tokenizer, sample, policies, budgets))
            if on_trial:
                on_trial(task)
        dense = [r["dense"][0] for r in runs]
        entry: dict = {
            "prompt_tokens": round(sum(s.length for s in samples) / len(samples), 1),
            "dense": {"acc": _mean(dense), "trials": len(runs),
                      "examples": [{"expected": s.answers, "output": r["dense"][1]} for s, r in zip(samples[:N_EXAMPLES], runs)]},  # fmt: skip
        }
        for name in policies:
            entry[name] = {}
            for b in budgets:
                scores = [r[name][b][0] for r in runs]
                where = [sc for sc, d in zip(scores, dense) if d == 1.0]
                entry[name][label(b)] = {"acc": _mean(scores), "acc_where_dense_ok": _mean(where) if where else None}
        res[task] = entry
    return res


def _mean(xs: list[float]) -> float:
    return round(sum(xs) / len(xs), 4)
