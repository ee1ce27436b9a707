"""Probe (GPU): where the decode GEMV loses bandwidth, and whether a persistent GEMV or fusing SiLU-and-mul
into ``down_proj``'s GEMV gets it back.

    PYTHONPATH=. python examples/gemv_persistent_probe.py [--batches 8 4] [--only qkv o] [--no-sweep]

Why: session 11's shipped GEMV (``kernels/linear.py``) streams ``lm_head`` at 3.08 TB/s but the per-layer
projections at 2.2-2.8 TB/s (``examples/gemv_splitk_probe.py --shipped``); at 3.08 TB/s a Llama-3-8B layer's
four projections would take ~17 us less. Two suspects: whole programs that start and drain in waves (each
program runs one prologue and one epilogue; q/k/v has 1.45 waves of them) and the kernel boundaries of a
layer. This probe times, against cuBLAS:

1. each projection alone (a read-only pass over 256 MB evicts the L2 first, then the GEMM; minus the pass
   alone), for the shipped kernel at other tile sizes, and a persistent form: a balanced number of programs,
   each streaming one contiguous range of row tiles through one flattened, software-pipelined loop;
2. four layers' projections back to back in one CUDA graph (q/k/v, o, gate/up, SiLU-and-mul, down), as the
   decode step runs them, with ``down`` reading SiLU(gate) * up itself in the fused variant.
"""
from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F
import triton
import triton.language as tl

import hatac.kernels.registry  # noqa: F401
from hatac.kernels._common import grid_sync, l2_prefetch
from hatac.kernels.linear import _gemv_kernel, linear
from gemv_splitk_probe import evicted_timer  # examples/, on the path when run as a script

SHAPES = {"qkv": (6144, 4096), "o": (4096, 4096), "gate/up": (28672, 4096), "down": (4096, 14336), "lm_head": (128256, 4096)}


@triton.jit
def _gemv_persist(x_ptr, w_ptr, y_ptr, M, N, K, sxm, swn, sym, TILES,
                  BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
                  GATED: tl.constexpr, PDL: tl.constexpr):
    """TILES consecutive row tiles a program, (tile, k) flattened into one loop so that the loads of the next
    tile are in flight while the last block of this one is consumed. GATED: x is [M, 2K] = [gate | up] and
    the GEMV reads SiLU(gate) * up (rounded to x's dtype, as the separate kernel stores it)."""
    grid_sync(PDL)
    n_tiles = tl.cdiv(N, BLOCK_N)
    t_lo = tl.program_id(0) * TILES
    t_hi = tl.minimum(t_lo + TILES, n_tiles)
    k_tiles = tl.cdiv(K, BLOCK_K)
    m = tl.arange(0, BLOCK_M)
    acc = tl.zeros((BLOCK_M, BLOCK_N), tl.float32)
    for it in range(0, (t_hi - t_lo) * k_tiles):
        t = t_lo + it // k_tiles
        kk = it % k_tiles
        n = t * BLOCK_N + tl.arange(0, BLOCK_N)
        k = kk * BLOCK_K + tl.arange(0, BLOCK_K)
        km = k < K
        xm = (m[:, None] < M) & km[None, :]
        if GATED:
            g = tl.load(x_ptr + m[:, None] * sxm + k[None, :], mask=xm, other=0.0).to(tl.float32)
            u = tl.load(x_ptr + m[:, None] * sxm + K + k[None, :], mask=xm, other=0.0).to(tl.float32)
            g = (g / (1.0 + tl.exp(-g))).to(x_ptr.dtype.element_ty).to(tl.float32)
            x = (g * u).to(x_ptr.dtype.element_ty)
        else:
            x = tl.load(x_ptr + m[:, None] * sxm + k[None, :], mask=xm, other=0.0)
        w = tl.load(w_ptr + n[:, None].to(tl.int64) * swn + k[None, :], mask=(n[:, None] < N) & km[None, :], other=0.0)
        acc = tl.dot(x, tl.trans(w), acc)
        if kk == k_tiles - 1:
            tl.store(y_ptr + m[:, None] * sym + n[None, :], acc.to(y_ptr.dtype.element_ty), mask=(m[:, None] < M) & (n[None, :] < N))
            acc = tl.zeros((BLOCK_M, BLOCK_N), tl.float32)


