"""Probe (GPU, sm_90): does ``hatac::linear``'s L2 prefetch of its weight, issued before it waits for the
kernel in front of it, hide ``o_proj``'s weight read behind a hashed layer's attention?

    PYTHONPATH=. python examples/linear_prefetch_probe.py

Times as CUDA-graph replays (L2 flushed by do_bench between them): one layer's decode attention followed by
``o_proj`` (M = batch, 4096 x 4096 bf16), the GEMV's ``CONFIG["l2_prefetch"]`` at 0, 0.25, 0.5 and 1 (the
fraction of each program's weight rows asked for before the wait), after hatac's step (encode + select +
attention) and after the dense decode attention, and the GEMV alone; cuBLAS in the same place for reference.
"""
import math
import sys

import torch
import torch.nn.functional as F

import hatac.kernels.registry  # noqa: F401
from hatac import reference as ref
from hatac.bench_kernels import _graph_bench, decode_problem
from hatac.kernels.cache_attention import cache_attention

ENC = sys.modules["hatac.kernels.hash_encode"]
SEL = sys.modules["hatac.kernels.hamming_topk"]
ATT = sys.modules["hatac.kernels.sparse_attention"]
LIN = sys.modules["hatac.kernels.linear"]


def main():
    print(torch.cuda.get_device_name())
    for b, t, budget in [(8, 32768, 1 / 64), (4, 131072, 1 / 64), (1, 131072, 1 / 64)]:
        q, kn, kc, vc, w, codes, pos = decode_problem(b, t + 24, 32, 8, 128, 128)
        pos -= 24
        k = ref.topk_width(t, budget)
        scale = 1 / math.sqrt(128)
        wo = torch.randn(4096, 4096, device="cuda", dtype=torch.bfloat16) * 0.02

        def hashed():
            qc = ENC.hash_encode_step(q, kn, w, codes, pos)
            idx = SEL.hamming_topk(qc, codes, pos, k, budget, 0, 0, 0, kc, vc)
            return ATT.sparse_attention(q, kc, vc, idx, scale)

        def dense():
            return cache_attention(q, kc, vc, pos, scale)

        rows = []
        for name, att in (("hatac", hashed), ("dense", dense)):
            alone = _graph_bench(att) * 1e3
            cub = _graph_bench(lambda: F.linear(att().reshape(b, 4096), wo)) * 1e3
            line = f"B{b} {t // 1024}K {name}: attention {alone:.1f} us, + cuBLAS o_proj {cub:.1f} (+{cub - alone:.1f})"
            for frac in (0.0, 0.25, 0.5, 1.0):
                LIN.CONFIG["l2_prefetch"] = frac
                tot = _graph_bench(lambda: LIN.linear(att().reshape(b, 4096), wo)) * 1e3
                line += f" | pf {frac}: {tot:.1f} (+{tot - alone:.1f})"
            rows.append(line)
        LIN.CONFIG["l2_prefetch"] = 0.0
        x = torch.randn(b, 4096, device="cuda", dtype=torch.bfloat16)
        rows.append(f"   GEMV alone {_graph_bench(lambda: LIN.linear(x, wo)) * 1e3:.1f} us, cuBLAS alone {_graph_bench(lambda: F.linear(x, wo)) * 1e3:.1f}")
        print("\n".join(rows), flush=True)
        del q, kn, kc, vc, codes
        torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
