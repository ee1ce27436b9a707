"""Passkey retrieval: a random 5-digit number hidden at a chosen depth of a haystack, asked for at the end.

Prompt (the classic passkey task): an instruction, filler sentences repeated to the haystack length, the
needle ``The pass key is 12345. Remember it. 12345 is the pass key.`` placed at ``depth`` (fraction of
the filler before it), more filler, then ``What is the pass key? The pass key is`` and the answer.

Protocol, as HATA decodes: the haystack (instruction, filler and needle) is prefilled densely; the
question and the answer are then decoded with top-k attention under each policy and budget (one decode
chunk, teacher-forced: equal to feeding them one at a time). A trial succeeds when the greedy choice
at every answer position is the right token, i.e. exactly when greedy decoding would print the number.
The dense baseline decodes the same tokens with dense attention.

Cost: the filler before the needle is the same for every trial at a (length, depth), so it is prefilled
once and the cache is cut back to it for each trial; each policy then re-decodes only the question and
answer over the trial's cache (the slots it writes are cut back too).
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


def _correct(logits: torch.Tensor, prompt: PasskeyPrompt) -> bool:
    """logits (1, Q, V) over the query chunk: row i predicts query token i + 1."""
    n = prompt.n_answer
    pred = logits[0, -n - 1 : -1].argmax(-1).cpu()
    return bool(torch.equal(pred, torch.tensor(prompt.query[-n:])))


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
) -> dict:
    """Trials at one (length, depth): {"dense": [bool per trial], policy: {budget: [bool per trial]}}."""
    prompts = [builder.prompt(length, depth, k) for k in keys]
    prefix = prompts[0].prefix
    cap = max(p.context_tokens + len(p.query) for p in prompts)
    cache = em.new_cache(capacity=cap)
    em.dense(cache, torch.tensor([prefix]), logits_from=len(prefix) - 1)
    out: dict = {"dense": [], **{name: {b: [] for b in budgets} for name in policies}}
    for p in prompts:
        assert p.prefix == prefix
        em.truncate(cache, len(prefix))
        em.dense(cache, torch.tensor([p.rest]), logits_from=len(p.rest) - 1)
        ctx = p.context_tokens
        query = torch.tensor([p.query])
        out["dense"].append(_correct(em.dense(cache, query), p))
        for name, policy in policies.items():
            for b in budgets:
                em.truncate(cache, ctx)
                out[name][b].append(_correct(em.sparse(cache, query, policy, b), p))
        if on_trial:
            on_trial()
    return out
