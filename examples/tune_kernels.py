"""Sweep the launch geometry of hamming_topk and sparse_attention on the GPU (the CONFIG dicts of
hatac.kernels.hamming_topk / sparse_attention) at the decode shapes of the benchmark.

    PYTHONPATH=. python examples/tune_kernels.py --out tune_out

Prints the best setting per shape and writes tune.json; the defaults in the kernel modules come from it.
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import sys
from pathlib import Path

import torch
from triton.testing import do_bench

import hatac.kernels  # noqa: F401
from hatac import reference as ref

ENC = sys.modules["hatac.kernels.hash_encode"]
SEL = sys.modules["hatac.kernels.hamming_topk"]
ATT = sys.modules["hatac.kernels.sparse_attention"]
SHAPES = [(8, 32768, 1 / 32), (8, 131072, 1 / 64), (1, 131072, 1 / 64), (1, 32768, 1 / 32)]


def _ms(fn) -> float:
    return float(do_bench(fn, warmup=10, rep=60, return_mode="median"))


def _sweep(cfg: dict, grid: dict, fn) -> list[tuple[float, dict]]:
    base = dict(cfg)
    out = []
    for values in itertools.product(*grid.values()):
        cfg.update(dict(zip(grid.keys(), values)))
        try:
            out.append((_ms(fn), dict(zip(grid.keys(), values))))
        except Exception as e:  # a geometry that does not compile or fit
            out.append((float("inf"), {**dict(zip(grid.keys(), values)), "error": str(e)[:200]}))
    cfg.clear()
    cfg.update(base)
    return sorted(out, key=lambda x: x[0])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="tune_out")
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    hq, hkv, d, r = 32, 8, 128, 128
    report = []
    for b, t, budget in SHAPES:
        k = ref.topk_width(t, budget)
        kc = torch.randn(b, hkv, t, d, device="cuda", dtype=torch.bfloat16)
        vc = torch.randn_like(kc)
        q = torch.randn(b, hq, 1, d, device="cuda", dtype=torch.bfloat16)
        w = torch.randn(hkv, d, r, device="cuda")
        codes = ENC.hash_encode(kc, w)
        qc = ENC.hash_encode(q, w)
        pos = torch.full((b, 1), t - 1, device="cuda")
        idx = SEL.hamming_topk(qc, codes, pos, k, budget)
        entry = {"batch": b, "context": t, "k": k}
        entry["score"] = _sweep(
            SEL.CONFIG,
            {"score_block_t": [256, 512, 1024], "score_warps": [4, 8], "programs": [1024, 2048, 4096]},
            lambda: SEL.score_keys(qc, codes, pos),
        )[:5]
        entry["select"] = _sweep(
            SEL.CONFIG,
            {"select_block_t": [512, 1024, 2048], "select_warps": [4, 8], "programs": [1024, 2048]},
            lambda: SEL.hamming_topk(qc, codes, pos, k, budget),
        )[:5]
        entry["select_default_ms"] = _ms(lambda: SEL.hamming_topk(qc, codes, pos, k, budget))
        entry["score_default_ms"] = _ms(lambda: SEL.score_keys(qc, codes, pos))
        entry["attention"] = _sweep(
            ATT.CONFIG,
            {"block_n": [32, 64], "warps": [4, 8], "stages": [1, 2, 3], "programs": [264, 528, 1056]},
            lambda: ATT.sparse_attention(q, kc, vc, idx, 1 / math.sqrt(d)),
        )[:5]
        entry["attention_default_ms"] = _ms(lambda: ATT.sparse_attention(q, kc, vc, idx, 1 / math.sqrt(d)))
        report.append(entry)
        print(json.dumps(entry), flush=True)
        del kc, vc, codes
        torch.cuda.empty_cache()
    (out / "tune.json").write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