@triton.jit
def _gemv_chain(x_ptr, w_ptr, y_ptr, M, N, K, sxm, swn, sym, nxt_ptr, NXT_BYTES,
                BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
                EVICT_FIRST: tl.constexpr, AT_START: tl.constexpr, PDL: tl.constexpr):
    """The shipped GEMV, and each program asks the L2 for its share of the first NXT_BYTES of the next
    projection's weight (at its end, or before its wait), so that DRAM keeps streaming across the kernel
    boundaries and the small kernels between. EVICT_FIRST: this weight's own loads leave the L2 first."""
    pid = tl.program_id(0)
    chunk = (tl.cdiv(NXT_BYTES, tl.num_programs(0)) + 15) // 16 * 16
    span = tl.minimum(chunk, NXT_BYTES - pid * chunk)
    nbase = nxt_ptr.to(tl.pointer_type(tl.int8)) + pid.to(tl.int64) * chunk
    if AT_START:
        for off in range(0, span, 65536):
            l2_prefetch(nbase + off, tl.minimum(span - off, 65536))
    grid_sync(PDL)
    n = pid * BLOCK_N + tl.arange(0, BLOCK_N)
    m = tl.arange(0, BLOCK_M)
    nm = n < N
    acc = tl.zeros((BLOCK_M, BLOCK_N), tl.float32)
    for k0 in range(0, K, BLOCK_K):
        k = k0 + tl.arange(0, BLOCK_K)
        km = k < K
        x = tl.load(x_ptr + m[:, None] * sxm + k[None, :], mask=(m[:, None] < M) & km[None, :], other=0.0)
        if EVICT_FIRST:
            w = tl.load(w_ptr + n[:, None].to(tl.int64) * swn + k[None, :], mask=nm[:, None] & km[None, :], other=0.0,
                        eviction_policy="evict_first")
        else:
            w = tl.load(w_ptr + n[:, None].to(tl.int64) * swn + k[None, :], mask=nm[:, None] & km[None, :], other=0.0)
        acc = tl.dot(x, tl.trans(w), acc)
    tl.store(y_ptr + m[:, None] * sym + n[None, :], acc.to(y_ptr.dtype.element_ty), mask=(m[:, None] < M) & nm[None, :])
    if not AT_START:
        for off in range(0, span, 65536):
            l2_prefetch(nbase + off, tl.minimum(span - off, 65536))


def chain(x, w, y, nxt, nbytes, bk=256, stages=5, evict_first=False, at_start=False):
    n, k = w.shape
    _gemv_chain[(triton.cdiv(n, 32),)](x, w, y, x.shape[0], n, k, x.stride(0), w.stride(0), y.stride(0), nxt,
                                       min(nbytes, nxt.numel() * nxt.element_size()) // 16 * 16,
                                       BLOCK_M=16, BLOCK_N=32, BLOCK_K=bk, EVICT_FIRST=evict_first,
                                       AT_START=at_start, PDL=True, launch_pdl=True, num_warps=4, num_stages=stages)


@triton.jit
def _silu_mul(x_ptr, y_ptr, K, BLOCK: tl.constexpr):
    """SiLU(gate) * up for one row of [gate | up]: the separate kernel an unfused decode step runs between
    gate/up and down (SiLU rounded to the output dtype before the product, as eager rounds it)."""
    row = tl.program_id(0)
    for k0 in range(0, K, BLOCK):
        k = k0 + tl.arange(0, BLOCK)
        g = tl.load(x_ptr + row * 2 * K + k, mask=k < K, other=0.0).to(tl.float32)
        u = tl.load(x_ptr + row * 2 * K + K + k, mask=k < K, other=0.0).to(tl.float32)
        g = (g / (1.0 + tl.exp(-g))).to(y_ptr.dtype.element_ty).to(tl.float32)
        tl.store(y_ptr + row * K + k, (g * u).to(y_ptr.dtype.element_ty), mask=k < K)


def plain(x, w, y, bn, bk, stages):
    n, k = w.shape
    _gemv_kernel[(triton.cdiv(n, bn),)](x, w, w, y, x.shape[0], n, k, x.stride(0), w.stride(0), y.stride(0),
                                        HAS_BIAS=False, BLOCK_M=16, BLOCK_N=bn, BLOCK_K=bk, HW_DOT=True, PF_BYTES=0, GATED=False,
                                        PDL=True, launch_pdl=True, num_warps=4, num_stages=stages)


def programs(n_tiles: int, slots: int) -> tuple[int, int]:
    """(programs, tiles a program): at most ``slots`` programs, every one with the same number of tiles
    but the last."""
    per = triton.cdiv(n_tiles, slots)
    return triton.cdiv(n_tiles, per), per


