"""Probe (GPU): a split-K Triton GEMV for the decode projections (M = batch rows <= 16) against cuBLAS.

    PYTHONPATH=. python examples/gemv_splitk_probe.py [--batches 8 4 1] [--only o qkv]

Why: the end-to-end profile of ``hatac bench generate`` at batch 8 / 32K (session 10) has cuBLAS running
``o_proj`` (M = 8, N = K = 4096, 33.5 MB of weight) at 21 us a call (1.6 TB/s), with a kernel whose
64-column tiles make 64 CTAs for 132 SMs, while the other projections stream at ~2.8 TB/s. A GEMV that
also splits K fills the GPU: each program streams a BLOCK_N x (K / SPLIT_K) tile, writes a float32
partial, and the last program of each column tile (an atomic ticket, reset by that program) sums the
partials. session 6's GEMV probe (no split-K, timed right after a dirty 256 MB L2 flush) found 3-8%.

Timing: CUDA-graph replays of [a read-only pass over a 256 MB buffer (evicts the L2 without leaving dirty
lines, as in a decode step where the kernel before the GEMM wrote little), the GEMM], minus the read alone.
"""
from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F
import triton
import triton.language as tl

from hatac.bench_kernels import _graph_bench


@triton.jit
def _gemv_splitk(x_ptr, w_ptr, y_ptr, part_ptr, cnt_ptr, M, N, K, K_SPLIT,
                 BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, SPLIT_K: tl.constexpr):
    pid_n = tl.program_id(0)
    pid_k = tl.program_id(1)
    n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    m = tl.arange(0, BLOCK_M)
    acc = tl.zeros((BLOCK_M, BLOCK_N), tl.float32)
    k_lo = pid_k * K_SPLIT
    for k0 in range(k_lo, k_lo + K_SPLIT, BLOCK_K):
        k = k0 + tl.arange(0, BLOCK_K)
        x = tl.load(x_ptr + m[:, None] * K + k[None, :], mask=(m[:, None] < M) & (k[None, :] < K), other=0.0)
        w = tl.load(w_ptr + n[:, None].to(tl.int64) * K + k[None, :], mask=(n[:, None] < N) & (k[None, :] < K), other=0.0)
        acc = tl.dot(x, tl.trans(w), acc)
    out_mask = (m[:, None] < M) & (n[None, :] < N)
    if SPLIT_K == 1:
        tl.store(y_ptr + m[:, None] * N + n[None, :], acc.to(y_ptr.dtype.element_ty), mask=out_mask)
    else:
        tl.store(part_ptr + (pid_k * BLOCK_M + m[:, None]) * N + n[None, :], acc, mask=out_mask)
        ticket = tl.atomic_add(cnt_ptr + pid_n, 1, sem="acq_rel")
        if ticket == SPLIT_K - 1:
            tot = tl.zeros((BLOCK_M, BLOCK_N), tl.float32)
            for s in range(SPLIT_K):
                tot += tl.load(part_ptr + (s * BLOCK_M + m[:, None]) * N + n[None, :], mask=out_mask, other=0.0, cache_modifier=".cg")
            tl.store(y_ptr + m[:, None] * N + n[None, :], tot.to(y_ptr.dtype.element_ty), mask=out_mask)
            tl.atomic_xchg(cnt_ptr + pid_n, 0)


def evicted_timer():
    """``time(fn)``: microseconds of ``fn`` replayed from a CUDA graph right after a read-only pass over a 256 MB
    buffer (which evicts the L2 without leaving dirty lines), minus the pass alone."""
    big = torch.ones(64 << 20, device="cuda", dtype=torch.float32)
    sink = torch.empty((), device="cuda", dtype=torch.float32)
    evict = lambda: torch.sum(big, 0, out=sink)  # noqa: E731
    base = _graph_bench(evict)
    return lambda fn: (_graph_bench(lambda: (evict(), fn())) - base) * 1e3


