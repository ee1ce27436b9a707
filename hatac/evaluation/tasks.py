"""RULER-style long-context tasks, generated offline on haystacks of real prose, and RULER's scorer.

Four synthetic tasks after RULER (Hsieh et al., 2024), each a deterministic function of (tokenizer,
haystack, target length, seed), returning the prompt's token ids and the expected answer strings:

- ``niah_multikey``: ``n_keys`` needles "The special magic number for <key> is <value>." (keys are
  adjective-noun pairs, values 7-digit numbers) at random depths of the haystack; the question asks for
  one key's number. Expected: that value.
- ``niah_multivalue``: ``n_values`` needles for one key, each with its own number; the question asks for
  all of them. Expected: every value.
- ``vt`` (variable tracking): a chain "VAR A = 12345." then "VAR B = A.", "VAR C = B.", ... (``n_hops``
  hops, ``n_chains`` chains with distinct values, in order at random depths); the question asks which
  variables hold the first chain's value. Expected: every variable of that chain.
- ``cwe`` (common words extraction): a numbered list of words drawn from the prose's vocabulary, where
  ``n_common`` words appear ``common_freq`` times each and the others ``uncommon_freq`` times; the
  question asks for the ``n_common`` most common. Expected: those words. (The list is the haystack.)

Haystack: the lines of the evaluation plays (``hatac.data.texts.EVAL_PLAYS``, never a calibration play),
read from a seeded starting line; needles go between lines. Length: the prompt (context plus question)
is at most ``length`` tokens and within one haystack line (one list item for ``cwe``) of it. The prompt
is built from separately tokenized pieces (instruction, lines, needles, question), as the passkey prompt
is. Scoring: RULER's ``string_match_all``, the fraction of expected strings found (case-insensitively) in
the greedy output.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass, field
from typing import Sequence

from hatac.errors import HatacError

TASKS = ("niah_multikey", "niah_multivalue", "vt", "cwe")

NIAH_INTRO = ("Some special magic numbers are hidden inside the following text. Make sure to memorize them. "
              "I will quiz you about the numbers afterwards.\n\n")  # fmt: skip
NIAH_NEEDLE = "The special magic number for {key} is {value}."
MK_QUESTION = "\n\nWhat is the special magic number for {key} mentioned in the text above? The special magic number for {key} is"
MV_QUESTION = "\n\nWhat are all the special magic numbers for {key} mentioned in the text above? The special magic numbers for {key} are"
VT_INTRO = "Memorize and track the chain of variable assignments hidden in the following text.\n\n"
VT_FIRST, VT_HOP = "VAR {name} = {value}.", "VAR {name} = {prev}."
VT_QUESTION = ("\n\nQuestion: Find all variables that are assigned the value {value} in the text above. Answer: "
               "Following the chain of assignments in the text above, {n} variables are assigned the value {value}, they are:")  # fmt: skip
CWE_INTRO = ("Below is a numbered list of words. Some of the words appear more often than others. "
             "Memorize the ones that appear most often.\n")  # fmt: skip
CWE_QUESTION = ("\nQuestion: What are the {n} most common words in the above list? Answer: "
                "The top {n} words that appear most often in the list are:")  # fmt: skip

# Tokens generated per task (greedy): room for the expected strings and their separators.
MAX_NEW = {"niah_multikey": 16, "niah_multivalue": 48, "vt": 32, "cwe": 64}

ADJECTIVES = ("ancient", "bitter", "brave", "calm", "clever", "crimson", "curious", "distant", "eager", "faint",
              "fierce", "gentle", "golden", "hollow", "humble", "icy", "jolly", "lively", "lonely", "mighty",
              "narrow", "noble", "pale", "proud", "quiet", "rapid", "restless", "rusty", "silent", "silver",
              "sleepy", "smooth", "steady", "stormy", "sudden", "tender", "tiny", "vivid", "wandering", "wild")  # fmt: skip
NOUNS = ("anchor", "apple", "badger", "barrel", "beacon", "bridge", "candle", "castle", "cloak", "comet",
         "compass", "falcon", "feather", "garden", "harbor", "helmet", "island", "kettle", "lantern", "meadow",
         "mirror", "needle", "orchard", "otter", "pebble", "pillow", "quarry", "ribbon", "saddle", "shovel",
         "spindle", "teapot", "thistle", "timber", "tunnel", "violin", "walrus", "whistle", "willow", "zebra")  # fmt: skip


@dataclass
class TaskSample:
    """One prompt: ``context`` (instruction and haystack, prefilled densely) then ``query`` (the question and
    answer prefix, decoded with top-k), the strings a correct answer contains, and the tokens to generate."""

    task: str
    context: list[int] = field(repr=False)
    query: list[int] = field(repr=False)
    answers: list[str]
    max_new: int
    needles: list[str] = field(default_factory=list)  # the inserted needle texts (cwe: the word list)

    @property
    def length(self) -> int:
        return len(self.context) + len(self.query)


def string_match(output: str, answers: Sequence[str]) -> float:
    """RULER's ``string_match_all``: the fraction of ``answers`` found in ``output``, case-insensitively."""
    if not answers:
        raise ValueError("no expected answers to score against")
    low = output.lower()
    return sum(a.lower() in low for a in answers) / len(answers)


