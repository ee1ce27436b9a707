"""hatac.evaluation.tasks and task_eval: RULER-style prompts are seeded, hold their answers, hit their
lengths; the string-match scorer; greedy answers under each policy; ``hatac eval --task`` end to end."""

from __future__ import annotations

import json
import re
import sysconfig
from collections import Counter
from pathlib import Path

import pytest
import torch

from hatac.errors import HatacError
from hatac.evaluation import EvalModel, HashPolicy, Oracle, Quest, StreamingLLM
from hatac.evaluation import tasks as T
from hatac.evaluation.task_eval import generate, run_sample, run_tasks
from models import tiny_model


def _prose() -> T.Haystack:
    """Offline stand-in for the plays: English docstrings and comments of two stdlib modules."""
    root = Path(sysconfig.get_paths()["stdlib"])
    return T.Haystack([(root / "textwrap.py").read_text(), (root / "argparse.py").read_text()[:40_000]])


@pytest.fixture(scope="module")
def builder(tiny_tok):
    return T.TaskBuilder(tiny_tok, _prose())


LENGTHS = {"niah_multikey": (700, 1800), "niah_multivalue": (700, 1800), "vt": (700, 1800), "cwe": (1200, 1800)}


@pytest.mark.parametrize("task", T.TASKS)
def test_samples_are_seeded_and_hit_their_length(builder, task):
    for length in LENGTHS[task]:
        a, b = builder.build(task, length, 3), builder.build(task, length, 3)
        assert (a.context, a.query, a.answers) == (b.context, b.query, b.answers)
        c = builder.build(task, length, 4)
        assert (c.context, c.answers) != (a.context, a.answers)
        # at most the target, and within one haystack line (byte tokenizer: <= ~80 tokens) or list item of it
        assert length - 80 < a.length <= length, (task, length, a.length)
        assert a.context[0] == 0 and 0 not in a.query[1:]  # BOS once, at the start
        assert 0 < a.max_new == T.MAX_NEW[task]


def test_needle_tasks_hold_their_answers(builder, tiny_tok):
    s = builder.build("niah_multikey", 1200, 0)
    text = tiny_tok.decode(s.context)
    question = tiny_tok.decode(s.query)
    assert len(s.needles) == 4 and all(n in text for n in s.needles)
    key = re.search(r"number for (\S+) mentioned", question).group(1)
    (value,) = s.answers
    assert [n for n in s.needles if value in n] == [T.NIAH_NEEDLE.format(key=key, value=value)]
    assert len(set(re.findall(r"\d{7}", " ".join(s.needles)))) == 4  # distinct values, one asked

    s = builder.build("niah_multivalue", 1200, 0)
    text = tiny_tok.decode(s.context)
    assert len(s.answers) == 4 and len(set(s.answers)) == 4
    key = re.search(r"numbers for (\S+) mentioned", tiny_tok.decode(s.query)).group(1)
    assert all(T.NIAH_NEEDLE.format(key=key, value=v) in text for v in s.answers)

    s = builder.build("vt", 1200, 0, n_chains=2)
    text = tiny_tok.decode(s.context)
    value = re.search(r"assigned the value (\d+) in", tiny_tok.decode(s.query)).group(1)
    chain = s.answers
    assert len(chain) == 5 and f"VAR {chain[0]} = {value}." in text
    positions = [text.index(f"VAR {b} = {a}.") for a, b in zip(chain, chain[1:])]
    assert positions == sorted(positions) and text.index(f"VAR {chain[0]} = {value}.") < positions[0]
    assert len(s.needles) == 10 and sum(value in n for n in s.needles) == 1  # the other chain has another value


def test_cwe_common_words_are_the_most_frequent(builder, tiny_tok):
    s = builder.build("cwe", 1500, 2, n_common=5)
    items = re.findall(r"\d+\. ([a-z]+)", s.needles[0])
    counts = Counter(items)
    common = set(s.answers)
    assert len(common) == 5 and common <= set(counts)
    assert min(counts[w] for w in common) > max(c for w, c in counts.items() if w not in common)
    assert [int(n) for n in re.findall(r"(\d+)\. ", s.needles[0])] == list(range(1, len(items) + 1))
    with pytest.raises(HatacError, match="too short"):
        builder.build("cwe", 300, 0)
    with pytest.raises(HatacError, match="unknown task"):
        builder.build("qa", 1000, 0)


