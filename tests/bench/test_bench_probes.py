"""The read-only probe kernels of ``hatac bench kernels`` (a plain stream of the key codes, a plain gather of
the selected K and V rows) read what they are meant to: their sums match torch's on every launch geometry the
benchmark tries (interpreter without CUDA, compiled on the GPU for tests marked ``gpu``)."""

from __future__ import annotations

import pytest
import torch

from _kernel_mode import CUDA, INTERPRET  # sets the mode before any kernel is built

triton = pytest.importorskip("triton")

from hatac.bench import kernels as bk  # noqa: E402

DEVICE = "cuda" if CUDA and not INTERPRET else "cpu"


def test_stream_reads_every_word():
    """Every geometry covers every word once, the tail block included (n is no multiple of any block)."""
    words = torch.randint(-1000, 1000, (3 * 4096 + 77,), dtype=torch.int32, device=DEVICE)
    launches = bk.stream_launches(words, blocks=(1024,), iters=(1, 4))
    for launch in launches:
        launch()
        out = launch.args[1]
        assert int(out.sum()) == int(words.sum())


def test_gather_reads_the_selected_rows():
    """Rows -1 are skipped; each selected K and V row is read once whatever the split into pieces."""
    n, t, d, k = 3, 50, 16, 20
    gen = torch.Generator(device=DEVICE).manual_seed(0)
    kc = torch.randn(n * t, d, generator=gen, device=DEVICE)
    vc = torch.randn(n * t, d, generator=gen, device=DEVICE)
    rows = torch.stack([torch.randperm(t, generator=gen, device=DEVICE)[:k] + i * t for i in range(n)])
    rows[:, -3:] = -1
    sel = rows[rows >= 0]
    want = kc[sel].sum() + vc[sel].sum()
    for launch in bk.gather_launches(kc, vc, rows.contiguous(), d, d, programs=(3, 12), blocks=(4,)):
        launch()
        assert torch.allclose(launch.args[3].sum(), want, rtol=1e-4, atol=1e-3)


def test_step_reads_times_the_stream_then_the_gather(monkeypatch):
    """The plumbing of the reads columns, with each graph-timed call run once (no GPU here): the code stream is
    picked once, the gather reads the rows ``idx`` selects (row numbers offset per (batch, KV head), -1
    skipped), and ``reads_ms`` times one call that runs both."""
    ran = []

    def once(fn):
        fn()
        ran.append(fn)
        return 1.0

    monkeypatch.setattr(bk, "_graph_bench", once)
    gen = torch.Generator(device=DEVICE).manual_seed(1)
    b, hkv, t, d, k = 2, 2, 40, 16, 6
    codes = torch.randint(-100, 100, (b, hkv, t, 4), dtype=torch.int32, generator=gen, device=DEVICE)
    kc = torch.randn(b, hkv, t, d, generator=gen, device=DEVICE)
    vc = torch.randn(b, hkv, t, d, generator=gen, device=DEVICE)
    idx = torch.randint(0, t, (b, hkv, 1, k), dtype=torch.int32, generator=gen, device=DEVICE)
    idx[0, 1, 0, -2:] = -1
    ms, stream = bk.code_stream(codes)
    assert ms == 1.0 and int(stream.args[1].sum()) == int(codes.sum())
    ran.clear()
    got = bk.step_reads(stream, kc, vc, idx)
    assert got == {"gather_ms": 1.0, "reads_ms": 1.0} and len(ran) == 3  # two gather geometries, then both
    keep = idx >= 0
    want = sum(kc[bb, hh, idx[bb, hh, 0][keep[bb, hh, 0]]].sum() + vc[bb, hh, idx[bb, hh, 0][keep[bb, hh, 0]]].sum()
               for bb in range(b) for hh in range(hkv))
    for gather in ran[:2]:
        assert torch.allclose(gather.args[3].sum(), want, rtol=1e-4, atol=1e-3)
