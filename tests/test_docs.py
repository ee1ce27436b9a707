"""The docs stay a reader's docs: sizes, result files cited and present, no development-history labels."""

import re
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DOCS = sorted((ROOT / "docs").glob("*.md"))
RESULTS = sorted(p for d in ("perf", "accuracy") for p in (ROOT / "docs" / d).iterdir() if p.is_file())


def _lines(p: Path) -> int:
    return len(p.read_text().splitlines())


def test_sizes():
    assert _lines(ROOT / "README.md") <= 150
    assert _lines(ROOT / "docs" / "PERFORMANCE.md") <= 300
    assert sum(map(_lines, DOCS)) + _lines(ROOT / "README.md") <= 1500


def test_result_files_are_few_cited_and_present():
    assert len(RESULTS) <= 25
    text = "\n".join(p.read_text() for p in [ROOT / "README.md", *DOCS])
    cited = set(re.findall(r"\b((?:perf|accuracy)/[\w.\-]+\.\w+)", text))
    files = {str(p.relative_to(ROOT / "docs")) for p in RESULTS}
    assert cited - files == set(), "docs cite result files that do not exist"
    assert files - cited == set(), "result files no doc cites"


def test_no_history_labels_in_the_tree():
    out = subprocess.run(["git", "grep", "-n", "-i", "-E", r"sessions? [0-9]+|_s[0-9]+\.(json|md|png|txt)|issue ?#[0-9]+",
                          "--", ".", ":!tests/test_docs.py"], cwd=ROOT, capture_output=True, text=True)
    assert out.returncode in (0, 1) and out.stdout == "", out.stdout[:2000]