def test_string_match_scores_exact_partial_and_none():
    assert T.string_match(" 1234567.", ["1234567"]) == 1.0
    assert T.string_match("They are 1111111, 2222222 and 9.", ["1111111", "2222222", "3333333", "4444444"]) == 0.5
    assert T.string_match("I do not know", ["1234567"]) == 0.0
    assert T.string_match("abcde, FGHIJ", ["ABCDE", "fghij"]) == 1.0  # case-insensitive, as RULER
    with pytest.raises(ValueError):
        T.string_match("x", [])


@pytest.fixture(scope="module")
def tiny_em():
    model = tiny_model("llama")
    return model, EvalModel(model, dense_layers=2)


def test_dense_greedy_answer_equals_transformers_generate(tiny_em, builder, tiny_tok):
    """The cache protocol (context prefilled, question as one chunk, then one token a step) decodes what
    plain greedy generation of the whole prompt does."""
    model, em = tiny_em
    s = builder.build("niah_multikey", 700, 1)
    cache = em.new_cache(capacity=s.length + 8)
    em.dense(cache, torch.tensor([s.context]), logits_from=len(s.context) - 1)
    got = generate(em, cache, s.query, 8, set())
    ids = torch.tensor([s.context + s.query])
    want = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=8, min_new_tokens=8, do_sample=False, pad_token_id=0)[0, ids.shape[1] :]
    assert got == want.tolist()


def test_policies_with_a_budget_covering_the_context_answer_as_dense(tiny_em, builder, tiny_tok, monkeypatch):
    _, em = tiny_em
    monkeypatch.setitem(T.MAX_NEW, "vt", 6)
    s = builder.build("vt", 700, 0)
    w = {layer: torch.randn(2, 64, 32, generator=torch.Generator().manual_seed(layer)) for layer in (2, 3)}
    policies = {"oracle": Oracle(), "hatac": HashPolicy(w), "quest": Quest(16), "streaming": StreamingLLM(4)}
    out = run_sample(em, tiny_tok, s, policies, [1000.0, 0.25])
    for name in policies:
        assert out[name][1000.0] == out["dense"], name
        assert 0.0 <= out[name][0.25][0] <= 1.0


def test_run_tasks_aggregates_per_method_and_budget(tiny_em, builder, tiny_tok, monkeypatch):
    _, em = tiny_em
    monkeypatch.setitem(T.MAX_NEW, "niah_multivalue", 4)
    seen = []
    res = run_tasks(em, tiny_tok, builder, ["niah_multivalue"], 700, 2, 0, {"oracle": Oracle()}, [0.25, 8.0], on_trial=seen.append)
    r = res["niah_multivalue"]
    assert seen == ["niah_multivalue"] * 2 and r["dense"]["trials"] == 2 and len(r["dense"]["examples"]) == 2
    assert set(r["oracle"]) == {"1/4", "8"} and all(0 <= v["acc"] <= 1 for v in r["oracle"].values())


def test_cli_runs_tasks_end_to_end(llama_dir, calib_file, tmp_path, monkeypatch):
    from typer.testing import CliRunner

    import importlib

    from hatac.cli import app

    run_mod = importlib.import_module("hatac.evaluation.run")  # the module (the package exports the function)
    monkeypatch.setattr(run_mod, "eval_haystack", _prose)  # the plays need a download; same code path otherwise
    monkeypatch.setitem(T.MAX_NEW, "vt", 2)  # the question chunk and one generated token: enough for the path
    out = tmp_path / "out"
    args = ["eval", str(llama_dir), "-o", str(out), "--calib", str(calib_file), "--learned", "off", "--task", "vt",
            "--task-length", "600", "--task-trials", "1", "--budgets", "1/8,64", "--device", "cpu"]  # fmt: skip
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 0, res.output
    saved = json.loads((out / "results.json").read_text())
    assert saved["settings"]["metrics"] == ["tasks"] and "perplexity" not in saved and "passkey" not in saved
    assert list(saved["tasks"]) == ["vt"] and saved["settings"]["tasks"] == ["vt"]
    labels = saved["settings"]["budget_labels"]
    assert labels == ["1/8", "64"]
    for task, r in saved["tasks"].items():
        assert 0 <= r["dense"]["acc"] <= 1 and r["dense"]["trials"] == 1 and r["prompt_tokens"] <= 600
        for name in ("oracle", "hatac-random", "quest", "loki", "streaming"):
            assert list(r[name]) == labels and all(0 <= v["acc"] <= 1 for v in r[name].values())
    assert "Task vt" in (out / "results.md").read_text()
    bad = CliRunner().invoke(app, ["eval", str(llama_dir), "-o", str(tmp_path / "o2"), "--task", "qa"])
    assert bad.exit_code == 2 and "--task takes niah_multikey" in bad.output
