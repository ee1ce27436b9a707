"""Whole decode step (encode + select + attention, graph-timed, H100) over the select's fine/write block size
and warp count, with the selection hint hitting, missing and off: what docs/PERFORMANCE.md's session 7
block-size check reports.

    python -m pip install --no-deps --no-build-isolation -e . && cd /tmp && python <repo>/examples/select_block_probe.py
"""

from __future__ import annotations

import itertools
import json
import math
import sys
from unittest import mock

import torch

import hatac.kernels  # noqa: F401  (registers the CUDA bodies)
from hatac import reference as ref
from hatac.bench_kernels import _graph_bench, decode_problem

ENC = sys.modules["hatac.kernels.hash_encode"]
SEL = sys.modules["hatac.kernels.hamming_topk"]
ATT = sys.modules["hatac.kernels.sparse_attention"]

for b, t, budget in [(8, 32768, 1/64), (8, 32768, 1/32), (8, 131072, 1/64), (1, 131072, 1/64)]:
    k = ref.topk_width(t, budget)
    q, kn, kc, vc, w, codes, pos = decode_problem(b, t, 32, 8, 128, 128)
    scale = 1 / math.sqrt(128)
    def step():
        qc_ = ENC.hash_encode_step(q, kn, w, codes, pos)
        return ATT.sparse_attention(q, kc, vc, SEL.hamming_topk(qc_, codes, pos, k, budget), scale)
    hint = SEL.selection_hint(codes, b * 8)
    for bt, warps in itertools.product([1024, 512, 256], [None, 2]):
        with mock.patch.dict(SEL.CONFIG, {"select_block_t": bt, "select_warps": warps}):
            r = {"hit": _graph_bench(step) * 1e3, "miss": _graph_bench(lambda: (hint[:, 0].fill_(-1), step())) * 1e3}
            with mock.patch.dict(SEL.CONFIG, {"hint": False}):
                r["off"] = _graph_bench(step) * 1e3
        print(json.dumps({"b": b, "t": t, "k": k, "select_block_t": bt, "warps": warps, **{x: round(y, 2) for x, y in r.items()}}), flush=True)
    del kc, vc, codes
    torch.cuda.empty_cache()
