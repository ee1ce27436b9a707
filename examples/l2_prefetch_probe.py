"""Probe (GPU, sm_90): does a Hopper L2 bulk prefetch of ``o_proj``'s weight, issued while a hashed layer's
attention runs, make the GEMM that follows it faster, and what does it cost the attention?

    PYTHONPATH=. python examples/l2_prefetch_probe.py

Times, as CUDA-graph replays after a 256 MB L2 flush: the M = 8 GEMM cold and with its weight already in
L2; then one layer's decode step (encode + select + attention, B8 at 32K and 128K, 1.56%) with and
without the GEMM after it, the prefetch issued before the encode, the select or the attention, with and
without an evict_last policy. docs/PERFORMANCE.md ("Session 9") has the H100 result: not kept.
"""
import math
import sys

import torch
import triton
import triton.language as tl

import hatac.kernels.registry  # noqa: F401
from hatac import reference as ref
from hatac.bench_kernels import _graph_bench, decode_problem
from hatac.kernels._common import l2_prefetch

ENC = sys.modules["hatac.kernels.hash_encode"]
SEL = sys.modules["hatac.kernels.hamming_topk"]
ATT = sys.modules["hatac.kernels.sparse_attention"]


@triton.jit
def bulk_prefetch(p, n, EVICT_LAST: tl.constexpr):
    """hatac's ``l2_prefetch`` (one bulk prefetch by the program's first thread), or with EVICT_LAST the same
    under an L2 evict_last cache policy. Shared with examples/code_prefetch_probe.py."""
    if EVICT_LAST:
        tl.inline_asm_elementwise(
            "{ .reg .pred q; .reg .u32 t; .reg .b64 pol; mov.u32 t, %tid.x; setp.eq.u32 q, t, 0; "
            "createpolicy.fractional.L2::evict_last.b64 pol, 1.0; "
            "@q cp.async.bulk.prefetch.L2.global.L2::cache_hint [$1], $2, pol; mov.u32 $0, 0; }",
            "=r,l,r", [p, n], dtype=tl.int32, is_pure=False, pack=1)
    else:
        l2_prefetch(p, n)


@triton.jit
def _pf(ptr, nbytes, CHUNK: tl.constexpr, POLICY: tl.constexpr):
    off = tl.program_id(0).to(tl.int64) * CHUNK
    bulk_prefetch(ptr + off, tl.minimum(nbytes - off, CHUNK).to(tl.int32), POLICY)


def prefetch(w, chunk=1 << 16, policy=False):
    nb = w.numel() * w.element_size()
    _pf[(triton.cdiv(nb, chunk),)](w.view(torch.int8), nb, CHUNK=chunk, POLICY=policy, num_warps=1)


def us(fn):
    return _graph_bench(fn) * 1e3


def probe_shape(b, t, budget, W, gemm, flush, base):
    k = ref.topk_width(t, budget)
    q, kn, kc, vc, w, codes, pos = decode_problem(b, t + 24, 32, 8, 128, 128)
    pos -= 24
    scale = 1 / math.sqrt(128)

    def step(pf_at=None, policy=False):
        if pf_at == "start":
            prefetch(W, policy=policy)
        qc_ = ENC.hash_encode_step(q, kn, w, codes, pos)
        if pf_at == "select":
            prefetch(W, policy=policy)
        idx = SEL.hamming_topk(qc_, codes, pos, k, budget)
        if pf_at == "attention":
            prefetch(W, policy=policy)
        return ATT.sparse_attention(q, kc, vc, idx, scale)

    st = us(lambda: (flush(), step())) - base
    sg = us(lambda: (flush(), step(), gemm())) - base
    print(f"B{b} {t}: step {st:.2f}  step+gemm {sg:.2f} (gemm in context {sg - st:.2f})")
    for at in ("start", "select", "attention"):
        for pol in (False, True):
            a = us(lambda: (flush(), step(at, pol))) - base
            c = us(lambda: (flush(), step(at, pol), gemm())) - base
            print(f"   prefetch at {at:<9} evict_last={pol!s:<5}: step {a:.2f} (+{a - st:.2f})  "
                  f"step+gemm {c:.2f} ({c - sg:+.2f})  gemm {c - a:.2f}")


def main():
    buf = torch.empty(256 << 20, dtype=torch.int8, device="cuda")
    W = torch.randn(4096, 4096, dtype=torch.bfloat16, device="cuda") * 0.02  # o_proj of Llama-3-8B
    x = torch.randn(8, 4096, dtype=torch.bfloat16, device="cuda")
    y = torch.empty(8, 4096, dtype=torch.bfloat16, device="cuda")

    def gemm():
        return torch.mm(x, W.t(), out=y)

    def flush():
        return buf.fill_(1)

    base = us(flush)
    print(f"flush {base:.2f}")
    print(f"gemm cold {us(lambda: (flush(), gemm())) - base:.2f}  "
          f"warm(after gemm) {us(lambda: (flush(), gemm(), gemm())) - us(lambda: (flush(), gemm())):.2f}")
    for b, t, budget in [(8, 32768, 1 / 64), (8, 131072, 1 / 64)]:
        probe_shape(b, t, budget, W, gemm, flush, base)
        torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
