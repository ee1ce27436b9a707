"""How fast can this GPU read a decode step's two kinds of bytes? A wider sweep of the reads probe (GPU).

``hatac bench kernels`` bounds the step by its reads: every key code streamed, then the selected K and V rows
gathered (``code_stream_ms``, ``gather_ms``, ``reads_ms``), each the best of a few launch geometries. This
probe asks whether those few geometries undersell the GPU: it sweeps the same two probe kernels
(``hatac.bench_kernels.stream_kernel`` and ``gather_kernel``) over programs, rows a step, warps and pipeline
stages, on the rows hatac's select really picks, and also gathers the same number of rows laid out
contiguously (the first k slots), which separates the cost of random rows from the cost of the bytes. Rates
are bytes read over graph-timed median time (one graph launch included, as in the bench).

    python examples/read_rate_probe.py --batch 8 --contexts 32768 131072 --budgets 0.03125 0.015625
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from hatac import reference as ref  # noqa: E402
from hatac import bench_kernels as bk  # noqa: E402

GATHER = dict(programs=(528, 1056, 2112, 4224), blocks=(32, 64, 128), warps=(4, 8), stages=(None, 1, 4))
STREAM = dict(blocks=(1024, 4096, 8192), iters=(1, 4, 16, 64), warps=(4, 8))


def _best(launches) -> tuple[float, float]:
    """(fastest, median over geometries) graph-timed ms."""
    times = sorted(bk._graph_bench(launch) for launch in launches)
    return times[0], times[len(times) // 2]


def run(batch: int, contexts, budgets, out: Path | None) -> list[dict]:
    enc, sel, _ = bk._kernels()
    bw = bk.copy_bandwidth()
    print(f"copy bandwidth {bw / 1e12:.2f} TB/s (read + write)", flush=True)
    rows = []
    for t in contexts:
        q, kn, kc, vc, w, codes, pos = bk.decode_problem(batch, t, seed=t + batch)
        words = codes.contiguous().view(torch.int32)
        code_bytes = words.numel() * 4
        s_bench, _ = bk.code_stream(codes)
        s_best, s_med = _best(bk.stream_launches(words, **STREAM))
        b, hkv, _, d = kc.shape
        base = torch.arange(b * hkv, device=kc.device, dtype=torch.int64)[:, None] * t
        for budget in budgets:
            k = ref.topk_width(t, budget)
            qc = enc.hash_encode_step(q, kn, w, codes, pos)
            picked = bk.selected_rows(sel.hamming_topk(qc, codes, pos, k, budget), t)
            first = (torch.arange(k, device=kc.device, dtype=torch.int64)[None, :] + base).contiguous()
            row_bytes = 2 * b * hkv * k * d * kc.element_size()
            g_bench = bk.time_gather(kc, vc, picked, d, d)
            g_best, g_med = _best(bk.gather_launches(kc, vc, picked, d, d, **GATHER))
            c_best, _ = _best(bk.gather_launches(kc, vc, first, d, d, **GATHER))
            row = {"batch": batch, "context": t, "budget": budget, "k": k, "copy_tbs": bw / 1e12,
                   "code_bytes": code_bytes, "row_bytes": row_bytes,
                   "stream_bench_ms": s_bench, "stream_best_ms": s_best, "stream_median_ms": s_med,
                   "gather_bench_ms": g_bench, "gather_best_ms": g_best, "gather_median_ms": g_med,
                   "gather_contiguous_best_ms": c_best}
            for name in ("stream_bench", "stream_best"):
                row[name.replace("stream", "stream_tbs")] = code_bytes / (row[f"{name}_ms"] * 1e-3) / 1e12
            for name in ("gather_bench", "gather_best", "gather_contiguous_best"):
                row[f"{name}_tbs"] = row_bytes / (row[f"{name}_ms"] * 1e-3) / 1e12
            rows.append(row)
            print(f"B{batch} T{t} k{k}: codes {code_bytes / 1e6:.1f} MB stream bench {s_bench * 1e3:.1f} us "
                  f"best {s_best * 1e3:.1f} ({row['stream_tbs_best']:.2f} TB/s) | rows {row_bytes / 1e6:.1f} MB "
                  f"gather bench {g_bench * 1e3:.1f} best {g_best * 1e3:.1f} ({row['gather_best_tbs']:.2f} TB/s) "
                  f"contiguous {c_best * 1e3:.1f} ({row['gather_contiguous_best_tbs']:.2f} TB/s)", flush=True)
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        (out / "read_rate_probe.json").write_text(json.dumps(
            {"device": torch.cuda.get_device_name(), "gather_sweep": GATHER, "stream_sweep": STREAM, "rows": rows}, indent=1))
    return rows


def main(argv=None):
    a = bk.probe_args(__doc__, argv)
    run(a.batch, a.contexts, a.budgets, a.out)


if __name__ == "__main__":
    main()
