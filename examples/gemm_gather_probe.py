"""Two questions for the next speedups, answered on the GPU in one run (graph-timed medians, us):

1. Sibling GEMMs at decode (M = batch rows): q/k/v as three GEMMs against one on the concatenated
   weight, gate/up as two against one. Llama-3-8B shapes, and the halves a rank holds on 2 GPUs
   (``--only gemm``).
2. The sparse attention's gather: K and V rows as two 256-byte rows of separate caches (hatac's layout)
   against one 512-byte row of a cache that keeps a token's K and V side by side (``--only gather``).
3. A Triton GEMV-style kernel for a few rows (M <= 16) against cuBLAS on the decode projections
   (``--only gemv``).

    python examples/gemm_gather_probe.py            # needs a CUDA GPU
"""

from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F
import triton
import triton.language as tl

from hatac.bench_kernels import _graph_bench as graph_ms, time_gather


def gemms(batches=(1, 4, 8)) -> None:
    dt = torch.bfloat16
    shapes = {
        "qkv 8B": (4096, [4096, 1024, 1024]),
        "gate/up 8B": (4096, [14336, 14336]),
        "qkv 8B tp2": (4096, [2048, 512, 512]),
        "gate/up 8B tp2": (4096, [7168, 7168]),
    }
    print(f"{'gemm':<16} {'M':>3} {'separate us':>12} {'fused us':>9} {'saved us':>9} {'read us @3TB/s':>15}")
    for name, (k, outs) in shapes.items():
        ws = [torch.randn(n, k, device="cuda", dtype=dt) * 0.02 for n in outs]
        wf = torch.cat(ws)
        for m in batches:
            x = torch.randn(m, k, device="cuda", dtype=dt)
            sep = graph_ms(lambda: [F.linear(x, w) for w in ws])
            fused = graph_ms(lambda: F.linear(x, wf).split(outs, dim=-1))
            ref = torch.cat([F.linear(x, w) for w in ws], -1)
            err = ((ref.float() - F.linear(x, wf).float()).norm() / ref.float().norm()).item()
            assert err < 1e-2, f"{name} M={m}: fused GEMM differs (rel. error {err:.1e})"
            print(f"{name:<16} {m:>3} {sep * 1e3:>12.1f} {fused * 1e3:>9.1f} {(sep - fused) * 1e3:>9.1f} {wf.numel() * 2 / 3e12 * 1e6:>15.1f}")
        del ws, wf


def gathers(points=((8, 32768, 1024), (8, 32768, 512), (8, 131072, 2048), (1, 131072, 2048))) -> None:
    dt = torch.bfloat16
    hkv, d = 8, 128
    print(f"{'B':>2} {'T':>7} {'k':>5} {'two caches us':>14} {'TB/s':>5} {'K|V rows us':>12} {'TB/s':>5} {'ratio':>6}")
    for b, t, k in points:
        kc = torch.randn(b * hkv * t, d, device="cuda", dtype=dt)
        vc = torch.randn_like(kc)
        kv = torch.randn(b * hkv * t, 2, d, device="cuda", dtype=dt)
        gen = torch.Generator(device="cuda").manual_seed(0)
        idx = torch.rand(b * hkv, t, device="cuda", generator=gen).topk(k, dim=-1).indices.sort(-1).values
        rows = (idx + torch.arange(b * hkv, device="cuda")[:, None] * t).contiguous()
        nbytes = b * hkv * k * 2 * d * 2
        geometry = dict(programs=(512, 1024, 2048), blocks=(32, 64))
        two = time_gather(kc, vc, rows, d, d, **geometry)  # separate caches: rows of D
        pair = time_gather(kv[:, 0], kv[:, 1], rows, 2 * d, d, **geometry)  # side by side: rows of 2 D, V at D
        print(f"{b:>2} {t:>7} {k:>5} {two * 1e3:>14.1f} {nbytes / two / 1e9:>5.2f} {pair * 1e3:>12.1f} {nbytes / pair / 1e9:>5.2f} {two / pair:>6.2f}")
        del kc, vc, kv


