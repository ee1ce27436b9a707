"""hatac.evaluation: each selection policy selects what its definition says, budgets are counted alike,
the policy pass routes the converted graph's selection, and ``run`` writes JSON and plots end to end."""

from __future__ import annotations

import json
import sysconfig
from pathlib import Path

import pytest
import torch

import hatac
from hatac import reference
from hatac.evaluation import EvalModel, EvalSettings, HashPolicy, Loki, Oracle, Quest, StreamingLLM, run, select
from hatac.evaluation.loki import KeyMoments
from hatac.evaluation.recall import overlap
from hatac.data.texts import Document
from models import tiny_model

HKV, G, D = 2, 3, 8


def _qk(s=40, t=None, seed=0):
    g = torch.Generator().manual_seed(seed)
    t = t or s
    q = torch.randn(1, HKV * G, s, D, generator=g)
    k = torch.randn(1, HKV, t, D, generator=g)
    return q, k


def _sets(idx):
    """(B, Hkv, S, K) -> nested lists of sets of selected slots."""
    return [[[set(x for x in row.tolist() if x >= 0) for row in head] for head in b] for b in idx]


def _expected_by_score(score, p, n_keep):
    """The n_keep slots in 0..p with the largest score (ties to the lower slot)."""
    order = sorted(range(p + 1), key=lambda j: (-score[j], j))
    return set(order[:n_keep])


BUDGETS = [0.1, 0.25, 5.0, 12.0]


@pytest.mark.parametrize("budget", BUDGETS)
def test_oracle_is_exact_top_k_of_group_summed_qk(budget):
    q, k = _qk()
    s = q.shape[2]
    pos = torch.arange(s).view(1, s)
    width = reference.topk_width(s, budget)
    got = _sets(select(Oracle(), q, k, pos, width, budget, layer=0, row_chunk=7))
    n_keep = reference.keep_counts(pos[0] + 1, budget, 0, 0)
    for h in range(HKV):
        for i in range(s):
            score = [sum(float(q[0, h * G + j, i] @ k[0, h, t]) for j in range(G)) for t in range(s)]
            assert got[0][h][i] == _expected_by_score(score, i, int(n_keep[i]))


@pytest.mark.parametrize("budget", BUDGETS)
def test_hash_policy_equals_hamming_topk_of_packed_codes(budget):
    q, k = _qk(seed=1)
    s = q.shape[2]
    w = {0: torch.randn(HKV, D, 64, generator=torch.Generator().manual_seed(2))}
    pos = torch.arange(s).view(1, s)
    width = reference.topk_width(s, budget)
    got = select(HashPolicy(w), q, k, pos, width, budget, layer=0, row_chunk=5)
    want = reference.hamming_topk(reference.hash_encode(q, w[0]), reference.hash_encode(k, w[0]), pos, width, budget)
    assert torch.equal(got, want)