class Haystack:
    """Lines of prose to hide needles in, read from a seeded start (wrapping around), and its vocabulary."""

    def __init__(self, texts: Sequence[str]):
        self.lines = [ln.rstrip() for t in texts for ln in t.split("\n") if ln.strip()]
        if not self.lines:
            raise HatacError("the haystack texts have no non-empty line")
        self._texts = texts
        self._words: list[str] | None = None

    def lines_from(self, rng: random.Random):
        i = rng.randrange(len(self.lines))
        while True:
            yield self.lines[i]
            i = (i + 1) % len(self.lines)

    def words(self) -> list[str]:
        """Distinct lowercase words of 4-10 letters, sorted (the ``cwe`` vocabulary)."""
        if self._words is None:
            self._words = sorted({w for t in self._texts for w in re.findall(r"\b[a-z]{4,10}\b", t.lower())})
        return self._words


def eval_haystack() -> Haystack:
    """The evaluation plays (``EVAL_PLAYS``: never calibration text), in order."""
    from hatac.data.texts import EVAL_PLAYS, shakespeare_plays

    plays = shakespeare_plays()
    return Haystack([plays[name] for name in EVAL_PLAYS])


class TaskBuilder:
    """Token-exact prompts of every task for one tokenizer and haystack."""

    def __init__(self, tokenizer, haystack: Haystack):
        self.tok = tokenizer
        self.hay = haystack

    def enc(self, text: str) -> list[int]:
        return list(self.tok(text, add_special_tokens=False, verbose=False)["input_ids"])

    def intro(self, text: str) -> list[int]:
        return list(self.tok(text, add_special_tokens=True, verbose=False)["input_ids"])

    def build(self, task: str, length: int, seed: int | str, **options) -> TaskSample:
        """The sample of ``task`` at ``length`` tokens for ``seed`` (the same arguments give the same sample)."""
        if task not in TASKS:
            raise HatacError(f"unknown task {task!r}; tasks: {', '.join(TASKS)}")
        rng = random.Random(f"{task}-{length}-{seed}")
        return getattr(self, task)(length, rng, **options)

    # -- haystack with needles -----------------------------------------------------------------------
    def _fill(self, length: int, rng: random.Random, intro: list[int], needles: list[str], query: list[int], depths: list[float]) -> list[int]:
        """intro + haystack lines with ``needles`` (own lines) at ``depths``, so that with ``query`` the prompt
        is at most ``length`` tokens and within one line of it."""
        needle_ids = [self.enc(n + "\n") for n in needles]
        room = length - len(intro) - len(query) - sum(map(len, needle_ids))
        if room < 0:
            raise HatacError(f"length {length} is too short for the instruction, needles and question ({length - room} tokens)")
        lines: list[list[int]] = []
        used = 0
        for text in self.hay.lines_from(rng):
            ids = self.enc(text + "\n")
            if used + len(ids) > room:
                break
            lines.append(ids)
            used += len(ids)
        # Needles in order of depth, each before the line at round(depth * n_lines).
        at = sorted(zip((round(d * len(lines)) for d in depths), range(len(needles))))
        out = list(intro)
        k = 0
        for i in range(len(lines) + 1):
            while k < len(at) and at[k][0] == i:
                out += needle_ids[at[k][1]]
                k += 1
            if i < len(lines):
                out += lines[i]
        return out

    @staticmethod
    def _depths(rng: random.Random, n: int) -> list[float]:
        return [rng.uniform(0.05, 0.95) for _ in range(n)]

    @staticmethod
    def _numbers(rng: random.Random, n: int, digits: int) -> list[str]:
        out: list[str] = []
        while len(out) < n:
            v = str(rng.randint(10 ** (digits - 1), 10**digits - 1))
            if v not in out:
                out.append(v)
        return out

    @staticmethod
    def _keys(rng: random.Random, n: int) -> list[str]:
        pairs = rng.sample([(a, b) for a in ADJECTIVES for b in NOUNS], n)
        return [f"{a}-{b}" for a, b in pairs]

    # -- the tasks -----------------------------------------------------------------------------------
    def niah_multikey(self, length: int, rng: random.Random, n_keys: int = 4, digits: int = 7) -> TaskSample:
        keys, values = self._keys(rng, n_keys), self._numbers(rng, n_keys, digits)
        asked = rng.randrange(n_keys)
        needles = [NIAH_NEEDLE.format(key=k, value=v) for k, v in zip(keys, values)]
        query = self.enc(MK_QUESTION.format(key=keys[asked]))
        context = self._fill(length, rng, self.intro(NIAH_INTRO), needles, query, self._depths(rng, n_keys))
        return TaskSample("niah_multikey", context, query, [values[asked]], MAX_NEW["niah_multikey"], needles)

    def niah_multivalue(self, length: int, rng: random.Random, n_values: int = 4, digits: int = 7) -> TaskSample:
        key, values = self._keys(rng, 1)[0], self._numbers(rng, n_values, digits)
        needles = [NIAH_NEEDLE.format(key=key, value=v) for v in values]
        query = self.enc(MV_QUESTION.format(key=key))
        context = self._fill(length, rng, self.intro(NIAH_INTRO), needles, query, self._depths(rng, n_values))
        return TaskSample("niah_multivalue", context, query, values, MAX_NEW["niah_multivalue"], needles)

    def vt(self, length: int, rng: random.Random, n_chains: int = 1, n_hops: int = 4, digits: int = 5) -> TaskSample:
        names: list[str] = []
        while len(names) < n_chains * (n_hops + 1):
            name = "".join(rng.choice("ABCDEFGHIJKLMNOPQRSTUVWXYZ") for _ in range(5))
            if name not in names:
                names.append(name)
        values = self._numbers(rng, n_chains, digits)
        chains = [names[c * (n_hops + 1) : (c + 1) * (n_hops + 1)] for c in range(n_chains)]
        needles, depths = [], []
        for chain, value in zip(chains, values):
            ds = sorted(self._depths(rng, n_hops + 1))  # a chain's statements in order
            needles += [VT_FIRST.format(name=chain[0], value=value)] + [VT_HOP.format(name=b, prev=a) for a, b in zip(chain, chain[1:])]
            depths += ds
        query = self.enc(VT_QUESTION.format(value=values[0], n=n_hops + 1))
        context = self._fill(length, rng, self.intro(VT_INTRO), needles, query, depths)
        return TaskSample("vt", context, query, list(chains[0]), MAX_NEW["vt"], needles)

    def cwe(self, length: int, rng: random.Random, n_common: int = 10, common_freq: int = 0, uncommon_freq: int = 1) -> TaskSample:
        """``common_freq`` 0: about 30% of the list's items are the common words (at least uncommon_freq + 2)."""
        intro, query = self.intro(CWE_INTRO), self.enc(CWE_QUESTION.format(n=n_common))
        room = length - len(intro) - len(query)
        vocab = self.hay.words()
        per_item = sum(len(self.enc(f" {i + 10}. {w}")) for i, w in enumerate(vocab[:: max(1, len(vocab) // 50)][:50])) / min(50, len(vocab))
        n_items = int(room / per_item)
        if not common_freq:
            common_freq = max(uncommon_freq + 2, min(30, int(0.3 * n_items / n_common)))
        n_uncommon = (n_items - n_common * common_freq) // uncommon_freq
        if n_uncommon < n_common or n_common + n_uncommon > len(vocab):
            raise HatacError(f"cwe: length {length} is too short for {n_common} words x {common_freq} plus at least as many rarer words")
        n_max = min(len(vocab) - n_common, int(n_uncommon * 1.25) + 4)  # the estimate, with a margin
        words = rng.sample(vocab, n_common + n_max)
        common = words[:n_common]
        order_seed = rng.random()

        def prompt(n_unc: int) -> list[int]:
            items = [w for w in common for _ in range(common_freq)] + [w for w in words[n_common : n_common + n_unc] for _ in range(uncommon_freq)]
            random.Random(order_seed).shuffle(items)
            return intro + self.enc(" ".join(f"{i + 1}. {w}" for i, w in enumerate(items)))

        # The most rare words that fit: bisection on their count.
        lo, hi = n_common, n_max
        if len(prompt(lo)) + len(query) > length:
            raise HatacError(f"cwe: length {length} is too short for {n_common} common words x {common_freq}")
        while lo < hi:
            mid = (lo + hi + 1) // 2
            if len(prompt(mid)) + len(query) <= length:
                lo = mid
            else:
                hi = mid - 1
        context = prompt(lo)
        return TaskSample("cwe", context, query, common, MAX_NEW["cwe"], [self.tok.decode(context[len(intro) :])])
