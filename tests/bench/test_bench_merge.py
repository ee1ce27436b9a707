"""``hatac bench generate --merge``: one sweep split over several GPU calls joined into one table and plot.
Synthetic run files, so it runs without a GPU."""

from __future__ import annotations

import json

from typer.testing import CliRunner

from hatac.bench.generate import table
from hatac.cli import app


def _row(variant, batch, ctx, step, dense_step):
    return {"variant": variant, "batch": batch, "context": ctx, "step_ms": step, "speedup": dense_step / step,
            "tokens_per_s": batch * 1e3 / step}  # fmt: skip


def _run_file(folder, rows, device="NVIDIA H100 80GB HBM3", partial=False, hint=True, stacked=True):
    folder.mkdir(parents=True)
    body = {"partial": True, "rows": rows} if partial else {"device": device, "layers": 32, "compile": True, "steps": 16,
                                                            "select_hint": hint, "fuse_linears": stacked, "rows": rows}  # fmt: skip
    (folder / "bench_generate.json").write_text(json.dumps(body))
    return folder


def test_merge_joins_runs_into_one_table(tmp_path):
    a = _run_file(tmp_path / "b1", [_row("dense", 1, 32768, 8.0, 8.0), _row("hatac@0.0156", 1, 32768, 6.0, 8.0)])
    b = _run_file(tmp_path / "b8", [_row("dense", 8, 32768, 18.0, 18.0), _row("hatac@0.0156", 8, 32768, 9.0, 18.0)])
    out = tmp_path / "all"
    res = CliRunner().invoke(app, ["bench", "generate", "--merge", str(a), "--merge", str(b / "bench_generate.json"), "-o", str(out)])
    assert res.exit_code == 0, res.output
    merged = json.loads((out / "bench_generate.json").read_text())
    assert len(merged["rows"]) == 4 and merged["device"] == "NVIDIA H100 80GB HBM3"
    assert [line.split()[:2] for line in res.output.splitlines()[2:4]] == [["1", "32768"], ["8", "32768"]]
    assert "2.00x" in res.output and "1.33x" in res.output


def test_merge_refuses_mismatched_duplicate_or_partial_runs(tmp_path):
    a = _run_file(tmp_path / "a", [_row("dense", 1, 8192, 5.0, 5.0)])
    other = _run_file(tmp_path / "h200", [_row("dense", 4, 8192, 5.0, 5.0)], device="NVIDIA H200")
    dup = _run_file(tmp_path / "dup", [_row("dense", 1, 8192, 5.1, 5.1)])
    part = _run_file(tmp_path / "part", [_row("dense", 8, 8192, 5.0, 5.0)], partial=True)
    no_hint = _run_file(tmp_path / "nohint", [_row("dense", 8, 8192, 5.0, 5.0)], hint=False)
    separate = _run_file(tmp_path / "separate", [_row("dense", 8, 8192, 5.0, 5.0)], stacked=False)
    for bad, pattern in ((other, "device"), (dup, "in both"), (part, "partial"), (no_hint, "select_hint"), (separate, "fuse_linears"),
                         (tmp_path / "missing", "no bench_generate.json")):  # fmt: skip
        res = CliRunner().invoke(app, ["bench", "generate", "--merge", str(a), "--merge", str(bad), "-o", str(tmp_path / "o")])
        assert res.exit_code != 0 and pattern in res.output, res.output
        assert "Traceback" not in res.output


def test_table_marks_missing_points():
    rows = [_row("dense", 4, 65536, 12.0, 12.0), _row("hatac@0.0156", 4, 65536, 6.0, 12.0), _row("hatac@0.0313", 8, 8192, 7.0, 9.0)]
    text = table(rows)
    assert "2.00x" in text and text.splitlines()[-1].split()[2] == "-"  # batch 8 has no dense row here
