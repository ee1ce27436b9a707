"""Passkey retrieval: a random 5-digit number hidden at a chosen depth of a haystack, asked for at the end.

Prompt (the classic passkey task): an instruction, filler sentences repeated to the haystack length, the
needle ``The pass key is 12345. Remember it. 12345 is the pass key.`` placed at ``depth`` (fraction of
the filler before it), more filler, then ``What is the pass key? The pass key is`` and the answer.

Protocol, as HATA decodes: the haystack (instruction, filler and needle) is prefilled densely; the
question and the answer are then decoded with top-k attention under each policy and budget (one decode
chunk, teacher-forced: equal to feeding them one at a time). A trial succeeds when the greedy choice
at every answer position is the right token, i.e. exactly when greedy decoding would print the number.
The dense baseline decodes the same tokens with dense attention.

Cost: the trials at one (length, depth) share the filler before the needle and, when their keys
tokenize to the same lengths, run as the rows of one batch: the haystack is prefilled once for the
batch, and each policy and budget re-decodes only the question and answer over it (the cache is cut back
to the haystack each time). On a GPU a batch costs about what one trial does.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Callable

import torch

from hatac.evaluation.policies import Policy
from hatac.evaluation.session import EvalModel

INTRO = (
    "There is an important piece of information hidden inside a lot of irrelevant text. Find it and "
    "memorize it. I will quiz you about the important information there.\n\n"
)
FILLER = "The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again.\n"
NEEDLE = "\nThe pass key is {key}. Remember it. {key} is the pass key.\n\n"
QUESTION = "\nWhat is the pass key? The pass key is"
ANSWER = " {key}"


@dataclass
class PasskeyPrompt:
    prefix: list[int]  # instruction + filler before the needle (shared by the trials at one depth)
    rest: list[int]  # needle + filler after it
    query: list[int]  # question + answer
    n_answer: int  # answer tokens at the end of ``query``
    key: str

    @property
    def context_tokens(self) -> int:
        return len(self.prefix) + len(self.rest)


class PasskeyBuilder:
    """Token-exact prompts for a tokenizer: the haystack is ``length`` tokens up to the question."""

    def __init__(self, tokenizer):
        self.tok = tokenizer
        enc = lambda s: list(tokenizer(s, add_special_tokens=False, verbose=False)["input_ids"])  # noqa: E731
        self.enc = enc
        self.intro = list(tokenizer(INTRO, add_special_tokens=True, verbose=False)["input_ids"])
        self.filler = enc(FILLER)

    def prompt(self, length: int, depth: float, key: str) -> PasskeyPrompt:
        needle = self.enc(NEEDLE.format(key=key))
        room = length - len(self.intro) - len(needle)
        n_fill = max(room // len(self.filler), 1)
        before = round(n_fill * depth)
        prefix = self.intro + self.filler * before
        rest = needle + self.filler * (n_fill - before)
        question, answer = self.enc(QUESTION), self.enc(ANSWER.format(key=key))
        return PasskeyPrompt(prefix, rest, question + answer, len(answer), key)


def random_key(rng: random.Random) -> str:
    return str(rng.randint(10_000, 99_999))


def _correct(logits: torch.Tensor, prompts: list[PasskeyPrompt]) -> list[bool]:
    """logits (B, Q, V) over the query chunks, one row a prompt: row i predicts query token i + 1."""
    n = prompts[0].n_answer
    pred = logits[:, -n - 1 : -1].argmax(-1).cpu()
    return [bool(torch.equal(pred[i], torch.tensor(p.query[-n:]))) for i, p in enumerate(prompts)]


@torch.no_grad()
def run_depth(
    em: EvalModel,
    builder: PasskeyBuilder,
    length: int,
    depth: float,
    keys: list[str],
    policies: dict[str, Policy],
    budgets: list[float],
    on_trial: Callable[[], None] | None = None,
    batch_rows: int = 1,
) -> dict:
    """Trials at one (length, depth): {"dense": [bool per trial], policy: {budget: [bool per trial]}}.

    Trials whose needle and question have equal token lengths run as the rows of one batch (at most
    ``batch_rows``); each row computes what it would alone."""
    prompts = [builder.prompt(length, depth, k) for k in keys]
    prefix = prompts[0].prefix
    out: dict = {"dense": [None] * len(prompts), **{name: {b: [None] * len(prompts) for b in budgets} for name in policies}}
    groups: dict = {}
    for i, p in enumerate(prompts):
        assert p.prefix == prefix
        groups.setdefault((len(p.rest), len(p.query), p.n_answer), []).append(i)
    cap = max(p.context_tokens + len(p.query) for p in prompts)
    caches: dict = {}
    for idx in groups.values():
        for c in range(0, len(idx), max(1, batch_rows)):
            rows = idx[c : c + max(1, batch_rows)]
            ps = [prompts[i] for i in rows]
            ctx = ps[0].context_tokens
            if len(ps) not in caches:  # the shared filler, prefilled once per batch size
                caches[len(ps)] = em.new_cache(capacity=cap)
                em.dense(caches[len(ps)], torch.tensor([prefix] * len(ps)), logits_from=len(prefix) - 1)
            cache = caches[len(ps)]
            em.truncate(cache, len(prefix))
            em.dense(cache, torch.tensor([p.rest for p in ps]), logits_from=len(ps[0].rest) - 1)
            query = torch.tensor([p.query for p in ps])
            for i, ok in zip(rows, _correct(em.dense(cache, query), ps)):
                out["dense"][i] = ok
            for name, policy in policies.items():
                for b in budgets:
                    em.truncate(cache, ctx)
                    for i, ok in zip(rows, _correct(em.sparse(cache, query, policy, b), ps)):
                        out[name][b][i] = ok
            if on_trial:
                for _ in rows:
                    on_trial()
    return out
