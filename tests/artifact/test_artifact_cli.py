"""Artifact round trip and the CLI, including every bad input it must refuse in one line."""

import json

import pytest
import torch
from typer.testing import CliRunner

import hatac
from hatac.cli import app
from hatac.artifact.manifest import MANIFEST_NAME

runner = CliRunner()


def _cli(*args):
    res = runner.invoke(app, [str(a) for a in args])
    return res.exit_code, res.output


def _assert_one_line_error(code, output, pattern):
    assert code != 0
    assert "Traceback" not in output
    errors = [line for line in output.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, output
    assert pattern in errors[0], output


@pytest.fixture(scope="module")
def artifact(llama_dir, calib_file, tmp_path_factory):
    out = tmp_path_factory.mktemp("art") / "hata"
    code, output = _cli("convert", llama_dir, "--calib", calib_file, "-o", out, "--rbits", 64, "--budget", 0.5, "--sink", 1, "--recent", 2, "--seed", 3, "--hash", "random")
    assert code == 0, output
    return out


def test_artifact_contents_and_manifest(artifact, llama_dir):
    names = {p.name for p in artifact.iterdir()}
    assert {"config.json", "model.safetensors", "hash_weights.safetensors", MANIFEST_NAME, "tokenizer.json"} <= names
    m = json.loads((artifact / MANIFEST_NAME).read_text())
    assert m["format_version"] == 1 and m["hatac_version"] == hatac.__version__
    assert m["source"]["model"] == str(llama_dir) and set(m["source"]["weights_sha256"]) == {"model.safetensors"}
    assert m["recipe"]["rbits"] == 64 and m["recipe"]["budget"] == 0.5 and m["recipe"]["sink"] == 1 and m["recipe"]["seed"] == 3
    hashed = [l for l in m["layers"] if l["hashed"]]
    assert [l["layer"] for l in hashed] == [2, 3]  # --dense-layers defaults to 2
    assert m["hash_weights"]["tensors"] == {"layer.2": [2, 64, 64], "layer.3": [2, 64, 64]}
    assert not list(artifact.parent.glob(".*partial*"))


def test_load_round_trip_matches_converted_model(artifact, llama_dir):
    from transformers import AutoModelForCausalLM

    loaded = hatac.load(artifact, device="cpu")
    fresh = hatac.convert(AutoModelForCausalLM.from_pretrained(llama_dir), hatac.HataConfig(hash="random", rbits=64, budget=0.5, sink=1, recent=2, seed=3))
    ids = torch.randint(3, 300, (2, 20))
    a = loaded.generate(ids, max_new_tokens=6, do_sample=False, pad_token_id=0)
    b = fresh.generate(ids, max_new_tokens=6, do_sample=False, pad_token_id=0)
    assert torch.equal(a, b)
    for layer, w in fresh.hash_weights.items():
        assert torch.equal(loaded.hash_weights[layer], w)


def test_inspect_and_generate(artifact):
    code, output = _cli("inspect", artifact, "--graph")
    assert code == 0, output
    assert "hashed" in output and "dense" in output and "hamming_topk" in output and "sparse_attenti" in output
    code, output = _cli("generate", artifact, "--prompt", "hello", "--max-new-tokens", 4)
    assert code == 0, output
    assert "generating up to 4 tokens" in output and "tokens in" in output and "tokens/s" in output  # progress, then speed


def test_fusions_can_be_turned_off_and_replay(llama_dir, calib_file, tmp_path):
    out = tmp_path / "separate"
    code, output = _cli("convert", llama_dir, "--calib", calib_file, "-o", out, "--rbits", 64, "--hash", "random", "--no-fuse-linears", "--no-fuse-encode")
    assert code == 0, output
    recipe = json.loads((out / MANIFEST_NAME).read_text())["recipe"]
    assert recipe["fuse_linears"] is False and recipe["fuse_encode"] is False
    loaded = hatac.load(out, device="cpu")
    targets = [n.target for n in loaded.decode_graph.graph.nodes]
    assert torch.ops.aten.split_with_sizes.default not in targets and torch.ops.hatac.hash_encode_step.default not in targets
    assert targets.count(torch.ops.aten.linear.default) == 7 * loaded.config.num_hidden_layers + 1  # and lm_head


def test_missing_model(tmp_path, calib_file):
    code, output = _cli("convert", tmp_path / "nope", "--calib", calib_file, "-o", tmp_path / "o")
    _assert_one_line_error(code, output, "does not exist")


@pytest.mark.parametrize("content,pattern", [("", "has no samples"), ('{"text": "ok"}\n{"text": \n', "calib.jsonl:2: invalid JSON"), ('{"foo": 1}\n', "calib.jsonl:1")])
def test_bad_calibration_file(llama_dir, tmp_path, content, pattern):
    calib = tmp_path / "calib.jsonl"
    calib.write_text(content)
    code, output = _cli("convert", llama_dir, "--calib", calib, "-o", tmp_path / "o")
    _assert_one_line_error(code, output, pattern)
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("opt,val,pattern", [("--rbits", 100, "--rbits"), ("--budget", 0, "--budget"), ("--budget", 2.5, "--budget"), ("--dense-layers", -1, "--dense-layers"), ("--hash", "nope", "--hash"), ("--dtype", "int3", "--dtype")])
def test_option_out_of_range(llama_dir, calib_file, tmp_path, opt, val, pattern):
    code, output = _cli("convert", llama_dir, "--calib", calib_file, "-o", tmp_path / "o", opt, val)
    _assert_one_line_error(code, output, pattern)


def test_other_format_version(artifact, tmp_path):
    import shutil

    bad = tmp_path / "bad"
    shutil.copytree(artifact, bad)
    m = json.loads((bad / MANIFEST_NAME).read_text())
    m["format_version"] = 99
    (bad / MANIFEST_NAME).write_text(json.dumps(m))
    code, output = _cli("inspect", bad)
    _assert_one_line_error(code, output, "format version 99")


def test_manifest_not_matching_tensors(artifact, tmp_path):
    import shutil

    bad = tmp_path / "bad"
    shutil.copytree(artifact, bad)
    m = json.loads((bad / MANIFEST_NAME).read_text())
    m["hash_weights"]["tensors"]["layer.3"] = [2, 64, 128]
    (bad / MANIFEST_NAME).write_text(json.dumps(m))
    code, output = _cli("generate", bad, "--prompt", "x", "--max-new-tokens", 1)
    _assert_one_line_error(code, output, "does not match its tensors")
    code, output = _cli("inspect", tmp_path)
    _assert_one_line_error(code, output, "not a hatac artifact")


def test_unconvertible_architecture(tmp_path, calib_file, tiny_tok):
    from models import save_tiny

    src = save_tiny("gemma2-softcap", tmp_path / "g2", tiny_tok)
    code, output = _cli("convert", src, "--calib", calib_file, "-o", tmp_path / "o")
    _assert_one_line_error(code, output, "cannot rewrite layer 0")
    assert not (tmp_path / "o").exists()


def test_failed_convert_leaves_no_half_written_dir(llama_dir, calib_file, tmp_path, monkeypatch):
    from hatac.artifact import store as art

    def boom(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(art, "save_file", boom)  # dies after the weights are written, before the manifest
    out = tmp_path / "o"
    code, output = _cli("convert", llama_dir, "--calib", calib_file, "-o", out)
    assert code == 130 and "interrupted" in output
    assert not out.exists() and list(tmp_path.iterdir()) == []


def test_existing_output_needs_overwrite(llama_dir, calib_file, tmp_path):
    out = tmp_path / "o"
    out.mkdir()
    (out / "keep.txt").write_text("x")
    code, output = _cli("convert", llama_dir, "--calib", calib_file, "-o", out)
    _assert_one_line_error(code, output, "--overwrite")
    assert (out / "keep.txt").exists()


@pytest.mark.parametrize("setup,pattern", [("file_parent", "is a file, not a directory"), ("not_empty", "is not empty"), ("is_file", "is not a directory")])
def test_bad_output_is_refused_before_any_work(llama_dir, calib_file, tmp_path, monkeypatch, setup, pattern):
    """An output that cannot be written is refused in one line before the model is even loaded."""
    from hatac.artifact import store as art

    def must_not_load(*a, **k):
        raise AssertionError("loaded the model before checking the output")

    monkeypatch.setattr(art, "load_source_model", must_not_load)
    if setup == "file_parent":
        (tmp_path / "afile").write_text("x")
        out = tmp_path / "afile" / "sub"
    elif setup == "not_empty":
        out = tmp_path / "o"
        out.mkdir()
        (out / "keep.txt").write_text("x")
    else:
        out = tmp_path / "o"
        out.write_text("x")
    code, output = _cli("convert", llama_dir, "--calib", calib_file, "-o", out, "--hash", "random")
    _assert_one_line_error(code, output, pattern)


def test_missing_calibration_file_is_refused_before_any_work(llama_dir, tmp_path, monkeypatch):
    from hatac.artifact import store as art

    monkeypatch.setattr(art, "load_source_model", lambda *a, **k: (_ for _ in ()).throw(AssertionError("loaded")))
    code, output = _cli("convert", llama_dir, "--calib", tmp_path / "nope.jsonl", "-o", tmp_path / "o")
    _assert_one_line_error(code, output, "does not exist")


def test_learned_hashing_defaults_to_the_bundled_prompts(llama_dir, tmp_path, monkeypatch):
    """Without --calib, learned hashing calibrates on the prompts that ship inside the package."""
    import hatac.converter
    from hatac.data.calib import load_calibration
    from hatac.data import calibration_file

    seen = {}

    def stop(model, config, samples=None, **kw):
        seen["samples"] = samples
        raise hatac.HatacError("stopped after reading the calibration")

    monkeypatch.setattr(hatac.converter, "convert", stop)
    code, output = _cli("convert", llama_dir, "-o", tmp_path / "o")
    _assert_one_line_error(code, output, "stopped after reading")
    assert "calib.jsonl" in output
    from transformers import AutoTokenizer

    assert seen["samples"] == load_calibration(calibration_file(), AutoTokenizer.from_pretrained(llama_dir), max_tokens=16384)


def test_inspect_verifies_the_tensors(artifact, tmp_path):
    import shutil

    code, output = _cli("inspect", artifact)
    assert code == 0 and "verified:" in output
    for name in ("model.safetensors", "hash_weights.safetensors"):
        bad = tmp_path / name
        shutil.copytree(artifact, bad)
        data = (bad / name).read_bytes()
        (bad / name).write_bytes(data[: len(data) - 100])
        code, output = _cli("inspect", bad)
        _assert_one_line_error(code, output, "hash_weights.safetensors has another sha256" if name.startswith("hash") else "cannot read")


def test_python_errors_name_python_arguments_and_the_cli_names_flags(llama_dir, calib_file, tmp_path):
    """The same bad setting reads as a keyword argument from Python and as a flag from the CLI."""
    with pytest.raises(hatac.HatacError) as err:
        hatac.HataConfig(dense_layers=-1)
    assert str(err.value).startswith("dense_layers must be >= 0") and "--" not in str(err.value)
    code, output = _cli("convert", llama_dir, "--calib", calib_file, "-o", tmp_path / "o", "--dense-layers", -1)
    _assert_one_line_error(code, output, "--dense-layers must be >= 0")


def test_python_learned_conversion_without_samples_says_how(llama_dir):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(llama_dir)
    with pytest.raises(hatac.HatacError, match=r"samples=.*calibration_samples\(tokenizer\).*hash='random'") as err:
        hatac.convert(model, hatac.HataConfig())
    assert "--" not in str(err.value)


def test_rich_output_keeps_whole_lines_when_not_a_terminal(artifact):
    """CliRunner's stdout is no terminal: tables and lines must not be cut at 80 columns."""
    code, output = _cli("inspect", artifact)
    assert code == 0
    assert "…" not in output
    assert any(len(line) > 80 for line in output.splitlines())