@triton.jit
def _gemv(x_ptr, w_ptr, y_ptr, M, N, K, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    """y[M, N] = x[M, K] @ w[N, K]^T for a handful of rows: each program streams BLOCK_N rows of w."""
    pid = tl.program_id(0)
    n = pid * BLOCK_N + tl.arange(0, BLOCK_N)
    m = tl.arange(0, BLOCK_M)
    acc = tl.zeros((BLOCK_M, BLOCK_N), tl.float32)
    for k0 in range(0, K, BLOCK_K):
        k = k0 + tl.arange(0, BLOCK_K)
        x = tl.load(x_ptr + m[:, None] * K + k[None, :], mask=(m[:, None] < M) & (k[None, :] < K), other=0.0)
        w = tl.load(w_ptr + n[:, None].to(tl.int64) * K + k[None, :], mask=(n[:, None] < N) & (k[None, :] < K), other=0.0)
        acc = tl.dot(x, tl.trans(w), acc)
    tl.store(y_ptr + m[:, None] * N + n[None, :], acc.to(y_ptr.dtype.element_ty), mask=(m[:, None] < M) & (n[None, :] < N))


def gemv(shapes=(("q", 4096, 4096), ("qkv", 6144, 4096), ("o", 4096, 4096), ("gate/up", 28672, 4096), ("down", 4096, 14336),
                 ("lm_head", 128256, 4096), ("qkv tp2", 3072, 4096), ("gate/up tp2", 14336, 4096), ("down tp2", 4096, 7168)),
         batches=(1, 8)) -> None:
    dt = torch.bfloat16
    print(f"{'gemm':<12} {'M':>2} {'N':>6} {'K':>6} {'cuBLAS us':>9} {'TB/s':>5} {'triton us':>9} {'TB/s':>5} {'best config':<22} {'rel err':>8}")
    for name, n, k in shapes:
        w = torch.randn(n, k, device="cuda", dtype=dt) * 0.02
        for m in batches:
            x = torch.randn(m, k, device="cuda", dtype=dt)
            ref = F.linear(x, w)
            cublas = graph_ms(lambda: F.linear(x, w))
            y = torch.empty(m, n, device="cuda", dtype=dt)
            best, cfg = float("inf"), None
            for bn in (16, 32, 64):
                for bk in (256, 512):
                    for stages in (3, 5):
                        for warps in (4,):
                            fn = lambda: _gemv[(triton.cdiv(n, bn),)](x, w, y, m, n, k, BLOCK_M=16, BLOCK_N=bn, BLOCK_K=bk, num_warps=warps, num_stages=stages)  # noqa: E731
                            try:
                                t = graph_ms(fn)
                            except Exception:  # out of shared memory for this tile
                                continue
                            if t < best:
                                best, cfg = t, f"n{bn} k{bk} s{stages} w{warps}"
            # the best config's result
            bn, bk, stages, warps = (int(v[1:]) for v in cfg.split())
            _gemv[(triton.cdiv(n, bn),)](x, w, y, m, n, k, BLOCK_M=16, BLOCK_N=bn, BLOCK_K=bk, num_warps=warps, num_stages=stages)
            err = ((y.float() - ref.float()).norm() / ref.float().norm()).item()
            nbytes = w.numel() * 2
            print(f"{name:<12} {m:>2} {n:>6} {k:>6} {cublas * 1e3:>9.1f} {nbytes / cublas / 1e9:>5.2f} {best * 1e3:>9.1f} {nbytes / best / 1e9:>5.2f} {cfg:<22} {err:>8.1e}")
        del w


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", choices=("gemm", "gather", "gemv"), default=None)
    args = ap.parse_args()
    print(torch.cuda.get_device_name(), "torch", torch.__version__, "triton", triton.__version__)
    if args.only in (None, "gemm"):
        gemms()
    if args.only in (None, "gather"):
        gathers()
    if args.only in (None, "gemv"):
        gemv()


if __name__ == "__main__":
    main()
