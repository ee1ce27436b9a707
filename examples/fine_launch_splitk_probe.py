"""Two probes (GPU, sm_90), docs/PERFORMANCE.md "Session 10":

1. ``select``: what the select's middle launch (the fine pass) costs a decode step when the selection hint
   hits: the step as hatac runs it (encode, score, fine, write, attention) against the same launches with the
   fine pass left out (its outputs computed once beforehand, so the write pass still selects correctly: an
   upper bound on merging it away). B8 at 32K and 128K, 1.56%.
2. ``gemm``: split-K forms of the M <= 8 decode projections (K split into 2/4/8 slices by a strided ``bmm``,
   partials in bf16 or float32, summed) against cuBLAS, alone and compiled with a residual add.

    PYTHONPATH=. python examples/fine_launch_splitk_probe.py [select] [gemm]

Times: CUDA-graph replays after an L2 flush (``hatac.bench_kernels._graph_bench``), microseconds.
"""
import json
import math
import sys

import torch
import torch.nn.functional as F
import triton

import hatac.kernels.registry  # noqa: F401  (registers the ops, loads the kernel modules)
from hatac.bench_kernels import _graph_bench, decode_problem
from hatac import reference as ref
ENC = sys.modules["hatac.kernels.hash_encode"]
SEL = sys.modules["hatac.kernels.hamming_topk"]
ATT = sys.modules["hatac.kernels.sparse_attention"]
from hatac.kernels._common import budget_args, next_pow2, pdl_args

def us(fn): return round(_graph_bench(fn) * 1e3, 2)

