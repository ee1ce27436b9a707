"""Host-side launch planning of the Hamming select (kernels/hamming_topk.py): the histogram geometry of a
group's scores, how a row's cache is cut into splits and the fine and write passes' block and warp counts.
Read from the current kernel options (:mod:`hatac.kernels.options`) at each launch."""

from __future__ import annotations

import torch
import triton

from hatac.kernels import options
from hatac.kernels._common import next_pow2

_NCB_MAX = 32  # coarse histogram bins in the scoring pass: tl.histogram costs grow with the bin count


def plan(g: int, rbits: int) -> dict:
    """Histogram geometry for scores in [0, g * rbits]: keys in [0, g * rbits + 1]."""
    max_key = g * rbits + 1
    shift = 1  # at least two fine bins
    while (max_key >> shift) + 1 > _NCB_MAX:
        shift += 1
    ncb = next_pow2((max_key >> shift) + 1)
    bits = g.bit_length()  # planes of values 0..g
    j0 = 1 if g % 2 == 0 else 0
    return dict(SHIFT=shift, NCB=ncb, NFB=1 << shift, L=bits, J0=j0,
                key_dtype=torch.int16 if max_key < 2**15 else torch.int32)


def _splits(n_rows: int, t: int, block_t: int, programs: int, max_splits: int) -> tuple[int, int]:
    """Splits of the cache per row (a few tens at most: later launches read every split's histogram) and
    their length in slots, a whole number of blocks, aiming at ``programs`` programs.

    The kernel option ``hamming_topk.split_round`` says how a split's length becomes whole blocks. "up" (the default) can give a
    third fewer, longer splits for a cache a little past a power of two (32K + 24 slots: 22 splits of 3
    blocks); "down" gives one short split more (33 of 2). Measured on H100 (docs/PERFORMANCE.md): "down"
    makes a hint miss 4 us and a hintless select 6 us cheaper at B8/32K, but a hit 1.6 us dearer, so at a
    real model's 2/3 hit rate the two are even and "up" stays."""
    want = max(1, min(max_splits, next_pow2(triton.cdiv(programs, n_rows))))
    if options.get().hamming_topk.split_round == "down":
        chunk = max(1, triton.cdiv(t, want) // block_t) * block_t
        if triton.cdiv(t, chunk) <= max_splits:
            return triton.cdiv(t, chunk), chunk
    chunk = triton.cdiv(triton.cdiv(t, want), block_t) * block_t
    return triton.cdiv(t, chunk), chunk


def select_geometry(n_rows: int, chunk: int, block_t: int) -> tuple[int, int]:
    """(slots a block, warps a program) of the fine and write passes over splits of ``chunk`` slots.

    One warp a program when there are many rows (no cross-warp barriers in the histograms and prefix sums),
    four when few rows must fill the GPU from fewer programs. A one-warp program walks its split's blocks one
    after the other, each behind a load of its keys (ncu, B8/128K: half the write pass's stalls wait on them),
    so long splits (``select_wide_blocks`` blocks or more) take blocks twice as long on two warps:
    half the chain a program, the same registers a thread."""
    o = options.get().hamming_topk
    if o.select_warps:
        return block_t, o.select_warps
    if n_rows < 32:
        return block_t, 4
    wide = o.select_wide_blocks
    if wide and chunk >= wide * block_t:
        return 2 * block_t, 2
    return block_t, 1