def test_quest_bound_is_at_least_the_true_max_in_each_page_and_pages_are_taken_whole():
    q, k = _qk(s=53, seed=3)
    s, page = q.shape[2], 16
    quest = Quest(page)
    pos = torch.arange(s).view(1, s)
    scores = -quest.chunk_scores(q, quest.key_state(k, 0), pos, s, 0)  # (1, Hkv, S, T): page bound per token
    budget = 20.0
    idx = _sets(select(quest, q, k, pos, reference.topk_width(s, budget), budget, layer=0))
    for h in range(HKV):
        for i in range(s):
            qs = q[0, h * G : (h + 1) * G, i]  # (G, D)
            bounds = {}
            for pg in range(i // page):  # complete pages before the query's own
                keys = k[0, h, pg * page : (pg + 1) * page]
                hi, lo = keys.max(0).values, keys.min(0).values
                bound = sum(float(torch.maximum(qj * hi, qj * lo).sum()) for qj in qs)  # hand-computed
                true_max = float((qs.sum(0) @ keys.T).max())
                assert bound >= true_max - 1e-4
                assert scores[0, h, i, pg * page] == pytest.approx(bound, rel=1e-5, abs=1e-4)
                bounds[pg] = bound
            # Selection: the query's own page first (newest first), then pages by decreasing bound (ties to
            # the lower page), tokens in slot order, cut at the budget.
            own = i // page * page
            want, n_keep = list(range(i, own - 1, -1)), int(reference.keep_counts(torch.tensor([i + 1]), budget, 0, 0)[0])
            for pg in sorted(bounds, key=lambda p: (-bounds[p], p)):
                want += list(range(pg * page, (pg + 1) * page))
            assert idx[0][h][i] == set(want[:n_keep])


@pytest.mark.parametrize("budget", [1 / 16, 0.25, 3.0, 20.0, 40.0])
def test_quest_always_keeps_the_current_page_even_when_its_bound_is_lowest(budget):
    """Quest's kernels always attend the last page (the one holding the query), inside the page budget:
    here its keys point away from every query, so its bound is the lowest of all pages, and it is still
    kept (whole when the budget allows, else its newest tokens); the count never exceeds the budget."""
    page = 8
    q, k = _qk(s=70, seed=9)
    q = q.abs() + 0.1  # positive queries ...
    k = k.abs()
    s = q.shape[2]
    k[:, :, 64:] = -5.0 - k[:, :, 64:]  # ... and the last page's keys (slots 64..69) very negative
    quest = Quest(page)
    pos = torch.arange(s).view(1, s)
    bound = -quest.chunk_scores(q, quest.key_state(k, 0), pos, s, 0)[0, :, -1]  # (Hkv, T) last query's view
    full_bounds = bound[:, :64:page]
    qs = q[0, :, -1].reshape(HKV, G, D)
    lo_last = k[0, :, 64:].min(1).values  # (Hkv, D)
    own_bound = (qs.clamp_min(0).sum(1) * k[0, :, 64:].max(1).values + qs.clamp_max(0).sum(1) * lo_last).sum(-1)
    assert (own_bound < full_bounds.min(-1).values).all()  # the current page has the lowest bound
    width = reference.topk_width(s, budget)
    idx = select(quest, q, k, pos, width, budget, layer=0)
    n_keep = reference.keep_counts(pos[0] + 1, budget, 0, 0)
    assert ((idx >= 0).sum(-1) <= n_keep.view(1, 1, s)).all() and torch.equal((idx >= 0).sum(-1)[0, 0], n_keep)
    got = _sets(idx)
    for i in range(s):
        own = set(range(i // page * page, i + 1))
        n = int(n_keep[i])
        for h in range(HKV):
            if n >= len(own):
                assert own <= got[0][h][i], (i, h)
            else:  # budget below the page: its newest tokens, the query's own first
                assert got[0][h][i] == set(range(i - n + 1, i + 1)), (i, h)
    assert Quest().describe()["adaptations"] and "per query head" in Quest().describe()["adaptations"][0]


@pytest.mark.parametrize("budget", BUDGETS)
def test_streaming_is_sinks_plus_most_recent(budget):
    q, k = _qk(s=60)
    s, sink = q.shape[2], 4
    pos = torch.arange(s).view(1, s)
    got = _sets(select(StreamingLLM(sink), q, k, pos, reference.topk_width(s, budget), budget, layer=0))
    n_keep = reference.keep_counts(pos[0] + 1, budget, 0, 0)
    for i in range(s):
        n = int(n_keep[i])
        want = set(range(min(sink, n))) | set(range(i + 1 - max(n - sink, 0), i + 1))
        for h in range(HKV):
            assert got[0][h][i] == want and len(want) == n


def test_forced_sink_and_recent_are_kept_inside_the_budget():
    q, k = _qk(s=50, seed=7)
    s = q.shape[2]
    pos = torch.arange(s).view(1, s)
    w = {0: torch.randn(HKV, D, 32, generator=torch.Generator().manual_seed(8))}
    budget = 10.0
    got = _sets(select(HashPolicy(w, sink=2, recent=3), q, k, pos, reference.topk_width(s, budget, 2, 3), budget, 0))
    plain = select(HashPolicy(w), q, k, pos, reference.topk_width(s, budget), budget, 0)
    for i in range(s):
        for h in range(HKV):
            assert len(got[0][h][i]) == min(i + 1, 10)
            assert set(range(min(2, i + 1))) | set(range(max(0, i - 2), i + 1)) <= got[0][h][i]
    assert torch.equal((plain >= 0).sum(-1), reference.keep_counts(pos[0] + 1, budget, 0, 0).view(1, 1, s).expand(1, HKV, s))


def test_loki_full_rank_equals_oracle_and_low_rank_uses_leading_pca_dims():
    q, k = _qk(s=48, seed=4)
    s = q.shape[2]
    moments = KeyMoments()
    moments.add(0, torch.randn(1, HKV, 500, D) * torch.linspace(3, 0.1, D))  # calibration keys, decreasing variance
    basis = moments.basis()
    assert torch.allclose(basis[0].transpose(-1, -2) @ basis[0], torch.eye(D).expand(HKV, D, D), atol=1e-5)
    assert (basis[0][:, :, 0].abs().argmax(-1) == 0).all()  # the largest-variance channel comes first
    pos = torch.arange(s).view(1, s)
    for budget in BUDGETS:
        width = reference.topk_width(s, budget)
        assert torch.equal(select(Loki(basis, D), q, k, pos, width, budget, 0), select(Oracle(), q, k, pos, width, budget, 0))
    # Rank 2 in the identity basis: q.k over channels 0 and 1 only.
    eye = {0: torch.eye(D).expand(HKV, D, D).clone()}
    budget = 6.0
    width = reference.topk_width(s, budget)
    got = select(Loki(eye, 2), q, k, pos, width, budget, 0)
    q2, k2 = q.clone(), k.clone()
    q2[..., 2:] = 0
    k2[..., 2:] = 0
    assert torch.equal(got, select(Oracle(), q2, k2, pos, width, budget, 0))


def test_every_method_keeps_the_same_number_of_tokens():
    q, k = _qk(s=70, seed=5)
    s = q.shape[2]
    moments = KeyMoments()
    moments.add(0, k)
    methods = [Oracle(), HashPolicy({0: torch.randn(HKV, D, 32)}), Quest(16), Loki(moments.basis(), 2), StreamingLLM(4)]
    pos = torch.arange(s).view(1, s)
    for budget in [1 / 64, 1 / 16, 0.3, 3.0, 16.0, 128.0]:
        width = reference.topk_width(s, budget)
        want = reference.keep_counts(pos[0] + 1, budget, 0, 0).view(1, 1, s).expand(1, HKV, s)
        for m in methods:
            idx = select(m, q, k, pos, width, budget, 0, row_chunk=16)
            assert idx.shape == (1, HKV, s, width)
            assert torch.equal((idx >= 0).sum(-1), want), (m.name, budget)
            assert ((idx < 0) | (idx <= pos.view(1, 1, s, 1))).all()  # causal
            # no slot twice
            srt = idx.sort(-1).values
            assert not ((srt[..., 1:] == srt[..., :-1]) & (srt[..., 1:] >= 0)).any()


def test_attention_mass_is_the_softmax_share_of_the_selection():
    from hatac.evaluation.recall import attention_probs, mass

    q, k = _qk(s=12, seed=6)
    pos = torch.arange(12).view(1, 12)
    probs = attention_probs(q, k, pos, 0.5)
    everything = torch.arange(12).expand(1, HKV, 12, 12).masked_fill(torch.arange(12).view(1, 1, 1, 12) > pos.view(1, 1, 12, 1), -1)
    torch.testing.assert_close(mass(everything, probs), torch.ones(1, HKV, 12))
    one = torch.zeros(1, HKV, 12, 1, dtype=torch.long)  # only slot 0
    p0 = (q.reshape(1, HKV, G, 12, D) @ k.unsqueeze(2).transpose(-1, -2) * 0.5).masked_fill(
        torch.arange(12).view(1, 1, 1, 1, 12) > pos.view(1, 1, 1, 12, 1), float("-inf")).softmax(-1)[..., 0].mean(2)
    torch.testing.assert_close(mass(one, probs), p0)


def test_overlap_counts_hits():
    true = torch.tensor([[0, 3, 5, -1]])
    pred = torch.tensor([[3, 4, 5, -1]])
    hits, n = overlap(pred, true, 8)
    assert hits.tolist() == [2] and n.tolist() == [3]


@pytest.fixture(scope="module")
def tiny_eval():
    model = tiny_model("llama")
    return model, EvalModel(model, dense_layers=2)


def test_pass_routes_every_hashed_layer_and_hash_policy_reproduces_hatac(tiny_eval):
    """The policy pass replaces every hamming_topk; with hatac's own W and budget, the evaluation graph gives
    the logits of the converted hatac model run in decode mode (the code path decoding uses)."""
    model, em = tiny_eval
    names = [str(n.target) for n in em.hm.decode_graph.graph.nodes]
    assert not any("hamming_topk" in t for t in names)
    assert sum(n.op == "call_module" and n.target == "hatac_eval_selector" for n in em.hm.decode_graph.graph.nodes) == 2
    assert not any("key_codes" in str(n.args[0]) for n in em.hm.decode_graph.graph.nodes if "cache_write" in str(n.target))
    w = {layer: torch.randn(2, 64, 64, generator=torch.Generator().manual_seed(layer)) for layer in (2, 3)}
    ids = torch.randint(3, 300, (1, 40), generator=torch.Generator().manual_seed(0))
    for budget in (0.2, 7.0):
        ref = hatac.convert(model, hatac.HataConfig(rbits=64, budget=budget, dense_layers=2, hash="random"), hash_weights=w)
        want = ref(ids, cache=ref.new_cache(), hata_mode="decode").logits
        got = em.sparse(em.new_cache(), ids, HashPolicy(w), budget)
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def test_policy_pass_unfolds_a_folded_encode_and_keeps_its_kv_writes(tiny_eval):
    """On a decode graph whose hashed layers write K and V inside ``hash_encode_step_kv`` (the default
    recipe's, after FuseCacheWrites), the pass still routes every layer, drops the code writes and keeps
    the K and V writes: the graph then computes what the same pass makes of the unfused graph."""
    from types import SimpleNamespace

    from hatac.evaluation import UseSelectionPolicy
    from hatac.passes import PassContext

    model, em = tiny_eval
    ops = torch.ops.hatac
    ids = torch.randint(3, 300, (1, 30), generator=torch.Generator().manual_seed(1))
    logits = {}
    for fuse in (True, False):
        hm = hatac.convert(model, hatac.HataConfig(rbits=64, budget=7.0, dense_layers=2, hash="random", fuse_encode=fuse))
        d = hm.decode_graph
        assert sum(n.target is ops.hash_encode_step_kv.default for n in d.graph.nodes) == (2 if fuse else 0)
        ctx = PassContext(config=hm.config, model=model, mode="decode", sites={i: SimpleNamespace(hashed=s.hashed) for i, s in hm.layers.items()})
        UseSelectionPolicy(em.selector)(d, ctx)
        targets = [n.target for n in d.graph.nodes]
        assert ops.hash_encode_step_kv.default not in targets and ops.hash_encode_step.default not in targets
        writes = [n for n in d.graph.nodes if n.target is ops.cache_write.default]
        assert sorted(n.args[0].name for n in writes) == sorted(f"{c}_cache_{i}" for i in range(4) for c in "kv")
        em.selector.set(HashPolicy(_tiny_w()), 7.0)
        logits[fuse] = hm(ids, cache=hm.new_cache(), hata_mode="decode").logits
    assert torch.equal(logits[True], logits[False])


def _tiny_w(r=64, seed=0):
    return {layer: torch.randn(2, 64, r, generator=torch.Generator().manual_seed(seed + layer)) for layer in (2, 3)}


def _tiny_basis():
    return {layer: torch.linalg.qr(torch.randn(2, 64, 64, generator=torch.Generator().manual_seed(layer)))[0] for layer in (2, 3)}


@pytest.mark.parametrize(
    "policy",
    [Quest(4), StreamingLLM(2), Oracle(), HashPolicy(_tiny_w(), "hatac"), HashPolicy(_tiny_w(), "hatac s1r2", 1, 2), Loki(_tiny_basis(), 16)],
    ids=lambda p: p.name,
)
def test_one_pass_equals_token_by_token_under_each_policy(tiny_eval, policy):
    """The perplexity metric's premise: top-k at every position of one chunk (one pass) gives the logits that
    feeding the tokens one at a time gives (each position selects over its own causal prefix only)."""
    _, em = tiny_eval
    ids = torch.randint(3, 300, (1, 30), generator=torch.Generator().manual_seed(1))
    one = em.sparse(em.new_cache(), ids, policy, 0.25)
    cache = em.new_cache()
    steps = torch.cat([em.sparse(cache, ids[:, i : i + 1], policy, 0.25) for i in range(ids.shape[1])], dim=1)
    torch.testing.assert_close(one, steps, rtol=1e-4, atol=1e-4)
    dense = em.dense(em.new_cache(), ids)
    full = em.sparse(em.new_cache(), ids, policy, 1000.0)  # budget covering the context = dense
    torch.testing.assert_close(full, dense, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("policy", [None, Oracle(), HashPolicy(_tiny_w(), "hatac s1r2", 1, 2), Quest(4)], ids=lambda p: getattr(p, "name", "dense"))
def test_batched_documents_give_each_document_its_own_loss(tiny_eval, policy):
    """Perplexity runs equal-length documents as rows of one batch: each row's loss must be what the document
    gives alone (a selection or cache shared across rows would change it)."""
    from hatac.evaluation.perplexity import document_nll, documents_nll

    _, em = tiny_eval
    g = torch.Generator().manual_seed(4)
    docs = [torch.randint(3, 300, (36,), generator=g).tolist() for _ in range(3)]
    batched = documents_nll(em, docs, policy, 0.25, 12)
    alone = [document_nll(em, d, policy, 0.25, 12) for d in docs]
    assert [n for _, n in batched] == [24, 24, 24]
    assert len({round(a, 3) for a, _ in alone}) == 3  # distinct documents, so a row mix-up would show
    for (a, _), (b, _) in zip(batched, alone):
        assert a == pytest.approx(b, rel=1e-5)
    with pytest.raises(ValueError, match="equal lengths"):
        documents_nll(em, [docs[0], docs[1][:-1]], policy, 0.25, 12)


def test_passkey_trials_batched_decode_what_each_trial_decodes_alone(tiny_eval, tiny_tok, monkeypatch):
    """run_depth runs the trials of a depth as rows of one batch over a shared prefilled filler: every
    trial's logits (dense and each policy/budget) must equal a one-trial-at-a-time run's."""
    import random

    from hatac.evaluation import passkey

    _, em = tiny_eval
    seen: dict = {}
    real = passkey._correct

    def record(logits, prompts):
        for i, p in enumerate(prompts):
            seen.setdefault(p.key, []).append(logits[i].clone())
        return real(logits, prompts)

    monkeypatch.setattr(passkey, "_correct", record)
    builder = passkey.PasskeyBuilder(tiny_tok)
    rng = random.Random(0)
    keys = [passkey.random_key(rng) for _ in range(5)]
    policies = {"oracle": Oracle(), "hatac": HashPolicy(_tiny_w(), "hatac")}
    runs = []
    for rows in (1, 3):
        seen.clear()
        out = passkey.run_depth(em, builder, 120, 0.5, keys, policies, [0.25, 8.0], batch_rows=rows)
        runs.append((out, {k: torch.stack(v) for k, v in seen.items()}))
    (out1, logits1), (out3, logits3) = runs
    assert out1 == out3 and set(logits1) == set(keys)
    assert all(len(v) == 1 + 2 * 2 for v in logits1.values())  # dense + 2 policies x 2 budgets per trial
    for key in keys:
        torch.testing.assert_close(logits3[key], logits1[key], rtol=1e-4, atol=1e-4)
    assert not torch.allclose(logits1[keys[0]][0], logits1[keys[1]][0], atol=1e-3)  # trials differ (their keys)


def _stdlib_ids(tok, name, n):
    text = (Path(sysconfig.get_paths()["stdlib"]) / name).read_text()
    return tok(text, add_special_tokens=True)["input_ids"][:n]


def test_run_end_to_end_on_a_tiny_model(tmp_path, tiny_tok):
    model = tiny_model("llama")
    docs = [Document("argparse.py", "code", _stdlib_ids(tiny_tok, "argparse.py", 200))]
    calib = [_stdlib_ids(tiny_tok, "textwrap.py", 150)]
    settings = EvalSettings(fractions=(1 / 16, 1 / 4), counts=(8, 16), rbits=(32, 64), main_rbits=64, loss_from=96, recall_queries=12, hatac_forced=((1, 2),),
                            passkey_length=260, passkey_depths=(0.3, 0.8), passkey_trials=2, calib_tokens=150)  # fmt: skip
    calls = []

    def learn(r):
        calls.append(r)
        return {layer: torch.randn(2, 64, r) for layer in (2, 3)}

    res = run(model, tiny_tok, tmp_path, settings, calib_samples=calib, learn_weights=learn, documents=docs, show_progress=False)
    assert calls == [32, 64]
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved["plots"] == res["plots"] == ["recall_vs_bits.png", "perplexity_vs_budget.png", "passkey_vs_budget.png"]
    for p in res["plots"]:
        assert (tmp_path / p).stat().st_size > 1000
    labels = ["1/16", "1/4", "8", "16"]
    assert set(saved["perplexity"]) == {"dense", "oracle", "hatac-learned", "hatac-random", "quest", "loki", "streaming", "hatac-learned s1r2", "hatac-random s1r2"}
    for name, per in saved["perplexity"].items():
        if name != "dense":
            assert list(per) == labels and all(v["ppl"] > 1 for v in per.values())
    assert set(saved["recall"]["hatac-random"]) == {"32", "64"}
    assert all(0 <= v <= 1 for v in saved["recall"]["quest"].values())
    assert set(saved["recall"]["hatac-learned s1r2"]) == {"64"}  # forced variants: at the main r only
    assert set(saved["attention_mass"]) == {"oracle", "hatac-learned", "hatac-random", "hatac-learned s1r2", "hatac-random s1r2", "quest", "loki", "streaming"}
    assert any(c["target"].endswith("[hatac-learned s1r2]") for c in saved["targets"]["checks"])
    assert all(0 < v <= 1 + 1e-6 for v in saved["attention_mass"]["oracle"].values())
    assert saved["passkey"]["dense"]["trials"] == 4
    assert saved["targets"]["checks"] and saved["timings_s"]["total"] > 0
    md = (tmp_path / "results.md").read_text()
    assert "| method | 1/16 | 1/4 | 8 | 16 |" in md and "Passkey retrieval" in md


@pytest.mark.parametrize(
    "args, message",
    [
        (["--learned", "sometimes"], "--learned must be one of calibrate, cached, off"),
        (["--metrics", "recall,speed"], "--metrics takes a comma-separated subset"),
        (["--doc-tokens", "500"], "documents must be longer than loss_from=1024"),
        (["--learned-from", "/nonexistent/w.safetensors", "--learned", "cached", "--metrics", "recall"], "no hash weights at /nonexistent"),
        (["--hatac-forced", "4-8"], "--hatac-forced takes SINK:RECENT pairs such as 4:8"),
    ],
)
def test_cli_refuses_bad_settings_in_one_line(args, message, llama_dir, tmp_path):
    from typer.testing import CliRunner

    from hatac.cli import app

    res = CliRunner().invoke(app, ["eval", str(llama_dir), "-o", str(tmp_path / "out"), *args])
    assert res.exit_code == 2, res.output
    lines = [ln for ln in res.output.strip().splitlines() if ln.startswith("error:")]
    assert len(lines) == 1 and message in lines[0], res.output


def test_screen_trains_variants_on_chosen_layers_and_scores_them_on_documents(tiny_eval, tiny_tok):
    """hatac.evaluation.screen: every variant (and the random W it starts from) gets recall and mass per
    budget; equal settings give equal numbers (seeded), and a bad variant or layer is a one-line error."""
    from hatac.errors import HatacError
    from hatac.evaluation.screen import parse_variant, screen

    _, em = tiny_eval
    calib = [_stdlib_ids(tiny_tok, "textwrap.py", 120), _stdlib_ids(tiny_tok, "argparse.py", 110)]
    docs = [Document("quopri.py", "code", _stdlib_ids(tiny_tok, "quopri.py", 90))]
    variants = {"a": {"max_steps": 20, "eval_every": 5}, "a-again": {"max_steps": 20, "eval_every": 5}, "b": {"max_steps": 20, "eval_every": 5, "lr": 1.0}}
    res = screen(em, calib, docs, [3], 32, variants, "full", budgets=(0.25, 8.0), recall_queries=10, loss_from=40, progress=lambda m: None)
    assert set(res["recall"]) == {"random", "a", "a-again", "b"} and set(res["recall"]["a"]) == {"1/4", "8"}
    assert all(0 <= v <= 1 for per in res["recall"].values() for v in per.values())
    assert all(0 < v <= 1 + 1e-6 for per in res["mass"].values() for v in per.values())
    assert res["recall"]["a"] == res["recall"]["a-again"] and res["calibration"]["a"] == res["calibration"]["a-again"]
    assert res["calibration"]["a"]["3"]["steps"] > 0
    assert parse_variant("g:group_labels=true,lr=0.3") == ("g", {"group_labels": True, "lr": 0.3})
    for bad in ("g:nope=1", "g:group_labels=maybe", ":lr=1"):
        with pytest.raises(HatacError):
            parse_variant(bad)
    with pytest.raises(HatacError, match="not hashed layers"):
        screen(em, calib, docs, [0], 32, variants, "full")


def test_eval_measures_the_artifact_it_is_given(tiny_tok, calib_file, tmp_path, monkeypatch):
    """``hatac eval ARTIFACT``: the artifact's own W are hatac-learned's (never recalibrated), and its recipe sets
    the width, the dense layers, the sink/recent variant and adds its budget to the sweep."""
    import importlib

    from hatac.artifact.store import read_hash_weights
    from hatac.artifact.manifest import read_manifest

    cmd = importlib.import_module("hatac.evaluation.command")
    run_mod = importlib.import_module("hatac.evaluation.run")
    cfg = hatac.HataConfig(hash="random", rbits=64, budget=24, sink=1, recent=2, dense_layers=2, seed=3)
    art = hatac.save(hatac.convert(tiny_model("llama"), cfg), tmp_path / "art", tokenizer=tiny_tok)
    saved_w = read_hash_weights(art, read_manifest(art))
    docs = [Document("argparse.py", "code", _stdlib_ids(tiny_tok, "argparse.py", 200))]
    monkeypatch.setattr(run_mod, "eval_documents", lambda *a, **k: docs)
    monkeypatch.setattr(cmd, "calibrated_weights", lambda *a, **k: pytest.fail("an artifact's W must not be recalibrated"))
    seen = {}
    real_run = cmd.run

    def spy(*args, learn_weights, **kw):
        seen["w"] = learn_weights(64)
        return real_run(*args, learn_weights=learn_weights, **kw)

    monkeypatch.setattr(cmd, "run", spy)
    lines = []
    overrides = dict(metrics=("recall", "perplexity"), n_docs=1, doc_tokens_min=200, doc_tokens_max=200, loss_from=96,
                     recall_queries=8, fractions=(1 / 8,), counts=(), calib_tokens=150)  # fmt: skip
    res = cmd.evaluate(str(art), tmp_path / "out", device="cpu", calib=calib_file, overrides=overrides, progress=lines.append)
    assert set(seen["w"]) == set(saved_w) and all(torch.equal(seen["w"][k], saved_w[k]) for k in saved_w)
    s = res["settings"]
    assert s["artifact"] == str(art) and s["rbits"] == (64,) and s["main_rbits"] == 64 and s["dense_layers"] == 2
    assert s["budget_labels"] == ["1/8", "24"] and (1, 2) in s["hatac_forced"]
    assert set(res["recall"]["hatac-learned"]) == {"64"}
    assert list(res["perplexity"]["hatac-learned s1r2"]) == ["1/8", "24"]
    assert any(line.startswith(f"evaluating the artifact {art}") for line in lines)
