"""Probe (GPU, sm_90): does prefetching a hashed layer's key codes into L2 *before its q/k/v GEMM* make the
scoring pass faster, and what does it cost the GEMMs?

    PYTHONPATH=. python examples/code_prefetch_probe.py [--shapes 8x32768 8x131072 ...]

Why it might pay: at batch 8 the q/k/v GEMM (M = 8, 50 MB of weight) runs at ~1.7 TB/s, latency-bound, so
DRAM has ~1.3 TB/s to spare for the ~30 us it runs; the scoring pass that follows reads every key code
(33.5 MB at B8/32K) and is partly DRAM-bound. A kernel that only issues Hopper bulk L2 prefetches
(``cp.async.bulk.prefetch.L2``) for the codes, launched just before the GEMM, lets the codes stream in
under the GEMM. Whether they survive the GEMM's 50 MB weight stream depends on the L2 eviction priority
(``evict_last`` policy) and on the persisting-L2 limit of the context, so each is timed.

What is timed, as CUDA-graph replays after a 256 MB L2 flush: two layers in a row of q/k/v GEMM -> hatac
decode step (encode + select + attention) -> o_proj, gate/up, down GEMMs, each layer with its own caches,
with no prefetch and with the prefetch before each q/k/v GEMM (normal or evict_last; whole rows, or the
first ``cap`` MB spread over the rows), and the q/k/v GEMM alone after the prefetch kernel.
"""
import argparse
import ctypes
import math
import sys

import torch
import triton
import triton.language as tl

import hatac.kernels.registry  # noqa: F401
from hatac import reference as ref
from hatac.bench_kernels import _graph_bench, decode_problem
from l2_prefetch_probe import bulk_prefetch  # examples/, on the path when run as a script

ENC = sys.modules["hatac.kernels.hash_encode"]
SEL = sys.modules["hatac.kernels.hamming_topk"]
ATT = sys.modules["hatac.kernels.sparse_attention"]


@triton.jit
def _pf_rows(ptr, row_bytes, pf_bytes, CHUNK: tl.constexpr, POLICY: tl.constexpr):
    row = tl.program_id(0)
    off = tl.program_id(1).to(tl.int64) * CHUNK
    if off < pf_bytes:
        n = tl.minimum(pf_bytes - off, CHUNK).to(tl.int32)
        bulk_prefetch(ptr + row.to(tl.int64) * row_bytes + off, n, POLICY)


def prefetch_codes(codes, cap_bytes=None, policy=False, chunk=1 << 15):
    rows = codes.shape[0] * codes.shape[1]
    row_bytes = codes[0, 0].numel() * 4
    pf = row_bytes if cap_bytes is None else min(row_bytes, (cap_bytes // rows) // 16 * 16)
    _pf_rows[(rows, triton.cdiv(pf, chunk))](codes, row_bytes, pf, CHUNK=chunk, POLICY=policy, num_warps=1)


def _cuda():
    lib = ctypes.CDLL("libcuda.so.1")
    dev = ctypes.c_int()
    assert lib.cuCtxGetDevice(ctypes.byref(dev)) == 0
    return lib, dev


def persisting_max() -> int:
    lib, dev = _cuda()
    v = ctypes.c_int()
    lib.cuDeviceGetAttribute(ctypes.byref(v), 108, dev)  # CU_DEVICE_ATTRIBUTE_MAX_PERSISTING_L2_CACHE_SIZE
    return v.value


def set_persisting(n: int) -> int:
    lib, _ = _cuda()
    rc = lib.cuCtxSetLimit(0x06, ctypes.c_size_t(n))  # CU_LIMIT_PERSISTING_L2_CACHE_SIZE
    got = ctypes.c_size_t()
    lib.cuCtxGetLimit(ctypes.byref(got), 0x06)
    return rc, got.value


def us(fn):
    return _graph_bench(fn) * 1e3


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--shapes", nargs="*", default=["8x32768x512", "8x131072x2048", "4x131072x2048", "1x131072x2048"])
    ap.add_argument("--caps", nargs="*", type=float, default=[0, 24, 36])
    args = ap.parse_args()
    torch.cuda.init()
    torch.empty(1, device="cuda")
    print(f"L2 {torch.cuda.get_device_properties(0).L2_cache_size >> 20} MB, max persisting {persisting_max() >> 20} MB")
    buf = torch.empty(256 << 20, dtype=torch.int8, device="cuda")
    H = 4096
    Wqkv = torch.randn(6144, H, dtype=torch.bfloat16, device="cuda") * 0.02
    Wo = torch.randn(H, H, dtype=torch.bfloat16, device="cuda") * 0.02
    Wgu = torch.randn(2 * 14336, H, dtype=torch.bfloat16, device="cuda") * 0.02
    Wd = torch.randn(H, 14336, dtype=torch.bfloat16, device="cuda") * 0.02

    def flush():
        return buf.fill_(1)

    base = us(flush)
    for spec in args.shapes:
        b, t, k = (int(v) for v in spec.split("x"))
        budget = k / t
        x = torch.randn(b, H, dtype=torch.bfloat16, device="cuda")
        layers = []
        for li in range(2):
            q, kn, kc, vc, w, codes, pos = decode_problem(b, t + 24, 32, 8, 128, 128, seed=li)
            pos -= 24
            layers.append((q, kn, kc, vc, w, codes, pos))
        kw = ref.topk_width(t, budget)
        scale = 1 / math.sqrt(128)

        def qkv():
            return x @ Wqkv.t()

        def layer(L, pf):
            q, kn, kc, vc, w, codes, pos = L
            if pf is not None:
                prefetch_codes(codes, *pf)
            qkv()
            qc = ENC.hash_encode_step(q, kn, w, codes, pos)
            idx = SEL.hamming_topk(qc, codes, pos, kw, budget, 0, 0, 0, kc, vc)
            o = ATT.sparse_attention(q, kc, vc, idx, scale)
            y = o.reshape(b, H) @ Wo.t()
            gu = y @ Wgu.t()
            return gu[:, :14336] @ Wd.t()

        def two(pf):
            flush()
            for L in layers:
                layer(L, pf)

        code_mb = layers[0][5].numel() * 4 / 2**20
        ref_t = us(lambda: two(None)) - base
        g0 = us(lambda: (flush(), qkv())) - base
        print(f"\nB{b} T{t} k{kw}: codes {code_mb:.1f} MB a layer; two layers {ref_t:.1f} us; qkv GEMM alone {g0:.1f}")
        for persist in (False, True):
            if persist:
                print("   ", set_persisting(persisting_max()))
            for cap in args.caps:
                for pol in (False, True):
                    pf = (None if cap == 0 else int(cap * 2**20), pol)
                    v = us(lambda: two(pf)) - base
                    g = us(lambda: (flush(), prefetch_codes(layers[0][5], *pf), qkv())) - base
                    print(f"   persist={persist!s:<5} cap={cap or 'all'!s:<4} MB evict_last={pol!s:<5}: two layers "
                          f"{v:.1f} us ({v - ref_t:+.1f}, {(v - ref_t) / 2:+.1f} a layer); pf+qkv {g:.1f} ({g - g0:+.1f})")
            if persist:
                print("   ", set_persisting(0))
        layers.clear()  # free this shape's caches (the lambdas above close over the name)
        torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
