"""Static checks of code that only runs on a GPU, so CI (no GPU) cannot execute it.

Session 3 left a ``del`` of names that no longer existed in ``bench_generate.measure``; every CPU test passed
and the first GPU run died. pyflakes finds undefined names without running anything.
"""

from pathlib import Path

import pytest

pyflakes_api = pytest.importorskip("pyflakes.api")
from pyflakes import messages, reporter  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
GPU_ONLY = [
    "hatac/bench/generate.py",
    "hatac/bench/tp.py",
    "hatac/runtime/decode_step.py",
    "hatac/distributed/allreduce.py",
    "hatac/distributed/tp.py",
    *sorted(str(p.relative_to(ROOT)) for p in (ROOT / "kernels").glob("*.py")),
]


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


@pytest.mark.parametrize("rel", GPU_ONLY)
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
