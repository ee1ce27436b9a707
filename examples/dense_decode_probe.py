"""Probe (GPU): hatac's dense decode (``sparse_attention`` with no indices, what dense layers and the dense
baseline of ``hatac bench generate`` run) against ``scaled_dot_product_attention(enable_gqa=True)`` on the same
caches, over the launch geometries of ``DENSE_CONFIG`` in ``hatac/kernels/sparse_attention.py``.

    PYTHONPATH=. python examples/dense_decode_probe.py [--shapes 8x32768 3x131072] [--grid JSON] [--out FILE]

Why: the end-to-end speedups are measured against a dense model whose attention is this kernel, so it must be
as fast as SDPA's flash-decoding, or the baseline is weak. Each geometry is first checked against SDPA
(relative error under 1e-2), then graph-timed (``hatac.bench_kernels._graph_bench``: CUDA-graph replays,
L2 flushed between, median); prints the default, the best and SDPA per shape, and writes every time as JSON.
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import sys
from pathlib import Path
from unittest import mock

import torch

import hatac.kernels.registry  # noqa: F401
from hatac.bench_kernels import _graph_bench

ATT = sys.modules["hatac.kernels.sparse_attention"]
GRID = {"block_n": [64, 128], "warps": [4, 8], "stages": [2, 3, 4], "programs": [264, 528, 1056, 2112]}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--shapes", nargs="*", default=["1x8192", "1x32768", "1x131072", "8x8192", "8x32768", "8x131072", "3x131072"],
                    help="BATCHxCONTEXT, 32 query / 8 KV heads, head_dim 128, bf16")
    ap.add_argument("--out", default="dense_decode_probe.json")
    ap.add_argument("--grid", type=json.loads, default=GRID, help=f"geometries to try, as JSON (default {json.dumps(GRID)})")
    args = ap.parse_args()
    grid = args.grid
    hq, hkv, d = 32, 8, 128
    report = []
    for shape in args.shapes:
        b, t = (int(v) for v in shape.split("x"))
        gen = torch.Generator(device="cuda").manual_seed(t + b)
        kc = torch.randn(b, hkv, t, d, device="cuda", dtype=torch.bfloat16, generator=gen)
        vc = torch.randn(b, hkv, t, d, device="cuda", dtype=torch.bfloat16, generator=gen)
        q = torch.randn(b, hq, 1, d, device="cuda", dtype=torch.bfloat16, generator=gen)
        pos = torch.full((b, 1), t - 1, device="cuda", dtype=torch.int64)
        scale = 1 / math.sqrt(d)
        sdpa = lambda: torch.nn.functional.scaled_dot_product_attention(q, kc, vc, scale=scale, enable_gqa=True)  # noqa: E731
        want = sdpa().float()
        entry = {"batch": b, "context": t, "sdpa_us": _graph_bench(sdpa) * 1e3, "geometries": []}
        mine = lambda: ATT.sparse_attention(q, kc, vc, None, scale, q_pos=pos)  # noqa: E731
        entry["default_us"] = _graph_bench(mine) * 1e3
        for values in itertools.product(*grid.values()):
            setting = dict(zip(grid, values))
            with mock.patch.dict(ATT.DENSE_CONFIG, setting):
                try:
                    err = ((mine().float() - want).norm() / want.norm()).item()
                    if not err < 1e-2:
                        raise RuntimeError(f"rel. error {err:.2e} against SDPA")
                    us = _graph_bench(mine) * 1e3
                except Exception as e:  # a geometry that does not compile, fit or agree
                    entry["geometries"].append({**setting, "error": str(e).splitlines()[0][:160]})
                    continue
            entry["geometries"].append({**setting, "us": round(us, 2), "rel_err": err})
        ok = [g for g in entry["geometries"] if "us" in g]
        entry["best"] = min(ok, key=lambda g: g["us"])
        report.append(entry)
        print(f"B={b} T={t}: SDPA {entry['sdpa_us']:.1f} us, hatac default {entry['default_us']:.1f} us, best "
              f"{entry['best']['us']:.1f} us {({k: entry['best'][k] for k in grid})}", flush=True)
        kc = vc = None  # free the caches (the lambdas above close over the names)
        torch.cuda.empty_cache()
    # geometries ranked by their mean time relative to SDPA over every shape
    keys = [tuple(g[k] for k in grid) for g in report[0]["geometries"]]
    rank = []
    for i, key in enumerate(keys):
        rel = [e["geometries"][i].get("us", math.inf) / e["sdpa_us"] for e in report]
        rank.append((sum(rel) / len(rel), max(rel), dict(zip(grid, key))))
    rank.sort(key=lambda r: r[0])
    print("best geometries over all shapes (mean and worst time / SDPA):")
    for mean, worst, setting in rank[:8]:
        print(f"  {mean:.3f} {worst:.3f} {setting}")
    Path(args.out).write_text(json.dumps({"device": torch.cuda.get_device_name(), "shapes": report,
                                          "ranked": [[m, w, s] for m, w, s in rank]}, indent=1))


if __name__ == "__main__":
    main()
