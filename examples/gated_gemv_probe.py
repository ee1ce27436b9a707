"""Probe (GPU): a gated MLP's gate/up GEMV storing SiLU(gate) * up, against the GEMV plus a separate
SiLU-and-mul kernel, over the gated kernel's tile sizes.

    PYTHONPATH=. python examples/gated_gemv_probe.py [--batches 8 4]

Why: ``hatac::linear_silu_mul`` (``kernels/linear.py``, GATED) first shipped with 16 rows of each half a
program; end to end (``hatac bench generate``, batch 8 / 32K, H100) it made both steps ~0.1 ms slower than
the unfused pair. Timing: CUDA-graph replays of [a read-only pass over 256 MB, the kernels], minus the pass.
"""
from __future__ import annotations

import argparse

import torch
import triton

import hatac.kernels.registry  # noqa: F401
from hatac import reference
from hatac.kernels.linear import _gemv_kernel, linear
from gemv_persistent_probe import _silu_mul  # examples/, on the path when run as a script
from gemv_splitk_probe import evicted_timer


def gated(x, w, y, bn, bk, stages, warps=4):
    n = w.shape[0] // 2
    _gemv_kernel[(triton.cdiv(n, bn),)](x, w, w, y, x.shape[0], n, w.shape[1], x.stride(0), w.stride(0), y.stride(0),
                                        HAS_BIAS=False, BLOCK_M=16, BLOCK_N=bn, BLOCK_K=bk, HW_DOT=True, PF_BYTES=0,
                                        GATED=True, PDL=True, launch_pdl=True, num_warps=warps, num_stages=stages)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--batches", nargs="*", type=int, default=[8, 4])
    args = ap.parse_args()
    print(torch.cuda.get_device_name(), "torch", torch.__version__, "triton", triton.__version__)
    dt = torch.bfloat16
    timed = evicted_timer()
    n, k = 28672, 4096
    w = torch.randn(n, k, device="cuda", dtype=dt) * 0.02
    for mm in args.batches:
        x = torch.randn(mm, k, device="cuda", dtype=dt)
        act = torch.empty(mm, n // 2, device="cuda", dtype=dt)
        ref = reference.linear_silu_mul(x, w)

        def unfused():
            _silu_mul[(mm,)](linear(x, w), act, n // 2, BLOCK=2048)

        t0 = timed(unfused)
        tl_only = timed(lambda: linear(x, w))
        print(f"M={mm}: GEMV + SiLU-and-mul kernel {t0:.1f} us (GEMV alone {tl_only:.1f})")
        rows = []
        for bn in (16, 32):
            for bk in (128, 256):
                for st in (3, 4, 5):
                    for warps in (4, 8):
                        try:
                            act.fill_(float("nan"))
                            gated(x, w, act, bn, bk, st, warps)
                            torch.testing.assert_close(act, ref, rtol=2e-2, atol=2e-2)
                            t = timed(lambda: gated(x, w, act, bn, bk, st, warps))
                        except Exception as e:  # out of shared memory for a tile, or wrong
                            print(f"  {bn}/{bk}/{st}/{warps}: {type(e).__name__} {str(e)[:60]}")
                            continue
                        rows.append((t, f"gated rows/half {bn} BLOCK_K {bk} stages {st} warps {warps}"))
        for t, lab in sorted(rows)[:8]:
            print(f"  {lab:<48} {t:6.1f} us  {t / t0:.2f}x of unfused")


if __name__ == "__main__":
    main()
