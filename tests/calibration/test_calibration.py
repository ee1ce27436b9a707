"""Calibration core: labels, bounded collection, the recall metric, and learned-vs-random hashing."""

from __future__ import annotations

import pytest
import torch

from hatac.calibration import (
    PairCollector,
    TrainConfig,
    calibrate,
    hata_labels,
    random_weights,
    recall_at_k,
)
from hatac.calibration.collect import PairBatch
from hatac.calibration.synthetic import SyntheticHeads, build_collector


@pytest.fixture(autouse=True)
def _one_thread():
    """Timings and bitwise determinism independent of machine load."""
    prev = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(prev)


# --------------------------------------------------------------------------------------------- labels
def test_labels_top_ten_percent_linear_20_to_1():
    scores = torch.randn(3, 40)
    valid = torch.zeros(3, 40, dtype=torch.bool)
    valid[0, :30] = True  # 3 positives: 20, 10.5, 1
    valid[1, :5] = True  # 1 positive: 20
    valid[2, :] = True  # 4 positives: 20, 13.67, 7.33, 1
    lab = hata_labels(scores, valid)
    for row, n, want in ((0, 30, [20.0, 10.5, 1.0]), (1, 5, [20.0]), (2, 40, [20.0, 41 / 3, 22 / 3, 1.0])):
        order = scores[row, :n].argsort(descending=True)
        m = len(want)
        torch.testing.assert_close(lab[row, order[:m]], torch.tensor(want))
        assert (lab[row, order[m:]] == -1).all()
        assert (lab[row, n:] == 0).all()


def test_labels_broadcast_causal_mask():
    scores = torch.arange(12.0).view(1, 1, 12).expand(2, 3, 12)  # larger slot = larger score
    pos = torch.tensor([[0, 9, 11]])
    valid = (torch.arange(12).view(1, 1, 12) <= pos.unsqueeze(-1))  # (1, 3, 12)
    lab = hata_labels(scores, valid)
    assert lab.shape == (2, 3, 12)
    assert lab[0, 0, 0] == 20 and (lab[0, 0, 1:] == 0).all()
    assert lab[1, 1, 9] == 20 and (lab[1, 1, :9] == -1).all() and (lab[1, 1, 10:] == 0).all()
    assert lab[0, 2, 11] == 20 and lab[0, 2, 10] == 1 and (lab[0, 2, :10] == -1).all()



