"""Static checks of every source module: undefined names (pyflakes), size, and that imports run downward.

Code that only runs on a GPU (benchmarks, CUDA paths, tensor parallel) or on a rare error path cannot be
executed by CI: a ``del`` of names that no longer exist, in a function only the GPU runs, passes every CPU
test and kills the first GPU run. pyflakes finds undefined names without running anything.
"""

import ast
from pathlib import Path

import pytest

pyflakes_api = pytest.importorskip("pyflakes.api")
from pyflakes import messages, reporter  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = {"hatac": "hatac", "passes": "hatac.passes", "kernels": "hatac.kernels", "calibration": "hatac.calibration"}
SOURCES = sorted(
    str(p.relative_to(ROOT)) for top in PACKAGES for p in (ROOT / top).rglob("*.py") if not p.relative_to(ROOT).parts[:2] == ("hatac", "kernels")
)


class _Collect(reporter.Reporter):
    def __init__(self):
        self.found = []

    def flake(self, message):
        if isinstance(message, (messages.UndefinedName, messages.UndefinedLocal, messages.UndefinedExport)):
            self.found.append(str(message))

    def syntaxError(self, filename, msg, lineno, offset, text):
        self.found.append(f"{filename}:{lineno}: {msg}")

    def unexpectedError(self, filename, msg):
        self.found.append(f"{filename}: {msg}")


@pytest.mark.parametrize("rel", SOURCES)
def test_no_undefined_names(rel):
    rep = _Collect()
    pyflakes_api.checkPath(str(ROOT / rel), rep)
    assert not rep.found, "\n".join(rep.found)


def test_the_check_can_fail(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text("def f():\n    x = 1\n    del x, y\n")
    rep = _Collect()
    pyflakes_api.checkPath(str(bad), rep)
    assert rep.found and "y" in rep.found[0]


MAX_LINES = 600


@pytest.mark.parametrize("rel", SOURCES)
def test_no_module_over_the_size_limit(rel):
    n = len((ROOT / rel).read_text().splitlines())
    assert n <= MAX_LINES, f"{rel} has {n} lines (at most {MAX_LINES}): split it by idea"


# Layers, lowest first: a module may import its own layer and those below, never one above
# (docs/ARCHITECTURE.md draws them). The package root and the CLI sit on top.
LAYERS = [
    {"errors", "version"},
    {"config", "reference", "distributed", "data"},
    {"kernels", "ops", "capture"},
    {"passes", "graphs", "hashing"},
    {"runtime"},
    {"calibration"},
    {"converter"},
    {"artifact"},
    {"export", "evaluation", "bench"},
    {"cli", "__main__", ""},
]
RANK = {name: i for i, layer in enumerate(LAYERS) for name in layer}


def _module(rel: str) -> str:
    parts = list(Path(rel).with_suffix("").parts)
    name = [*PACKAGES[parts[0]].split("."), *parts[1:]]
    return ".".join(name[:-1] if name[-1] == "__init__" else name)


def _part(module: str) -> str:
    """The layer name of a hatac module: its first component below ``hatac`` (``""`` for the root)."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def _imports(rel: str) -> set[str]:
    me = _module(rel)
    found = set()
    for node in ast.walk(ast.parse((ROOT / rel).read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = me.split(".")[: len(me.split(".")) - node.level + (rel.endswith("__init__.py"))]
                found.add(".".join(base + ([node.module] if node.module else [])))
            elif node.module:
                found |= {f"{node.module}.{a.name}" for a in node.names}
    # ``import hatac`` (the public facade: convert, save, load, imported lazily) is allowed from anywhere
    return {m for m in found if m.startswith("hatac.")}


@pytest.mark.parametrize("rel", SOURCES)
def test_imports_run_downward(rel):
    me = _part(_module(rel))
    assert me in RANK, f"{rel}: add its package {me!r} to LAYERS"
    up = sorted(m for m in _imports(rel) if _part(m) in RANK and RANK[_part(m)] > RANK[me])
    assert not up, f"{rel} ({me}) imports from a higher layer: {up}"


def test_the_layer_check_can_fail():
    assert RANK["cli"] > RANK["evaluation"] > RANK["runtime"] > RANK["kernels"]
    assert _part("hatac.cli") == "cli" and _part("hatac") == "" and _module("passes/decode/rope.py") == "hatac.passes.decode.rope"
