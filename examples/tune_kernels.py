"""Per-kernel GPU times of the hatac decode step and a sweep of its launch geometry (the CONFIG dicts of
hatac.kernels.hamming_topk / sparse_attention), at the benchmark's decode shapes.

    PYTHONPATH=. python examples/tune_kernels.py --out tune_out [--quick]

Times come from CUDA-graph replays (GPU time, no Python launch overhead) and, per kernel, from the
torch profiler. Prints the best setting per shape and writes tune.json; the defaults in the kernel modules
come from it.
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
from hatac import reference as ref
from hatac.bench_kernels import _graph_bench, decode_problem

ENC = sys.modules["hatac.kernels.hash_encode"]
SEL = sys.modules["hatac.kernels.hamming_topk"]
ATT = sys.modules["hatac.kernels.sparse_attention"]
COMMON = sys.modules["hatac.kernels._common"]
# the last: batch 8 / 32K at 1.56%, the point of `hatac bench generate`'s 2.2x target
SHAPES = [(8, 32768, 1 / 32), (8, 131072, 1 / 64), (1, 131072, 1 / 64), (8, 8192, 1 / 32), (8, 32768, 1 / 64)]


def _us(fn) -> float:
    return _graph_bench(fn) * 1e3


def _sweep(cfg: dict, grid: dict, fn, keep: int = 4) -> list:
    base = dict(cfg)
    out = []
    for values in itertools.product(*grid.values()):
        setting = dict(zip(grid.keys(), values))
        cfg.update(setting)
        try:
            out.append([round(_us(fn), 2), setting])
        except Exception as e:  # a geometry that does not compile or fit
            out.append([float("inf"), {**setting, "error": str(e)[:160]}])
        cfg.clear()
        cfg.update(base)
    return sorted(out, key=lambda x: x[0])[:keep]


def kernel_times(fn, iters: int = 20) -> dict:
    """Mean GPU microseconds per launch of each kernel fn runs (torch profiler, CUPTI)."""
    from torch.profiler import ProfilerActivity, profile

    fn()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(iters):
            fn()
        torch.cuda.synchronize()
    acc = {}
    for e in prof.key_averages():
        us = getattr(e, "self_device_time_total", 0) or getattr(e, "self_cuda_time_total", 0)
        if us > 0 and not e.key.startswith(("aten::", "cuda", "Runtime", "Activity")):
            acc[e.key[:60]] = round(us / iters, 2)
    return dict(sorted(acc.items(), key=lambda kv: -kv[1]))


def time_variants(entry: dict, variants: dict, hint_cases, step=None) -> None:
    """``hint_cases()`` under each named CONFIG override (an "attention" entry overrides the attention
    CONFIG), two interleaved turns so that drift shows as the spread within a variant; prints the best,
    and with ``step`` each variant's per-kernel times with the hint hitting (profiler)."""
    entry["variants"] = {name: [] for name in variants}
    entry["variant_kernels_us"] = {}
    for turn in range(2):
        for name, override in variants.items():
            override = dict(override)
            with mock.patch.dict(ATT.CONFIG, override.pop("attention", {})), mock.patch.dict(SEL.CONFIG, override):
                entry["variants"][name].append(hint_cases())
                if step is not None and turn == 0:
                    entry["variant_kernels_us"][name] = kernel_times(step)
    for name, runs in entry["variants"].items():
        best = {case: round(min(run[case] for run in runs), 2) for case in runs[0]}
        kernels = entry["variant_kernels_us"].get(name, {})
        print(json.dumps({**{key: entry[key] for key in ("batch", "context", "k", "spare")}, "variant": name, **best,
                          "kernels_us": kernels}), flush=True)