def splitk(x, w, s, fp32):
    M, K = x.shape; N = w.shape[0]
    a = x.view(M, s, K // s).transpose(0, 1)
    b = w.view(N, s, K // s).permute(1, 2, 0)
    p = torch.bmm(a, b, out_dtype=torch.float32) if fp32 else torch.bmm(a, b)
    return p.sum(0).to(x.dtype)

def gemms():
    dt = torch.bfloat16
    for name, n, k in [("o", 4096, 4096), ("qkv", 6144, 4096), ("down", 4096, 14336), ("gate_up", 28672, 4096)]:
        w = torch.randn(n, k, device="cuda", dtype=dt) * 0.02
        for m in (1, 4, 8):
            x = torch.randn(m, k, device="cuda", dtype=dt); h = torch.randn(m, n, device="cuda", dtype=dt)
            refv = F.linear(x, w).float()
            row = {"gemm": name, "M": m, "cublas": us(lambda: F.linear(x, w)), "floor_us": round(n * k * 2 / 3.0e12 * 1e6, 1)}
            for s in (2, 4, 8):
                for fp32 in (False, True):
                    try:
                        y = splitk(x, w, s, fp32).float()
                        err = ((y - refv).norm() / refv.norm()).item()
                        row[f"s{s}{'f' if fp32 else ''}"] = us(lambda: splitk(x, w, s, fp32)); row[f"err{s}{'f' if fp32 else ''}"] = f"{err:.1e}"
                    except Exception as e:
                        row[f"s{s}{'f' if fp32 else ''}"] = str(e)[:80]
            if m != 8 or name not in ("o", "down"):
                print(json.dumps(row), flush=True); continue
            f0 = torch.compile(lambda x, h: h + F.linear(x, w), fullgraph=True)
            row["compiled_add"] = us(lambda: f0(x, h))
            for s in (2, 4):
                f1 = torch.compile(lambda x, h, s=s: h + splitk(x, w, s, True), fullgraph=True)
                row[f"compiled_add_s{s}f"] = us(lambda: f1(x, h))
                f2 = torch.compile(lambda x, h, s=s: h + splitk(x, w, s, False), fullgraph=True)
                row[f"compiled_add_s{s}"] = us(lambda: f2(x, h))
            print(json.dumps(row), flush=True)

def select_probe(b=8, t=32768, spare=24, budget=1/64):
    hq, hkv, d, r = 32, 8, 128, 128
    k = ref.topk_width(t, budget)
    q, kn, kc, vc, w, codes, pos = decode_problem(b, t + spare, hq, hkv, d, r)
    pos -= spare
    qc = ENC.hash_encode_step(q, kn, w, codes, pos)
    scale = 1 / math.sqrt(d)
    n_rows = b * hkv
    hint = SEL.selection_hint(codes, n_rows)
    keys, hist1, p, n_splits, chunk, hist2 = SEL.score_keys(qc, codes, pos, 0, 0, 0, hint)
    pf = SEL._l2_prefetch_slots(codes, codes.shape[-1])  # as hamming_topk launches the scoring pass
    dev = q.device
    less = torch.empty((n_rows, n_splits), dtype=torch.int32, device=dev); cb = torch.empty((n_rows,), dtype=torch.int32, device=dev)
    out = torch.empty((b, hkv, 1, k), dtype=torch.int32, device=dev)
    is_frac, want_fixed, budget_bits = budget_args(budget)
    block_t = SEL.CONFIG["select_block_t"]
    common = (1, hkv, t + spare, keys.stride(0), k, chunk, n_splits, 0, 0, 0, want_fixed, budget_bits, *pos.stride())
    def fine():
        SEL._fine_kernel[(n_rows, n_splits)](pos, keys, hist1, hist2, less, cb, hint, n_splits, *common, IS_FRAC=is_frac, SHIFT=p["SHIFT"], NCB=p["NCB"], NFB=p["NFB"], NSP1=next_pow2(n_splits), BLOCK_T=block_t, HINT=True, num_warps=1, **pdl_args(q))
    def write():
        SEL._write_kernel[(n_rows, n_splits)](pos, keys, hist2, less, cb, out, hint, keys, keys, *common, *(0,) * 6, IS_FRAC=is_frac, SHIFT=p["SHIFT"], NFB=p["NFB"], NSP=next_pow2(n_splits), BLOCK_T=block_t, BLOCK_P=256, HW_POPC=True, HINT=True, KV_PF=0, KEY_PREFETCH=triton.cdiv(chunk, block_t) <= SEL.CONFIG["write_prefetch_blocks"], num_warps=1, **pdl_args(q))
    def score():
        SEL._score_kernel[(n_rows, n_splits)](qc, codes, pos, keys, hist1, hint, hist2, 1, hkv, t + spare, keys.stride(0), chunk, n_splits, 0, 0, 0, pf, *qc.stride(), *codes.stride()[:2], *pos.stride(), G=hq // hkv, NW=4, NWP=4, L=p["L"], J0=p["J0"], SHIFT=p["SHIFT"], NCB=p["NCB"], BLOCK_T=SEL.CONFIG["score_block_t"], HW_POPC=True, PREFETCH=True, HINT=True, NFB=p["NFB"], L2PF=pf > 0, L2_AHEAD=0, num_warps=4, **pdl_args(q))
    for _ in range(3): score(); fine(); write()
    idx_ref = SEL.hamming_topk(qc, codes, pos, k, budget)
    print("probe selection equals op:", torch.equal(out, idx_ref), "hint", SEL.hint_stats("cuda"))
    enc = lambda: ENC.hash_encode_step(q, kn, w, codes, pos)
    att = lambda: ATT.sparse_attention(q, kc, vc, out, scale)
    res = {"full_op_step": us(lambda: (enc(), ATT.sparse_attention(q, kc, vc, SEL.hamming_topk(qc, codes, pos, k, budget), scale))),
           "three": us(lambda: (enc(), score(), fine(), write(), att())),
           "no_fine": us(lambda: (enc(), score(), write(), att())),
           "select_three": us(lambda: (score(), fine(), write())),
           "select_no_fine": us(lambda: (score(), write())),
           "score_alone": us(score), "write_alone": us(write), "fine_alone": us(fine)}
    print(json.dumps({"b": b, "t": t, "k": k, **res}), flush=True)

if __name__ == "__main__":
    what = sys.argv[1:] or ["select", "gemm"]
    if "select" in what:
        select_probe(); select_probe(8, 131072, 24, 1/64)
    if "gemm" in what:
        gemms()
