"""Run one hatac decode step (encode + select + attention) of one layer a few times, for a profiler.

    ncu --clock-control none -k regex:'_score|_fine|_write|_attn|_encode' --section SpeedOfLight \
        --section WarpStateStats python examples/profile_step.py --batch 8 --context 32768 --k 512

Eager launches on random caches of the benchmark's shape (32 query / 8 KV heads, head_dim 128, r 128).
Under ncu each kernel is replayed alone, so what it reports is per kernel, not the graph-timed step.
"""

from __future__ import annotations

import argparse
import math

import torch

from hatac.bench_kernels import _kernels, decode_problem


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--context", type=int, default=32768)
    ap.add_argument("--k", type=int, default=512)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    enc, sel, att = _kernels()
    q, kn, kc, vc, w, codes, pos = decode_problem(args.batch, args.context)
    for _ in range(args.repeat):
        qc = enc.hash_encode_step(q, kn, w, codes, pos)
        idx = sel.hamming_topk(qc, codes, pos, args.k, float(args.k), k_cache=kc, v_cache=vc)
        att.sparse_attention(q, kc, vc, idx, 1 / math.sqrt(q.shape[-1]))
    torch.cuda.synchronize()


if __name__ == "__main__":
    main()
