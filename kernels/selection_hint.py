"""The Hamming select's selection hint (kernels/hamming_topk.py): per code cache and query rows, the two coarse
bins around each row's threshold at the previous decode call, so the fine pass can skip its scan; and the
hit counts a benchmark reports. Only speed depends on it."""

from __future__ import annotations

import torch

_HINTS: dict[tuple, torch.Tensor] = {}
_MAX_HINTS = 1024  # distinct code caches with a hint; later ones select without (the buffers are never freed)


def selection_hint(k_codes: torch.Tensor, n_rows: int) -> torch.Tensor | None:
    """The selection hint of the code cache ``k_codes`` for ``n_rows`` query rows: (rows, 3) int32, the lower
    of the two coarse bins around each row's threshold at the previous call (-1: none), how many calls found
    the threshold in them, and how many calls there were.

    Kept per (device, code-cache address, rows), so each layer of a static decode cache has its own and a
    CUDA graph captured with it replays against the same buffer. A buffer is never freed (a captured graph
    may hold it) and none is made during capture (None then: select without a hint). Only speed depends
    on it: a stale one, as when a new cache reuses an old address, costs the full fine pass."""
    key = (k_codes.device, k_codes.data_ptr(), n_rows)
    buf = _HINTS.get(key)
    if buf is None:
        capturing = k_codes.is_cuda and torch.cuda.is_current_stream_capturing()
        if capturing or len(_HINTS) >= _MAX_HINTS:
            return None
        buf = torch.zeros((n_rows, 3), dtype=torch.int32, device=k_codes.device)
        buf[:, 0] = -1  # no window yet
        _HINTS[key] = buf
    return buf


def hint_stats(device: torch.device | str, reset: bool = False) -> dict:
    """Hits and calls summed over every selection hint on ``device`` (what a benchmark reports as the hint's
    hit rate); ``reset`` zeroes the counts afterwards, keeping the bins."""
    hits = calls = 0
    want = torch.device(device)
    if want.type == "cuda" and want.index is None:
        want = torch.device("cuda", torch.cuda.current_device())
    for (dev, _, _), buf in _HINTS.items():
        if dev == want:
            hits += int(buf[:, 1].sum())
            calls += int(buf[:, 2].sum())
            if reset:
                buf[:, 1:] = 0
    return {"hits": hits, "calls": calls, "hit_rate": hits / calls if calls else None}
