"""Helpers shared by hatac's Triton kernels: interpreter detection, popcount, keep counts.

Two interpreter traps decide the constexpr flags passed to every kernel: under ``TRITON_INTERPRET=1``
``libdevice.popc`` does not run (so a SWAR popcount is used there) and a bf16 ``tl.dot`` returns garbage
(so operands are cast to float32 there).
"""

from __future__ import annotations

import os
import struct

import torch
import triton
import triton.language as tl
from triton.language.extra import libdevice

from hatac.kernels import options

try:  # grid dependency control (programmatic dependent launch), Hopper and later
    from triton.backends.nvidia.compiler import CUDAOptions
    from triton.language.extra.cuda import gdc_launch_dependents, gdc_wait

    _HAVE_PDL = "launch_pdl" in CUDAOptions.__dataclass_fields__
except ImportError:  # an older Triton: every launch is an ordinary one
    _HAVE_PDL = False


def interpreting() -> bool:
    """True when Triton runs kernels in its CPU interpreter."""
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def hw_flag(t: torch.Tensor) -> bool:
    """Whether compiled-GPU code paths (hardware popcount, 16-bit dots) may be used for this tensor."""
    return t.is_cuda and not interpreting()


def pdl_flag(t: torch.Tensor) -> bool:
    """Whether kernels on ``t``'s device launch with programmatic dependent launch (``launch_pdl``).

    A kernel so launched may be scheduled while the previous kernel in the stream is still finishing; it
    calls :func:`grid_sync` before touching memory, which waits for that kernel to complete. That hides the
    launch gap between two kernels of a decode step (CUDA graphs keep the dependency as a programmatic
    edge). Off in the interpreter, on GPUs before Hopper, with a Triton that lacks it and with the kernel
    option ``pdl`` False (:mod:`hatac.kernels.options`)."""
    return (
        _HAVE_PDL and options.get().pdl and hw_flag(t) and torch.cuda.get_device_capability(t.device)[0] >= 9
    )


def pdl_args(t: torch.Tensor) -> dict:
    """Launch arguments for a hatac kernel on ``t``'s device: its ``PDL`` constexpr and ``launch_pdl``."""
    flag = pdl_flag(t)
    return {"PDL": flag, "launch_pdl": flag}


@triton.jit
def grid_sync(PDL: tl.constexpr):
    """Called by every hatac kernel before it reads or writes memory (only :func:`l2_prefetch` hints may come
    before it): with PDL, wait until the previous kernel in the stream has finished and its writes are
    visible (the only safe point to read or overwrite what it touched), then let the next kernel begin
    launching. Waiting first keeps at most one kernel queued behind a running one."""
    if PDL:
        gdc_wait()
        gdc_launch_dependents()


@triton.jit
def l2_prefetch(ptr, nbytes):
    """Ask the L2 to fetch ``nbytes`` (a multiple of 16, > 0) from ``ptr`` (16-byte aligned): one Hopper bulk
    prefetch (``cp.async.bulk.prefetch.L2``) issued by the program's first thread; nothing waits for it.

    A kernel may issue it before :func:`grid_sync` even for memory the previous kernel is still writing:
    a prefetch only warms the L2, the point of coherence, and the loads after the wait read what is there
    then. sm_90 and later (kernels call it only with PDL on, which implies that)."""
    tl.inline_asm_elementwise(
        "{ .reg .pred p; .reg .u32 t; mov.u32 t, %tid.x; setp.eq.u32 p, t, 0; "
        "@p cp.async.bulk.prefetch.L2.global [$1], $2; mov.u32 $0, 0; }",
        "=r,l,r", [ptr, nbytes], dtype=tl.int32, is_pure=False, pack=1,
    )


def _prefetch_lines_asm(lines: int) -> tl.constexpr:
    """PTX: where operand $2 is non-zero, ``prefetch.global.L2`` the ``lines`` 128-byte lines from $1."""
    body = "".join(f"@p prefetch.global.L2 [$1+{128 * i}]; " for i in range(lines))
    return tl.constexpr("{ .reg .pred p; setp.ne.s32 p, $2, 0; " + body + "mov.u32 $0, 0; }")


_PREFETCH_1, _PREFETCH_2, _PREFETCH_4 = (_prefetch_lines_asm(n) for n in (1, 2, 4))


@triton.jit
def _prefetch_lines(ptrs, mask, ASM: tl.constexpr):
    tl.inline_asm_elementwise(ASM, "=r,l,r", [ptrs, mask.to(tl.int32)], dtype=tl.int32, is_pure=False, pack=1)