def persist(x, w, y, bn, bk, stages, occ, gated=False):
    n = w.shape[0]
    k = w.shape[1]
    p, per = programs(triton.cdiv(n, bn), occ * torch.cuda.get_device_properties(0).multi_processor_count)
    _gemv_persist[(p,)](x, w, y, x.shape[0], n, k, x.stride(0), w.stride(0), y.stride(0), per,
                        BLOCK_M=16, BLOCK_N=bn, BLOCK_K=bk, GATED=gated, PDL=True, launch_pdl=True,
                        num_warps=4, num_stages=stages)


def variants(sweep: bool):
    out = [("shipped 32/256/5", lambda x, w, y: plain(x, w, y, 32, 256, 5))]
    if not sweep:
        return out + [("persist 16/256/4 occ3", lambda x, w, y: persist(x, w, y, 16, 256, 4, 3))]
    for bn in (16, 32):
        for bk in (128, 256):
            for st in (3, 4, 5):
                if (bn, bk, st) != (32, 256, 5):
                    out.append((f"plain {bn}/{bk}/{st}", lambda x, w, y, a=bn, b=bk, c=st: plain(x, w, y, a, b, c)))
    for bn in (16, 32):
        for bk in (128, 256):
            for st in (3, 4):
                for occ in (1, 2, 3, 4):
                    out.append((f"persist {bn}/{bk}/{st} occ{occ}",
                                lambda x, w, y, a=bn, b=bk, c=st, o=occ: persist(x, w, y, a, b, c, o)))
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--batches", nargs="*", type=int, default=[8, 4])
    ap.add_argument("--only", nargs="*", default=list(SHAPES))
    ap.add_argument("--no-sweep", action="store_true")
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--sections", nargs="*", default=["single", "seq", "chain"])
    args = ap.parse_args()
    print(torch.cuda.get_device_name(), "torch", torch.__version__, "triton", triton.__version__)
    dt = torch.bfloat16
    timed = evicted_timer()
    best: dict[tuple[str, int], str] = {}
    print(f"{'gemm':<8} {'M':>2} {'cuBLAS':>7} {'TB/s':>5}  variant                    {'us':>6} {'TB/s':>5} {'/cuBLAS':>7}")
    for name in args.only if "single" in args.sections else []:
        n, k = SHAPES[name]
        w = torch.randn(n, k, device="cuda", dtype=dt) * 0.02
        nb = w.numel() * 2 / 1e6
        for mm in args.batches:
            x = torch.randn(mm, k, device="cuda", dtype=dt)
            ref = F.linear(x, w)
            cub = timed(lambda: F.linear(x, w))
            y = torch.empty(mm, n, device="cuda", dtype=dt)
            rows = []
            for label, fn in variants(not args.no_sweep):
                try:
                    y.fill_(float("nan"))
                    fn(x, w, y)
                    torch.testing.assert_close(y, ref, rtol=2e-2, atol=2e-2)
                    t = timed(lambda: fn(x, w, y))
                except Exception as e:  # out of shared memory for a tile, or wrong
                    print(f"  {label}: {type(e).__name__} {str(e)[:80]}")
                    continue
                rows.append((t, label))
            rows.sort()
            shipped = next(t for t, lab in rows if lab.startswith("shipped"))
            print(f"{name:<8} {mm:>2} {cub:>7.1f} {nb / cub:>5.2f}  {'shipped 32/256/5':<26} {shipped:>6.1f} {nb / shipped:>5.2f} {shipped / cub:>7.2f}")
            for t, lab in rows[:4]:
                print(f"{'':<8} {'':>2} {'':>7} {'':>5}  {lab:<26} {t:>6.1f} {nb / t:>5.2f} {t / cub:>7.2f}")
            per = [lab for _, lab in rows if lab.startswith("persist")]
            if per:
                best[(name, mm)] = per[0]
        w = None  # free it before the next shape (the timing lambdas close over the name)
        torch.cuda.empty_cache()

    # Four layers' projections back to back in one graph, each layer's own weights (no L2 reuse).
    L = args.layers
    ws = [{nm: torch.randn(*SHAPES[nm], device="cuda", dtype=dt) * 0.02 for nm in ("qkv", "o", "gate/up", "down")} for _ in range(L)]
    layer_mb = sum(w.numel() * 2 for w in ws[0].values()) / 1e6
    print(f"\n{L} layers back to back ({layer_mb:.0f} MB of weight a layer), us a layer")
    print(f"{'M':>2} {'sequence':<48} {'us/layer':>8} {'TB/s':>5}")
    for mm in args.batches:
        h = torch.randn(mm, 4096, device="cuda", dtype=dt)
        qkv = torch.empty(mm, 6144, device="cuda", dtype=dt)
        o = torch.empty(mm, 4096, device="cuda", dtype=dt)
        gu = torch.randn(mm, 28672, device="cuda", dtype=dt)
        act = torch.empty(mm, 14336, device="cuda", dtype=dt)
        d = torch.empty(mm, 4096, device="cuda", dtype=dt)

        def cfg(nm):
            lab = best.get((nm, mm), "persist 16/256/4 occ3").split()
            bn, bk, st = map(int, lab[1].split("/"))
            return bn, bk, st, int(lab[2][3:])

        print(f"{mm:>2} persistent configs: " + ", ".join(f"{nm} {cfg(nm)}" for nm in ("qkv", "o", "gate/up", "down")))

        def seq(kind):
            for lw in ws:
                if kind == "cublas":
                    torch.mm(h, lw["qkv"].t(), out=qkv); torch.mm(h, lw["o"].t(), out=o); torch.mm(h, lw["gate/up"].t(), out=gu)  # noqa: E702
                    _silu_mul[(mm,)](gu, act, 14336, BLOCK=2048)
                    torch.mm(act, lw["down"].t(), out=d)
                elif kind == "shipped":
                    torch.mm(h, lw["qkv"].t(), out=qkv); o.copy_(linear(h, lw["o"])); gu.copy_(linear(h, lw["gate/up"]))  # noqa: E702
                    _silu_mul[(mm,)](gu, act, 14336, BLOCK=2048)
                    d.copy_(linear(act, lw["down"]))
                else:  # persistent everywhere (each shape's best); "fused": down reads SiLU(gate) * up itself
                    persist(h, lw["qkv"], qkv, *cfg("qkv"))
                    persist(h, lw["o"], o, *cfg("o"))
                    persist(h, lw["gate/up"], gu, *cfg("gate/up"))
                    if kind == "fused":
                        persist(gu, lw["down"], d, *cfg("down"), gated=True)
                    else:
                        _silu_mul[(mm,)](gu, act, 14336, BLOCK=2048)
                        persist(act, lw["down"], d, *cfg("down"))

        if "chain" in args.sections:
            def chained(mb, evict_first, at_start, gu_cfg=(256, 5)):
                """q/k/v on cuBLAS; o, gate/up and down each prefetch the head of the next weight
                (down: the next layer's q/k/v)."""
                nb = int(mb * 1e6)
                for i, lw in enumerate(ws):
                    nxt_qkv = ws[(i + 1) % L]["qkv"]
                    torch.mm(h, lw["qkv"].t(), out=qkv)
                    chain(h, lw["o"], o, lw["gate/up"], nb, evict_first=evict_first, at_start=at_start)
                    chain(h, lw["gate/up"], gu, lw["down"], nb, *gu_cfg, evict_first=evict_first, at_start=at_start)
                    _silu_mul[(mm,)](gu, act, 14336, BLOCK=2048)
                    chain(act, lw["down"], d, nxt_qkv, nb, evict_first=evict_first, at_start=at_start)

            ref = F.linear(h, ws[0]["gate/up"])
            chain(h, ws[0]["gate/up"], gu, ws[0]["down"], 1 << 20)
            torch.testing.assert_close(gu, ref, rtol=2e-2, atol=2e-2)
            for mb in (0, 4, 8, 16, 24, 32):
                for ef in (False, True):
                    for at_start in (False, True):
                        if mb == 0 and at_start:
                            continue
                        t = timed(lambda: chained(mb, ef, at_start)) / L
                        print(f"{mm:>2} {f'chain {mb} MB, evict_first {ef}, at start {at_start}':<48} {t:>8.1f} {layer_mb / t:>5.2f}")
            for mb in (0, 8, 16):
                t = timed(lambda: chained(mb, True, False, (128, 3))) / L
                print(f"{mm:>2} {f'chain {mb} MB, evict_first, gate/up 128/3':<48} {t:>8.1f} {layer_mb / t:>5.2f}")
        if "seq" not in args.sections:
            continue
        # the fused down against the separate kernel, once
        _silu_mul[(mm,)](gu, act, 14336, BLOCK=2048)
        ref = F.linear(act, ws[0]["down"])
        persist(gu, ws[0]["down"], d, *cfg("down"), gated=True)
        torch.testing.assert_close(d, ref, rtol=2e-2, atol=2e-2)
        for kind in ("cublas", "shipped", "persist", "fused"):
            t = timed(lambda: seq(kind)) / L
            print(f"{mm:>2} {kind:<48} {t:>8.1f} {layer_mb / t:>5.2f}")


if __name__ == "__main__":
    main()
