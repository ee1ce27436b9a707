"""Calibration under a memory bound: layers in groups, one pass over the prompts per group, same weights."""

import torch

import hatac
from hatac.calibration import learned as learned_mod
from hatac.graphs import LayerSpec
from models import tiny_model


def _specs(n, hkv=8, hq=32, d=128):
    return {i: LayerSpec(layer=i, module_path=f"l{i}", n_heads=hq, n_kv_heads=hkv, head_dim=d, hashed=True, rbits=128, budget=0.1, sink=0, recent=0, window=0) for i in range(n)}


def test_layer_groups_respect_the_byte_budget():
    specs = _specs(30)
    per_layer = 4 * 128 * (65536 * 8 + 2048 * 32)  # PairCollector's default caps, float32
    groups = learned_mod.layer_groups(list(range(30)), specs, 32, 4 << 30)
    assert [layer for g in groups for layer in g] == list(range(30))
    assert all(len(g) * per_layer <= 4 << 30 for g in groups) and len(groups) == 3
    assert learned_mod.layer_groups([3, 5], specs, 32, 1) == [[3], [5]]  # a layer bigger than the budget is alone


def test_grouped_calibration_equals_one_group(monkeypatch):
    g = torch.Generator().manual_seed(0)
    samples = [torch.randint(3, 300, (80,), generator=g).tolist() for _ in range(3)]
    cfg = hatac.HataConfig(hash="learned", budget=0.25, rbits=64, dense_layers=1)
    whole = hatac.convert(tiny_model("llama"), cfg, samples=samples)
    monkeypatch.setattr(learned_mod, "COLLECT_BYTES", 1)  # every layer its own group and pass
    split = hatac.convert(tiny_model("llama"), cfg, samples=samples)
    assert split.manifest["calibration"]["layer_groups"] == len(split.hash_weights) > 1
    assert whole.manifest["calibration"]["layer_groups"] == 1
    for layer, w in whole.hash_weights.items():
        assert torch.equal(split.hash_weights[layer], w)
