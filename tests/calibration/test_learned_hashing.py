"""--hash learned end to end on a tiny model: collection through the observe graph, training, manifest."""

import pytest
import torch

import hatac
from hatac.errors import HatacError
from models import tiny_model


def _samples(n=4, length=96, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(3, 300, (length,), generator=g).tolist() for _ in range(n)]


@pytest.fixture(scope="module")
def learned():
    cfg = hatac.HataConfig(hash="learned", budget=0.25, rbits=64, dense_layers=2)
    return hatac.convert(tiny_model("llama"), cfg, samples=_samples())


def test_learned_weights_are_trained_and_recorded(learned):
    from hatac.calibration import random_weights

    cal = learned.manifest["calibration"]
    assert cal["method"] == "learned" and cal["samples"] == 4 and cal["tokens"] == 4 * 96
    assert set(cal["layers"]) == {"2", "3"}
    for layer, stats in cal["layers"].items():
        assert 0.0 <= stats["recall_random"] <= 1.0 and 0.0 <= stats["recall_learned"] <= 1.0
        assert stats["n_queries"] > 4  # many query positions per prompt, not one
        assert stats["recall_learned"] >= stats["recall_random"]  # best-on-held-out includes the start
    init = random_weights([2], 2, 64, 64, 0)[2]
    assert learned.hash_weights[2].shape == init.shape
    assert not torch.equal(learned.hash_weights[2], init) or cal["layers"]["2"]["best_step"] == 0


def test_learned_is_deterministic_on_cpu(learned):
    again = hatac.convert(tiny_model("llama"), hatac.HataConfig(hash="learned", budget=0.25, rbits=64), samples=_samples())
    for layer, w in learned.hash_weights.items():
        assert torch.equal(again.hash_weights[layer], w)


def test_learned_needs_samples():
    with pytest.raises(HatacError, match="calibration prompts"):
        hatac.convert(tiny_model("llama"), hatac.HataConfig(hash="learned"))


def test_learned_model_decodes(learned):
    out = learned.generate(torch.randint(3, 300, (2, 30)), max_new_tokens=4, do_sample=False, pad_token_id=0)
    assert out.shape == (2, 34)