def time_select_blocks(entry: dict, hint_cases) -> None:
    """``hint_cases()`` over the fine/write block size and warps."""
    entry["select_blocks"] = []
    for block_t, warps in itertools.product([1024, 512, 256], [None, 2]):
        with mock.patch.dict(SEL.CONFIG, {"select_block_t": block_t, "select_warps": warps}):
            entry["select_blocks"].append({"select_block_t": block_t, "select_warps": warps, **hint_cases()})
        print(json.dumps({**{key: entry[key] for key in ("batch", "context", "k")}, **entry["select_blocks"][-1]}), flush=True)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="tune_out")
    ap.add_argument("--quick", action="store_true", help="per-kernel times only, no sweep")
    ap.add_argument("--only", type=int, nargs="*", help="indices into SHAPES")
    ap.add_argument("--select-only", action="store_true", help="sweep the select launches only")
    ap.add_argument("--score-only", action="store_true", help="sweep the scoring launch only")
    ap.add_argument("--select-blocks", action="store_true",
                    help="the whole step over the fine/write block size and warps, hint hitting, missing and off")
    ap.add_argument("--variants", metavar="JSON",
                    help='the whole step, hint hitting, missing and off, under each of named select CONFIG overrides '
                         '(an "attention" entry overrides the attention CONFIG), e.g. '
                         '\'{"default": {}, "capped": {"score_maxnreg": 64, "attention": {"maxnreg": 96}}}\'; timed in turns')
    ap.add_argument("--spare", type=int, default=0,
                    help="cache slots past the context (a static cache's room to grow, as in `hatac bench generate`)")
    args = ap.parse_args()
    try:
        variants = json.loads(args.variants) if args.variants else None
    except json.JSONDecodeError as e:
        ap.error(f"--variants is not JSON: {e}")
    if variants is not None and not (isinstance(variants, dict) and all(isinstance(v, dict) for v in variants.values())):
        ap.error('--variants takes an object of named overrides, e.g. \'{"default": {}}\'')
    for name, override in (variants or {}).items():
        unknown = [key for key in override if key != "attention" and key not in SEL.CONFIG]
        unknown += [f"attention.{key}" for key in override.get("attention", {}) if key not in ATT.CONFIG]
        if unknown:
            ap.error(f"--variants {name!r}: no such setting {', '.join(unknown)}")
    if args.spare < 0:
        ap.error("--spare must be 0 or more")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    hq, hkv, d, r = 32, 8, 128, 128
    report = []
    for b, t, budget in [SHAPES[i] for i in args.only] if args.only else SHAPES:
        k = ref.topk_width(t, budget)
        q, kn, kc, vc, w, codes, pos = decode_problem(b, t + args.spare, hq, hkv, d, r)
        pos -= args.spare  # the query at position t - 1 of a cache of t + spare slots
        qc = ENC.hash_encode_step(q, kn, w, codes, pos)
        idx = SEL.hamming_topk(qc, codes, pos, k, budget)
        scale = 1 / math.sqrt(d)

        def step():
            qc_ = ENC.hash_encode_step(q, kn, w, codes, pos)
            return ATT.sparse_attention(q, kc, vc, SEL.hamming_topk(qc_, codes, pos, k, budget, k_cache=kc, v_cache=vc), scale)

        hint = SEL.selection_hint(codes, b * hkv)

        def hint_cases() -> dict:
            """The whole step with the select's hint hitting (a graph replays one query, so every replay
            finds the bin the last left), missing (reset before every step: one small kernel more) and off."""
            res = {"hit": _us(step)}
            if hint is not None:
                res["miss"] = _us(lambda: (hint[:, 0].fill_(-1), step()))
            with mock.patch.dict(SEL.CONFIG, {"hint": False}):  # every step runs the full fine pass
                res["off"] = _us(step)
            return res

        entry = {"batch": b, "context": t, "k": k, "spare": args.spare}
        if variants is not None:
            time_variants(entry, variants, hint_cases, step)
        elif args.select_blocks:
            time_select_blocks(entry, hint_cases)
        else:
            entry["graph_us"] = {
                "dense": _us(lambda: torch.nn.functional.scaled_dot_product_attention(q, kc, vc, scale=scale, enable_gqa=True)),
                "encode": _us(lambda: ENC.hash_encode_step(q, kn, w, codes, pos)),
                "score": _us(lambda: SEL.score_keys(qc, codes, pos)),
                "select": _us(lambda: SEL.hamming_topk(qc, codes, pos, k, budget, k_cache=kc, v_cache=vc)),
                "attention": _us(lambda: ATT.sparse_attention(q, kc, vc, idx, scale)),
            }
            cases = hint_cases()
            entry["graph_us"].update(total=cases["hit"], total_no_hint=cases["off"])
            with mock.patch.dict(COMMON.PDL, {"enabled": False}):  # the kernels recompile without it
                entry["graph_us"]["total_no_pdl"] = _us(step)
            if hint is not None:
                entry["graph_us"]["total_hint_miss"] = cases["miss"]
                entry["graph_us"]["hint_reset_alone"] = _us(lambda: hint[:, 0].fill_(-1))
            entry["kernels_us"] = kernel_times(step)
            print(json.dumps({key: entry[key] for key in ("batch", "context", "k", "graph_us", "kernels_us")}), flush=True)
            if not args.quick and not args.select_only:
                entry["score"] = _sweep(
                    SEL.CONFIG,
                    {"score_block_t": [256, 512], "score_warps": [2, 4], "programs": [1024, 2048, 4096], "max_splits": [64],
                     "score_prefetch": [True, False]},
                    lambda: SEL.score_keys(qc, codes, pos),
                )
            if not args.quick and not args.score_only:
                entry["select"] = _sweep(
                    SEL.CONFIG,
                    {"select_block_t": [256, 512, 1024], "select_warps": [1, 2, 4], "select_programs": [2048, 4096],
                     "select_max_splits": [64]},
                    lambda: SEL.hamming_topk(qc, codes, pos, k, budget, k_cache=kc, v_cache=vc),
                )
            if not args.quick and not args.select_only and not args.score_only:
                entry["attention"] = _sweep(
                    ATT.CONFIG,
                    {"block_n": [32, 64], "warps": [4], "stages": [1, 2], "programs": [528, 1056]},
                    lambda: ATT.sparse_attention(q, kc, vc, idx, scale),
                )
            print(json.dumps({key: entry[key] for key in ("score", "select", "attention") if key in entry}), flush=True)
        report.append(entry)
        del kc, vc, codes
        torch.cuda.empty_cache()
    (out / "tune.json").write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