@triton.jit
def l2_prefetch_lines(ptrs, mask, LINES: tl.constexpr):
    """Per element: ``prefetch.global.L2`` of the LINES (1, 2 or 4) 128-byte lines from each pointer where
    ``mask`` is set (load/store unit prefetches, no TMA; nothing waits for them)."""
    if LINES == 1:
        _prefetch_lines(ptrs, mask, _PREFETCH_1)
    elif LINES == 2:
        _prefetch_lines(ptrs, mask, _PREFETCH_2)
    else:
        _prefetch_lines(ptrs, mask, _PREFETCH_4)


_PROPS: dict[torch.device, object] = {}


def device_properties(device: torch.device):
    """``torch.cuda.get_device_properties(device)``, asked once a device (launch wrappers read it per call)."""
    if device not in _PROPS:
        _PROPS[device] = torch.cuda.get_device_properties(device)
    return _PROPS[device]


def reg_cap(maxnreg: int | None) -> dict:
    """Launch arguments capping a kernel's registers a thread (ptxas ``maxrregcount``): fewer registers, more
    programs resident on an SM. Empty (the compiler's choice) for None or where the interpreter runs."""
    return {} if maxnreg is None or interpreting() else {"maxnreg": int(maxnreg)}


def next_pow2(n: int) -> int:
    return 1 << max(0, int(n) - 1).bit_length()


def budget_args(budget: float) -> tuple[bool, int, int]:
    """(is_fraction, fixed_want, float64 bits of the fraction) for the in-kernel keep count.

    The fraction travels as its float64 bit pattern (an int64 argument) so that the kernel's
    ceil(length * budget) is rounded exactly like the float64 reference, with no device tensor to build.
    """
    if budget >= 1:
        return False, int(budget), 0
    if budget <= 0:  # the reference clamps ceil(length * budget) to at least one token
        return False, 1, 0
    bits = struct.unpack("<q", struct.pack("<d", float(budget)))[0]
    return True, 0, bits


@triton.jit
def popcount(x, HW_POPC: tl.constexpr):
    """Population count of int32 words: the hardware instruction on GPU, SWAR bit-twiddling otherwise."""
    if HW_POPC:
        return libdevice.popc(x)
    else:
        v = x.to(tl.uint32, bitcast=True)
        v = v - ((v >> 1) & 0x55555555)
        v = (v & 0x33333333) + ((v >> 2) & 0x33333333)
        v = (v + (v >> 4)) & 0x0F0F0F0F
        v = (v * 0x01010101) >> 24
        return v.to(tl.int32)


@triton.jit
def select_count(pos, T, K, window, sink, recent, want_fixed, budget_bits, IS_FRAC: tl.constexpr):
    """Valid range and number of tokens to select for a query at position ``pos``.

    Mirrors reference.valid_range / keep_counts, then caps by the slots that exist (< T) and the output
    width K. Returns (lo, hi_clamped, length, n_sel).
    """
    hi = pos + 1
    lo = tl.where(window > 0, tl.maximum(hi - window, 0), 0)
    length = hi - lo
    if IS_FRAC:
        frac = budget_bits.to(tl.float64, bitcast=True)
        want = tl.maximum(tl.ceil(length.to(tl.float64) * frac).to(tl.int32), 1)
    else:
        want = want_fixed + length * 0
    want = tl.maximum(want, sink + recent)
    n_keep = tl.minimum(want, length)
    hi_c = tl.minimum(hi, T)
    n_valid = tl.maximum(hi_c - lo, 0)
    n_sel = tl.maximum(tl.minimum(tl.minimum(n_keep, n_valid), K), 0)
    return lo, hi_c, length, n_sel


_COUNTERS: dict[tuple[str, torch.device], torch.Tensor] = {}
_RETIRED: list[torch.Tensor] = []  # outgrown buffers, never freed


def self_reset_counters(owner: str, device: torch.device, n: int) -> torch.Tensor | None:
    """``n`` int32 counters that are zero at every launch because the kernel using them leaves them at zero
    (its last program resets what it counted), so a decode step needs no memset node. One buffer per
    (kernel, device), grown only outside CUDA-graph capture (a buffer made during capture would live in the
    graph's private pool): None then, and the caller zero-fills its own. Launches of one kernel on one
    device must not overlap (one stream), as in a decode step."""
    key = (owner, torch.device(device))
    buf = _COUNTERS.get(key)
    if buf is None or buf.numel() < n:
        if torch.cuda.is_available() and torch.cuda.is_current_stream_capturing():
            return None
        if buf is not None:  # a captured CUDA graph may still point at it: keep it alive
            _RETIRED.append(buf)
        buf = torch.zeros(max(4096, 2 * n), dtype=torch.int32, device=device)
        _COUNTERS[key] = buf
    return buf