SHAPES = {"qkv": (6144, 4096), "o": (4096, 4096), "gate/up": (28672, 4096), "down": (4096, 14336), "lm_head": (128256, 4096)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--batches", nargs="*", type=int, default=[8, 4, 1])
    ap.add_argument("--only", nargs="*", default=list(SHAPES))
    ap.add_argument("--shipped", action="store_true", help="time hatac's hatac::linear GEMV (its CONFIG) instead of sweeping")
    args = ap.parse_args()
    print(torch.cuda.get_device_name(), "torch", torch.__version__, "triton", triton.__version__)
    dt = torch.bfloat16
    timed = evicted_timer()
    cnt = torch.zeros(1 << 16, device="cuda", dtype=torch.int32)
    if args.shipped:
        import hatac.kernels.registry  # noqa: F401
        from hatac.kernels.linear import CONFIG, linear

        print(f"hatac::linear {CONFIG}")
        print(f"{'gemm':<8} {'M':>2} {'cuBLAS us':>9} {'TB/s':>5} {'hatac us':>9} {'TB/s':>5} {'ratio':>6}")
        for name in args.only:
            n, k = SHAPES[name]
            w = torch.randn(n, k, device="cuda", dtype=dt) * 0.02
            for mm in args.batches:
                x = torch.randn(mm, k, device="cuda", dtype=dt)
                torch.testing.assert_close(linear(x, w), F.linear(x, w), rtol=2e-2, atol=2e-2)
                cub = timed(lambda: F.linear(x, w))
                own = timed(lambda: linear(x, w))
                nb = w.numel() * 2 / 1e6
                print(f"{name:<8} {mm:>2} {cub:>9.1f} {nb / cub:>5.2f} {own:>9.1f} {nb / own:>5.2f} {own / cub:>6.2f}")
            w = None  # free it before the next shape (the timing lambdas close over the name)
        return
    print(f"{'gemm':<8} {'M':>2} {'cuBLAS us':>9} {'TB/s':>5} {'triton us':>9} {'TB/s':>5} {'saved':>6}  best (BLOCK_N, SPLIT_K, BLOCK_K, stages, warps)  rel err")
    for name in args.only:
        n, k = SHAPES[name]
        w = torch.randn(n, k, device="cuda", dtype=dt) * 0.02
        nbytes = w.numel() * 2
        for mm in args.batches:
            x = torch.randn(mm, k, device="cuda", dtype=dt)
            ref = F.linear(x, w)
            cublas = timed(lambda: F.linear(x, w))
            y = torch.empty(mm, n, device="cuda", dtype=dt)
            results = []
            for bn in (32, 64, 128):
                for sk in (1, 2, 4, 8):
                    if n // bn * sk > 4096 or (k // sk) % 256:
                        continue
                    part = torch.empty(sk * 16 * n, device="cuda", dtype=torch.float32)
                    for bk in (128, 256):
                        for stages in (3, 5):
                            for warps in (4,):
                                def fn():
                                    _gemv_splitk[(triton.cdiv(n, bn), sk)](x, w, y, part, cnt, mm, n, k, k // sk, BLOCK_M=16,
                                                                          BLOCK_N=bn, BLOCK_K=bk, SPLIT_K=sk, num_warps=warps, num_stages=stages)
                                try:
                                    fn()
                                    err = ((y.float() - ref.float()).norm() / ref.float().norm()).item()
                                    t = timed(fn)
                                except Exception:  # e.g. out of shared memory for this tile
                                    continue
                                results.append((t, (bn, sk, bk, stages, warps), err))
            t, cfg, err = min(results)
            print(f"{name:<8} {mm:>2} {cublas:>9.1f} {nbytes / cublas / 1e6:>5.2f} {t:>9.1f} {nbytes / t / 1e6:>5.2f} {cublas - t:>6.1f}  {cfg}  {err:.1e}")
            for t2, cfg2, _ in sorted(results)[1:4]:
                print(f"{'':<8} {'':>2} {'':>9} {'':>5} {t2:>9.1f} {'':>5} {'':>6}  {cfg2}")
        w = None  # free it before the next shape (the timing lambdas close over the name)
        torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