def test_group_labels_rank_every_head_of_a_group_by_the_summed_score():
    """TrainConfig.group_labels: each query head is labelled by its KV group's summed q.k (what selection
    and recall rank by), not its own; switching back restores the paper's per-head labels."""
    from hatac.calibration.train import train_layer

    g = torch.Generator().manual_seed(0)
    q, k = torch.randn(2, 6, 5, 8, generator=g), torch.randn(2, 2, 30, 8, generator=g)  # Hq 6 = 2 groups of 3
    pos = torch.tensor([[9, 14, 19, 24, 29], [5, 10, 15, 20, -1]])
    b = PairBatch(q=q, k=k, pos=pos)
    per_head = b.labels().clone()
    torch.testing.assert_close(per_head, hata_labels(b.exact_scores(), b.valid.unsqueeze(1)))
    b.set_group_labels(True)
    grouped = hata_labels(b.exact_scores().reshape(2, 2, 3, 5, 30).sum(2), b.valid.unsqueeze(1))  # (P, Hkv, n, L)
    lab = b.labels()
    for h in range(6):
        assert torch.equal(lab[:, h], grouped[:, h // 3])
    assert not torch.equal(lab, per_head)
    b.set_group_labels(False)
    assert torch.equal(b.labels(), per_head)
    batches = _small_collector().batches(0, "train", 1 << 24, "cpu")
    train_layer(batches, [], random_weights([0], 2, 32, 32)[0], 0.1, TrainConfig(max_steps=2, eval_every=1, group_labels=True))
    assert all(bt.group_labels for bt in batches)


# ------------------------------------------------------------------------------------------ collector
def _qk(hq, hkv, s, d, seed):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(hq, s, d, generator=g), torch.randn(hkv, s, d, generator=g)


def test_collector_samples_spread_positions_and_same_ones_per_layer():
    col = PairCollector(4, 2, 8, queries_per_prompt=16, min_pos=8, seed=3)
    q, k = _qk(4, 2, 500, 8, 0)
    for layer in (2, 5):
        assert col.add(layer, q, k) == 16
    b2, b5 = col.blocks(2)[0], col.blocks(5)[0]
    pos = b2.pos
    assert torch.equal(pos, b5.pos) and torch.equal(b2.heldout, b5.heldout)
    assert pos.min() >= 8 and pos.max() <= 499 and (pos.diff() > 0).all()
    assert pos.min() < 8 + 492 / 16 and pos.max() >= 499 - 492 / 16  # one per stratum: spread over the prompt
    # Stored: the sampled query vectors and keys 0..last position, nothing per pair.
    assert b2.queries.shape == (4, 16, 8) and b2.keys.shape == (2, int(pos[-1]) + 1, 8)
    torch.testing.assert_close(b2.queries, q[:, pos])
    torch.testing.assert_close(b2.keys, k[:, : int(pos[-1]) + 1])
    # Same seed -> same sample; different seed -> different positions.
    other = PairCollector(4, 2, 8, queries_per_prompt=16, min_pos=8, seed=3)
    other.add(0, q, k)
    assert torch.equal(other.blocks(0)[0].pos, pos)
    other = PairCollector(4, 2, 8, queries_per_prompt=16, min_pos=8, seed=4)
    other.add(0, q, k)
    assert not torch.equal(other.blocks(0)[0].pos, pos)


def test_collector_flat_index_ranges_reconstruct_pairs():
    col = PairCollector(4, 2, 8, queries_per_prompt=5, min_pos=4, seed=0)
    prompts = [_qk(4, 2, s, 8, i) for i, s in enumerate((40, 25, 60))]
    for q, k in prompts:
        col.add(0, q, k)
    flat = col.flat(0)
    n = flat["pos"].numel()
    assert flat["queries"].shape == (n, 4, 8) and n == col.n_queries(0) == 15
    by_id = {b.prompt_id: b for b in col.blocks(0)}
    i = 0
    for b in col.blocks(0):  # flat follows the stored block order
        q, k = prompts[b.prompt_id]
        for s in range(b.pos.numel()):
            p, off = int(flat["pos"][i]), int(flat["key_offset"][i])
            torch.testing.assert_close(flat["queries"][i], q[:, p])
            torch.testing.assert_close(flat["keys"][:, off : off + p + 1], k[:, : p + 1])
            i += 1
    assert len(by_id) == 3


def test_collector_never_exceeds_caps():
    cap_k, cap_q = 600, 40
    col = PairCollector(4, 2, 16, queries_per_prompt=8, min_pos=4, max_keys_per_layer=cap_k,
                        max_queries_per_layer=cap_q, seed=1, store_dtype=torch.bfloat16)
    g = torch.Generator().manual_seed(0)
    for i in range(60):
        s = int(torch.randint(10, 900, (1,), generator=g))  # some prompts longer than the key cap
        q, k = _qk(4, 2, s, 16, i)
        col.add(0, q, k)
        assert col.n_keys(0) <= cap_k and col.n_queries(0) <= cap_q
        assert col.nbytes(0) <= cap_k * 2 * 16 * 2 + cap_q * 4 * 16 * 2
    assert col.prompts_seen(0) == 60
    assert all(b.keys.dtype == torch.bfloat16 for b in col.blocks(0))
    # Kept prompts are those with the smallest priorities among all seen (bottom-k sampling).
    kept = {b.prompt_id for b in col.blocks(0)}
    assert 0 < len(kept) < 60


def test_collector_split_is_disjoint_and_about_the_fraction():
    col = PairCollector(2, 1, 8, queries_per_prompt=20, min_pos=4, heldout_fraction=0.25, seed=0)
    for i in range(20):
        col.add(0, *_qk(2, 1, 200, 8, i))
    n_tr, n_ho = col.n_queries(0, "train"), col.n_queries(0, "heldout")
    assert n_tr + n_ho == col.n_queries(0) == 400
    assert 70 <= n_ho <= 130
    tr = col.batches(0, "train")
    ho = col.batches(0, "heldout")
    assert sum(int(b.qmask.sum()) for b in tr) == n_tr and sum(int(b.qmask.sum()) for b in ho) == n_ho


def test_collector_can_hold_out_whole_prompts():
    """heldout_prompts: every 4th prompt (fraction 0.25) is held out whole, the others train whole, so no
    held-out query attends to keys a training query saw."""
    col = PairCollector(2, 1, 8, queries_per_prompt=20, min_pos=4, heldout_fraction=0.25, seed=0, heldout_prompts=True)
    for i in range(12):
        col.add(0, *_qk(2, 1, 200, 8, i))
    for b in col.blocks(0):
        assert bool(b.heldout.all()) == (b.prompt_id % 4 == 3) and bool(b.heldout.any()) == (b.prompt_id % 4 == 3)
    assert col.n_queries(0, "heldout") == 3 * 20 and col.n_queries(0, "train") == 9 * 20


def test_collector_accepts_bf16_and_batch_dim():
    col = PairCollector(4, 2, 8, queries_per_prompt=4, min_pos=2)
    q, k = _qk(4, 2, 30, 8, 0)
    assert col.add(0, q[None].bfloat16(), k[None].bfloat16()) == 4
    assert col.blocks(0)[0].keys.dtype == torch.bfloat16
    with pytest.raises(ValueError):
        col.add(0, q[:3], k)


def test_batches_respect_pair_budget():
    col = PairCollector(4, 2, 8, queries_per_prompt=8, min_pos=4, seed=0)
    for i, s in enumerate((50, 60, 200, 210, 400)):
        col.add(0, *_qk(4, 2, s, 8, i))
    batches = col.batches(0, "all", max_pairs=4 * 8 * 220 * 2)
    assert sum(int(b.qmask.sum()) for b in batches) == col.n_queries(0)
    for b in batches:
        assert b.pairs <= 4 * 8 * 220 * 2 or b.q.shape[0] == 1


# --------------------------------------------------------------------------------------------- metric
def test_recall_hand_computed():
    # One KV head, two query heads, D = 2; every hash bit is sign(x[0]) (all 32 columns = e0).
    w = torch.zeros(1, 2, 32)
    w[0, 0, :] = 1.0
    k = torch.tensor([[1.0, 5.0], [-1.0, 4.0], [2.0, -3.0], [-2.0, 1.0]]).view(1, 1, 4, 2)
    qa, qb = torch.tensor([1.0, 1.0]), torch.tensor([1.0, 0.0])
    q = torch.stack([torch.stack([qa, qa]), torch.stack([qb, qb])]).view(1, 2, 2, 2)  # (P, Hq, n, D)
    pos = torch.tensor([[3, 1]])
    batch = PairBatch(q=q, k=k, pos=pos)
    # Query at pos 3: group scores (qa + qb).k = [7, 2, 1, -3] -> oracle {0, 1}; Hamming: keys 0 and 2
    # share the queries' bit (distance 0), keys 1 and 3 do not (64) -> hash {0, 2}: recall 1/2.
    # Query at pos 1: budget 2 keeps both causal keys on either side: recall 1. Mean 0.75.
    assert recall_at_k(w, [batch], budget=2) == pytest.approx(0.75)
    # Budget as a fraction: ceil(0.5 * 4) = 2 and ceil(0.5 * 2) = 1 -> oracle {0} for pos 1, hash {0}.
    assert recall_at_k(w, [batch], budget=0.5) == pytest.approx(0.75)
    # Padded query rows (pos -1) do not count.
    padded = PairBatch(q=torch.cat([q, torch.zeros(1, 2, 1, 2)], 2), k=k, pos=torch.tensor([[3, 1, -1]]))
    assert recall_at_k(w, [padded], budget=2) == pytest.approx(0.75)


# -------------------------------------------------------------------------------------------- training
SMALL = dict(n_layers=1, n_prompts=8, length=256, hq=4, hkv=2, d=32)


def _small_collector(seed=0):
    return build_collector(seed=seed, queries_per_prompt=24, **SMALL)


def test_random_weights_reproducible_per_layer():
    a = random_weights([0, 3], 2, 16, 32, seed=7)
    b = random_weights([3], 2, 16, 32, seed=7)
    assert a[3].shape == (2, 16, 32) and a[3].dtype == torch.float32
    assert torch.equal(a[3], b[3]) and not torch.equal(a[0], a[3])
    assert not torch.equal(random_weights([3], 2, 16, 32, seed=8)[3], a[3])


def test_learned_beats_random_on_heldout():
    col = _small_collector()
    lines = []
    res = calibrate(col, [0], 32, 2, 4, rbits=32, budget=0.1, seed=0, device="cpu",
                    progress=lines.append, config=TrainConfig(max_steps=120, normalize=True))  # the rescaled option, strongest on synthetic data
    st = res.stats[0]
    assert res.weights[0].shape == (2, 32, 32) and res.weights[0].device.type == "cpu"
    assert len(lines) == 1 and "layer 0" in lines[0]
    assert st["n_heldout"] > 0 and st["n_keys"] == col.n_keys(0)
    assert st["recall_learned"] >= st["recall_random"] + 0.10, st


def test_paper_config_trains():
    res = calibrate(_small_collector(), [0], 32, 2, 4, rbits=32, budget=0.1, seed=0,
                    config=TrainConfig.paper(max_steps=40, eval_every=10))
    st = res.stats[0]
    assert 0 < st["steps"] <= 40 and st["recall_learned"] >= st["recall_random"]


def test_calibration_is_deterministic():
    cfg = TrainConfig(max_steps=30, eval_every=10)
    col = _small_collector()
    a = calibrate(col, [0], 32, 2, 4, rbits=32, budget=0.1, seed=5, config=cfg)
    b = calibrate(_small_collector(), [0], 32, 2, 4, rbits=32, budget=0.1, seed=5, config=cfg)
    c = calibrate(col, [0], 32, 2, 4, rbits=32, budget=0.1, seed=6, config=cfg)
    assert torch.equal(a.weights[0], b.weights[0])
    assert a.stats[0]["recall_learned"] == b.stats[0]["recall_learned"]
    assert not torch.equal(a.weights[0], c.weights[0])


def test_learned_weights_hash_with_reference_ops():
    """The returned W plugs into hatac.reference.hash_encode as is."""
    from hatac.reference import hash_encode

    res = calibrate(_small_collector(), [0], 32, 2, 4, rbits=64, budget=0.1, seed=0,
                    config=TrainConfig(max_steps=10, eval_every=5))
    q, _ = SyntheticHeads(4, 2, 32).prompt(16, 0)
    assert hash_encode(q[None], res.weights[0]).shape == (1, 4, 16, 2)


@pytest.mark.parametrize("unit_init", [True, False])
def test_training_starts_from_the_random_hash(unit_init):
    """The start is the sign-random-projection W: with ``unit_init`` (the default) its columns scaled to
    unit norm, which hashes every vector as the standard-normal W does; the paper's start is that W itself."""
    from hatac.calibration.train import train_layer

    col = _small_collector()
    batches = col.batches(0, "train", 1 << 20, "cpu")
    init = random_weights([0], 2, 32, 32)[0]
    res = train_layer(batches, [], init, 0.1, TrainConfig(max_steps=0, unit_init=unit_init))
    assert res.steps == 0 and res.recall_best == res.recall_init
    norms = res.w.norm(dim=1)
    assert torch.allclose(norms, torch.ones_like(norms)) if unit_init else torch.equal(res.w, init)
    x = torch.randn(100, 32, generator=torch.Generator().manual_seed(0))
    got, want = torch.einsum("nd,hdr->hnr", x, res.w), torch.einsum("nd,hdr->hnr", x, init)
    clear = want.abs() > 1e-4 * want.abs().mean()  # products within rounding of 0 may take either sign
    assert clear.float().mean() > 0.99 and torch.equal((got > 0)[clear], (want > 0)[clear])
    assert TrainConfig().unit_init and not TrainConfig.paper().unit_init


def test_layers_that_do_not_beat_their_start_are_reported(monkeypatch):
    """A layer whose training never beat its random start is named in the progress output and the manifest."""
    import hatac
    from hatac.calibration import learned as learned_mod
    from models import tiny_model

    real = learned_mod.calibrate

    def stuck_on_layer_3(collector, layers, *a, **kw):
        res = real(collector, layers, *a, **kw)
        for layer in layers:
            if layer == 3:
                res.stats[layer]["recall_learned"] = res.stats[layer]["recall_random"]
        return res

    monkeypatch.setattr(learned_mod, "calibrate", stuck_on_layer_3)
    lines = []
    g = torch.Generator().manual_seed(0)
    samples = [torch.randint(3, 300, (96,), generator=g).tolist() for _ in range(4)]
    hm = hatac.convert(tiny_model("llama"), hatac.HataConfig(budget=0.25, rbits=64), samples=samples, progress=lines.append)
    assert hm.manifest["calibration"]["layers_not_improved"] == [3]
    assert any(line.startswith("warning: 1 of 2 layers did not beat their random start") and line.endswith(": 3") for line in lines), lines
