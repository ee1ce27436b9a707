"""Run one hatac decode step (encode + select + attention) of one layer a few times, for a profiler.

    ncu --clock-control none -k regex:'_score|_fine|_write|_attn|_encode' --section SpeedOfLight \
        --section WarpStateStats python examples/profile_step.py --batch 8 --context 32768 --k 512

Eager launches on random caches of the benchmark's shape (32 query / 8 KV heads, head_dim 128, r 128).
Under ncu each kernel is replayed alone, so what it reports is per kernel, not the graph-timed step.
"""

from __future__ import annotations

import argparse
import math

import sys

import torch

import hatac.kernels  # noqa: F401

ENC = sys.modules["hatac.kernels.hash_encode"]
SEL = sys.modules["hatac.kernels.hamming_topk"]
ATT = sys.modules["hatac.kernels.sparse_attention"]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--context", type=int, default=32768)
    ap.add_argument("--k", type=int, default=512)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    b, t, k, hq, hkv, d, r = args.batch, args.context, args.k, 32, 8, 128, 128
    torch.manual_seed(0)
    kc = torch.randn(b, hkv, t, d, device="cuda", dtype=torch.bfloat16)
    vc = torch.randn_like(kc)
    q = torch.randn(b, hq, 1, d, device="cuda", dtype=torch.bfloat16)
    kn = torch.randn(b, hkv, 1, d, device="cuda", dtype=torch.bfloat16)
    w = torch.randn(hkv, d, r, device="cuda")
    codes = ENC.hash_encode(kc, w)
    pos = torch.full((b, 1), t - 1, device="cuda")
    for _ in range(args.repeat):
        qc = ENC.hash_encode_step(q, kn, w, codes, pos)
        idx = SEL.hamming_topk(qc, codes, pos, k, float(k))
        ATT.sparse_attention(q, kc, vc, idx, 1 / math.sqrt(d))
    torch.cuda.synchronize()


if __name__ == "__main__":
    main()
