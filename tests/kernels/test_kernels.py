"""Triton kernels against the PyTorch references (hatac.reference), on fresh random inputs.

Without CUDA the kernels run in Triton's CPU interpreter (TRITON_INTERPRET=1, set here before the kernel
modules are imported) on tiny shapes. The same checks marked ``gpu`` run compiled on CUDA tensors with
larger shapes, plus dispatch through ``torch.ops.hatac``, torch.compile(fullgraph=True) and CUDA-graph
capture. Outputs are poisoned before every kernel call, so an unwritten element fails the check.
"""

from __future__ import annotations

import importlib
import math
import sys
import types

import pytest
import torch

from _kernel_mode import INTERPRET, interp  # sets the mode before any kernel module is imported

triton = pytest.importorskip("triton")

from hatac import reference as ref  # noqa: E402
from hatac.kernels import options  # noqa: E402

_MODULES = ["_common", "hash_encode", "hamming_topk", "sparse_attention"]


def _kernel_modules():
    """The kernel modules, re-imported in interpreter mode if something imported them compiled first."""
    import hatac.kernels.registry  # noqa: F401

    mods = {m: sys.modules[f"hatac.kernels.{m}"] for m in _MODULES}
    if INTERPRET:
        from triton.runtime.interpreter import InterpretedFunction

        if not isinstance(mods["hash_encode"]._encode_kernel, InterpretedFunction):
            mods = {m: importlib.reload(mods[m]) for m in _MODULES}
    return mods


K = _kernel_modules()
POISON = -123456789



def _codes(shape, device, gen, distinct=None):
    if distinct is None:
        return torch.randint(-(2**31), 2**31 - 1, shape, dtype=torch.int32, generator=gen).to(device)
    pool = torch.randint(-(2**31), 2**31 - 1, (distinct, shape[-1]), dtype=torch.int32, generator=gen)
    pick = torch.randint(0, distinct, shape[:-1], generator=gen)
    return pool[pick].to(device)


# ---------------------------------------------------------------------------------------------- encode


def _assert_codes(got: torch.Tensor, x: torch.Tensor, w: torch.Tensor) -> None:
    """Bits equal the reference's except where the projection is within float32 rounding of zero."""
    want = ref.hash_encode(x.cpu(), w.cpu())
    got = got.cpu()
    assert got.shape == want.shape
    diff = ref.unpack_bits(got ^ want)
    if diff.any():
        b, h, s, d = x.shape
        hkv = w.shape[0]
        xd = x.cpu().double().reshape(b, hkv, (h // hkv) * s, d)
        proj = torch.matmul(xd, w.cpu().double().unsqueeze(0)).reshape(b, h, s, -1)
        tol = 1e-5 * torch.matmul(xd.abs(), w.cpu().double().abs().unsqueeze(0)).reshape(b, h, s, -1)
        bad = diff & (proj.abs() > tol)
        assert not bad.any(), f"{int(bad.sum())} code bits differ away from zero projections"


def _check_encode(device, b, h, hkv, s, d, r, dtype, w_dtype, seed):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(b, h, s, d, generator=gen).to(device, dtype)
    w = torch.randn(hkv, d, r, generator=gen).to(device, w_dtype)
    out = torch.full((b, h, s, r // 32), POISON, dtype=torch.int32, device=device)
    K["hash_encode"].hash_encode(x, w, out=out)
    _assert_codes(out, x, w)


def _check_encode_step(device, b, hkv, g, s, d, r, t, dtype, seed, dv=None):
    """With ``dv``, the _kv form: the launch also writes the new key and value rows (values of width dv)
    into poisoned K and V caches, which must equal the reference's two cache writes everywhere."""
    gen = torch.Generator().manual_seed(seed)
    q = torch.randn(b, hkv * g, s, d, generator=gen).to(device, dtype)
    k = torch.randn(b, hkv, s, d, generator=gen).to(device, dtype)
    w = torch.randn(hkv, d, r, generator=gen).to(device)
    codes = torch.full((b, hkv, t, r // 32), POISON, dtype=torch.int32, device=device)
    want_codes = codes.clone()
    write_pos = torch.stack([torch.randperm(t, generator=gen)[:s] for _ in range(b)]).to(device)
    out = torch.full((b, hkv * g, s, r // 32), POISON, dtype=torch.int32, device=device)
    if dv is None:
        K["hash_encode"].hash_encode_step(q, k, w, codes, write_pos, out=out)
        ref.hash_encode_step(q, k, w, want_codes, write_pos)
    else:
        v = torch.randn(b, hkv, dv, s, generator=gen).to(device, dtype).transpose(2, 3)  # a strided view, as in graphs
        kc = torch.randn(b, hkv, t, d, generator=gen).to(device, dtype)
        vc = torch.randn(b, hkv, t, dv, generator=gen).to(device, dtype)
        want_kc, want_vc = kc.clone(), vc.clone()
        K["hash_encode"].hash_encode_step(q, k, w, codes, write_pos, out=out, v=v, k_cache=kc, v_cache=vc)
        ref.hash_encode_step_kv(q, k, v, w, want_kc, want_vc, want_codes, write_pos)
        assert torch.equal(kc.cpu(), want_kc.cpu()) and torch.equal(vc.cpu(), want_vc.cpu())
    _assert_codes(out, q, w)
    written = torch.zeros(b, t, dtype=torch.bool)
    written.scatter_(1, write_pos.cpu(), True)
    assert torch.equal(codes.cpu()[~written.unsqueeze(1).expand(b, hkv, t)], want_codes.cpu()[~written.unsqueeze(1).expand(b, hkv, t)])
    got_k = codes.cpu()[torch.arange(b)[:, None], :, write_pos.cpu()]  # (B, S, Hkv, NW)
    _assert_codes(got_k.permute(0, 2, 1, 3).contiguous(), k, w)


ENCODE_SMALL = [
    # b, h, hkv, s, d, r, dtype, w dtype
    (1, 2, 1, 3, 32, 32, torch.float32, torch.float32),
    (2, 4, 2, 17, 64, 64, torch.bfloat16, torch.float32),
    (1, 3, 3, 5, 48, 96, torch.float16, torch.float32),
]
ENCODE_GPU = [
    (2, 32, 8, 1, 128, 128, torch.bfloat16, torch.float32),
    (1, 8, 8, 300, 128, 128, torch.bfloat16, torch.float32),
    (2, 16, 4, 70, 64, 256, torch.float16, torch.float16),
    (1, 4, 2, 33, 256, 64, torch.bfloat16, torch.bfloat16),
    (1, 6, 2, 9, 96, 96, torch.float32, torch.float32),
]


@interp
@pytest.mark.parametrize("case", ENCODE_SMALL)
def test_hash_encode_interp(case):
    _check_encode("cpu", *case, seed=hash(case) % 1000)


@interp
@pytest.mark.parametrize("case", [(2, 2, 2, 1, 64, 64, 9, torch.bfloat16), (1, 1, 3, 2, 32, 96, 5, torch.float32)])
def test_hash_encode_step_interp(case):
    _check_encode_step("cpu", *case, seed=1)


@interp
@pytest.mark.parametrize("case,dv", [((2, 2, 2, 1, 64, 64, 9, torch.bfloat16), 64), ((1, 1, 3, 2, 32, 96, 5, torch.float32), 48)])
def test_hash_encode_step_kv_interp(case, dv):
    _check_encode_step("cpu", *case, seed=2, dv=dv)


@pytest.mark.parametrize("case", ENCODE_GPU)
@pytest.mark.gpu
def test_hash_encode_gpu(case):
    for seed in range(2):
        _check_encode("cuda", *case, seed=seed)


@pytest.mark.parametrize(
    "case", [(8, 8, 4, 1, 128, 128, 4096, torch.bfloat16), (2, 2, 16, 3, 64, 256, 100, torch.float16), (1, 4, 1, 1, 256, 32, 10, torch.float32)]
)
@pytest.mark.gpu
def test_hash_encode_step_gpu(case):
    _check_encode_step("cuda", *case, seed=3)
    _check_encode_step("cuda", *case, seed=4, dv=case[4])


def _check_rope_encode_step(device, b, hkv, g, s, d, r, t, dtype, seed, rot=None):
    """``rope_hash_encode_step_kv``: the rotated q it returns and the rotated key it writes are the reference's
    rotary embedding (to a unit in the last place: the interpreter rounds toward zero, and contraction into
    fused multiply-adds may differ), and the codes are exactly those of what it rotated. ``rot``: a partial
    rotary embedding of that many dims (the rest pass through)."""
    rot = d if rot is None else rot
    gen = torch.Generator().manual_seed(seed)
    q = torch.randn(b, s, hkv * g, d, generator=gen).to(device, dtype).transpose(1, 2)  # strided, as in graphs
    k = torch.randn(b, s, hkv, d, generator=gen).to(device, dtype).transpose(1, 2)
    v = torch.randn(b, hkv, s, d, generator=gen).to(device, dtype)
    angle = torch.rand(b, s, rot // 2, generator=gen) * 100
    cos = torch.cat([angle.cos()] * 2, -1).to(device, dtype)
    sin = torch.cat([angle.sin()] * 2, -1).to(device, dtype)
    w = torch.randn(hkv, d, r, generator=gen).to(device)
    codes = torch.full((b, hkv, t, r // 32), POISON, dtype=torch.int32, device=device)
    kc = torch.randn(b, hkv, t, d, generator=gen).to(device, dtype)
    vc = torch.randn(b, hkv, t, d, generator=gen).to(device, dtype)
    write_pos = torch.stack([torch.randperm(t, generator=gen)[:s] for _ in range(b)]).to(device)
    want_codes, want_kc, want_vc = codes.clone(), kc.clone(), vc.clone()
    got, q_rot = K["hash_encode"].rope_hash_encode_step_kv(q, k, v, cos, sin, w, kc, vc, codes, write_pos)
    _, want_q = ref.rope_hash_encode_step_kv(q, k, v, cos, sin, w, want_kc, want_vc, want_codes, write_pos)
    ulp = {torch.float32: 1e-6, torch.float16: 2**-10, torch.bfloat16: 2**-7}[dtype]
    assert q_rot.shape == q.shape and q_rot.dtype == dtype and q_rot.is_contiguous()
    torch.testing.assert_close(q_rot.cpu().float(), want_q.cpu().float(), rtol=ulp, atol=ulp)
    torch.testing.assert_close(kc.cpu().float(), want_kc.cpu().float(), rtol=ulp, atol=ulp)
    assert torch.equal(vc.cpu(), want_vc.cpu())
    _assert_codes(got, q_rot, w)
    rows = torch.arange(b)[:, None]
    k_rot = kc.cpu()[rows, :, write_pos.cpu()].permute(0, 2, 1, 3).contiguous()  # what it wrote: (B, Hkv, S, D)
    _assert_codes(codes.cpu()[rows, :, write_pos.cpu()].permute(0, 2, 1, 3).contiguous(), k_rot, w)
    written = torch.zeros(b, t, dtype=torch.bool)
    written.scatter_(1, write_pos.cpu(), True)
    keep = ~written.unsqueeze(1).expand(b, hkv, t)
    assert torch.equal(codes.cpu()[keep], want_codes.cpu()[keep]) and torch.equal(kc.cpu()[keep], want_kc.cpu()[keep])


@interp
@pytest.mark.parametrize("case,rot", [((2, 2, 2, 1, 64, 64, 9, torch.bfloat16), None), ((1, 1, 3, 2, 32, 96, 5, torch.float32), None),
                                      ((2, 1, 2, 1, 48, 32, 6, torch.bfloat16), 16)])
def test_rope_hash_encode_step_kv_interp(case, rot):
    _check_rope_encode_step("cpu", *case, seed=5, rot=rot)


@pytest.mark.parametrize(
    "case", [(8, 8, 4, 1, 128, 128, 4096, torch.bfloat16), (2, 2, 16, 3, 64, 256, 100, torch.float16),
             (1, 4, 1, 1, 256, 32, 10, torch.float32), (3, 2, 7, 1, 96, 64, 50, torch.bfloat16)]
)
@pytest.mark.gpu
def test_rope_hash_encode_step_kv_gpu(case):
    for seed in range(2):
        _check_rope_encode_step("cuda", *case, seed=seed)
    _check_rope_encode_step("cuda", *case, seed=2, rot=case[4] // 2)  # partial: the first half of the head


# ---------------------------------------------------------------------------------------------- select


def _check_topk(device, b, hkv, g, s, t, nw, k, budget, sink, recent, window, seed, distinct=None, pos=None, caches=None):
    gen = torch.Generator().manual_seed(seed)
    qc = _codes((b, hkv * g, s, nw), device, gen, distinct)
    kc = _codes((b, hkv, t, nw), device, gen, distinct)
    if pos is None:  # rows of different lengths, query rows in order within a batch row
        last = torch.randint(0, t, (b, 1), generator=gen)
        pos = (last - torch.arange(s).flip(0)).clamp_min(0)
    pos = pos.to(device)
    out = torch.full((b, hkv, s, k), POISON, dtype=torch.int32, device=device)
    K["hamming_topk"].hamming_topk(qc, kc, pos, k, budget, sink, recent, window, *(caches or ()), out=out)
    want = ref.hamming_topk(qc.cpu(), kc.cpu(), pos.cpu(), k, budget, sink, recent, window)
    assert torch.equal(out.cpu(), want), f"selection differs in {int((out.cpu() != want).sum())} places"


TOPK_SMALL = [
    # b, hkv, g, s, t, nw, k, budget, sink, recent, window
    (2, 2, 2, 1, 100, 2, 16, 16.0, 0, 0, 0),
    (2, 1, 4, 1, 90, 4, 5, 0.05, 0, 0, 0),
    (1, 2, 3, 2, 77, 1, 12, 0.1, 2, 3, 0),
    (2, 2, 1, 1, 64, 3, 10, 8.0, 1, 1, 20),
    (1, 1, 8, 1, 50, 8, 20, 20.0, 4, 4, 0),  # G * R = 2048: a wide fine histogram
    (1, 2, 2, 1, 40, 2, 64, 64.0, 0, 0, 0),  # budget above every length: everything kept, padded
    (1, 1, 2, 1, 30, 2, 4, 0.5, 0, 0, 0),  # width below the keep count
    (1, 1, 13, 1, 45, 2, 7, 0.15, 1, 0, 0),  # G = 13: four bit planes, the carry reaching the top one
]


@interp
@pytest.mark.parametrize("case", TOPK_SMALL)
def test_hamming_topk_interp(case):
    _check_topk("cpu", *case, seed=sum(map(hash, case)) % 1000)


@interp
def test_hamming_topk_ties_interp():
    _check_topk("cpu", 1, 2, 2, 1, 120, 1, 16, 16.0, 1, 2, 0, seed=5, distinct=3)


@interp
@pytest.mark.parametrize("distinct", [None, 3])
def test_hamming_topk_many_splits_interp(kernel_options, distinct):
    """Short blocks, so every pass runs over many splits a row (the fine and write passes sum every split's
    histograms, and each split's winners start after the earlier splits')."""
    kernel_options(hamming_topk={"interp_score_block_t": 32, "interp_select_block_t": 32})
    _check_topk("cpu", 2, 2, 4, 1, 330, 4, 24, 0.06, 1, 3, 0, seed=11, distinct=distinct)
    _check_topk("cpu", 1, 2, 2, 2, 300, 2, 40, 40.0, 0, 0, 100, seed=12, distinct=distinct)


@interp
def test_hamming_topk_long_splits_interp(kernel_options):
    """Few programs a row, so each scoring, fine and write program loops over many blocks, over a key
    buffer whose rows are padded past the cache length."""
    kernel_options(hamming_topk={"interp_score_block_t": 32, "interp_select_block_t": 32, "programs": 4, "select_programs": 4})
    _check_topk("cpu", 2, 2, 4, 1, 330, 4, 24, 0.06, 1, 3, 0, seed=13)
    _check_topk("cpu", 1, 2, 2, 1, 300, 2, 40, 40.0, 0, 0, 100, seed=14, distinct=3)
    kernel_options(hamming_topk={"hint": False})  # the fine pass's own geometry
    _check_topk("cpu", 2, 2, 4, 1, 330, 4, 24, 0.06, 1, 3, 0, seed=15)


def test_select_geometry_rule(kernel_options):
    """The fine and write passes: one warp a program for many rows, four for few; one-warp programs over
    splits of at least ``select_wide_blocks`` blocks take blocks twice as long on two warps."""
    mod = K["hamming_topk"]
    assert mod.select_geometry(64, 4608, 1024) == (2048, 2)  # B8/128K + spare: 4.5 blocks a split
    assert mod.select_geometry(64, 4096, 1024) == (2048, 2)
    assert mod.select_geometry(64, 3072, 1024) == (1024, 1)
    assert mod.select_geometry(64, 1536, 1024) == (1024, 1)  # B8/32K + spare
    assert mod.select_geometry(8, 16384, 1024) == (1024, 4)  # few rows
    kernel_options(hamming_topk={"select_wide_blocks": 0})
    assert mod.select_geometry(64, 4608, 1024) == (1024, 1)
    kernel_options(hamming_topk={"select_wide_blocks": 4, "select_warps": 2})
    assert mod.select_geometry(64, 4608, 1024) == (1024, 2)  # a fixed warp count keeps the block too


@interp
def test_hamming_topk_wide_blocks_interp(kernel_options):
    """Many rows over long splits: the fine and write passes run the doubled blocks (hint on and off)."""
    mod = K["hamming_topk"]
    kernel_options(hamming_topk={"programs": 64, "select_programs": 64})
    n_rows, t = 2 * 16, 1100
    chunk = mod._splits(n_rows, t, options.get().hamming_topk.interp_score_block_t, 64, 64)[1]
    assert mod.select_geometry(n_rows, chunk, options.get().hamming_topk.interp_select_block_t)[1] == 2
    _check_topk("cpu", 2, 16, 2, 1, t, 2, 40, 0.03, 1, 2, 0, seed=21)
    _check_topk("cpu", 2, 16, 2, 1, t, 2, 40, 0.03, 1, 2, 0, seed=22, distinct=3)
    kernel_options(hamming_topk={"hint": False})
    _check_topk("cpu", 2, 16, 2, 1, t, 2, 40, 0.03, 1, 2, 0, seed=23)


@pytest.mark.gpu
def test_hamming_topk_wide_blocks_gpu(kernel_options):
    """The doubled two-warp blocks compiled: 32 rows over splits of 5 blocks, hint on (twice: the second call
    hits) and off, with ties."""
    mod = K["hamming_topk"]
    kernel_options(hamming_topk={"programs": 256, "select_programs": 256})
    n_rows, t = 4 * 8, 40000
    o = options.get().hamming_topk
    chunk = mod._splits(n_rows, t, o.score_block_t, o.programs, o.max_splits)[1]
    assert mod.select_geometry(n_rows, chunk, o.select_block_t) == (2 * o.select_block_t, 2)
    pos = torch.tensor([[t - 1], [t // 2], [t - 3000], [700]])
    for seed, distinct in ((0, None), (0, None), (3, 5)):
        _check_topk("cuda", 4, 8, 4, 1, t, 4, 640, 1 / 64, 4, 16, 0, seed=seed, distinct=distinct, pos=pos)
    kernel_options(hamming_topk={"hint": False})
    _check_topk("cuda", 4, 8, 4, 1, t, 4, 640, 1 / 64, 4, 16, 0, seed=4, pos=pos)


@pytest.mark.parametrize("rounding", ["up", "down"])
def test_select_split_geometry(kernel_options, rounding):
    """Splits are whole blocks that cover the cache, never more than the cap; rounding down keeps the planned
    split count for a cache just past a power of two, rounding up takes fewer, longer splits."""
    mod = K["hamming_topk"]
    kernel_options(hamming_topk={"split_round": rounding})
    for t in (1, 100, 1000, 8192, 32768, 32792, 33792, 70000, 131096):
        for rows, block, programs, cap in ((64, 512, 2048, 64), (64, 1024, 2048, 64), (8, 512, 2048, 64), (2, 64, 4096, 64)):
            n, chunk = mod._splits(rows, t, block, programs, cap)
            assert chunk % block == 0 and n * chunk >= t > (n - 1) * chunk and n <= cap, (t, rows, block, n, chunk)
    assert mod._splits(64, 32792, 512, 2048, 64) == ((33, 1024) if rounding == "down" else (22, 1536))
    assert mod._splits(64, 32768, 512, 2048, 64) == (32, 1024)


@interp
def test_key_buffer_rows_aligned():
    """The per-slot key buffer's rows start at multiples of 64 slots whatever the cache length (vector
    loads on GPU), and the keys the scoring pass leaves are those of the valid slots."""
    mod = K["hamming_topk"]
    gen = torch.Generator().manual_seed(3)
    qc, kc = _codes((1, 4, 1, 2), "cpu", gen, None), _codes((1, 2, 100, 2), "cpu", gen, None)
    keys = mod.score_keys(qc, kc, torch.tensor([[99]]))[0]
    assert keys.shape == (2, 100) and keys.stride(0) == 128


def _check_hinted(device, kernel_options=None):
    """Decode-like repeated selections over one code cache: the second call with the same codes must find
    every row's threshold bin where the first left it (the fine pass skips its scan), then hints set to
    arbitrary bins must still give the reference's selection."""
    mod = K["hamming_topk"]
    gen = torch.Generator().manual_seed(21)
    b, hkv, g, t, nw, k = 2, 2, 4, 330, 4, 24
    kc = _codes((b, hkv, t, nw), device, gen, None)
    pos = torch.tensor([[t - 1], [200]], device=device)
    rows = b * hkv
    hint = mod.selection_hint(kc, rows)  # a freed cache of an earlier test may have left one at this address
    hint[:, 0], hint[:, 1:] = -1, 0

    def check(qc, budget=0.06):
        out = torch.full((b, hkv, 1, k), POISON, dtype=torch.int32, device=device)
        mod.hamming_topk(qc, kc, pos, k, budget, 1, 3, 0, out=out)
        want = ref.hamming_topk(qc.cpu(), kc.cpu(), pos.cpu(), k, budget, 1, 3, 0)
        assert torch.equal(out.cpu(), want), f"selection differs in {int((out.cpu() != want).sum())} places"

    qc = _codes((b, hkv * g, 1, nw), device, gen, None)
    check(qc)
    assert hint[:, 1].tolist() == [0] * rows  # no bin known at the first call
    check(qc)
    assert hint[:, 1].tolist() == [1] * rows  # same codes: every row hits and skips its scan
    # The window is two bins, lo and lo + 1, and the threshold's bin is one of them. Shifted down by one it
    # holds the threshold only if that is lo (found in the window's upper half), shifted up only if it is
    # lo + 1 (the lower half): each row hits in exactly one of the two calls, and both select exactly.
    lo = hint[:, 0].clone()
    assert bool((lo >= 1).all())
    for shift in (-1, 1):
        hint[:, 0], hint[:, 1] = lo + shift, 0
        check(qc)
        hits = hint[:, 1].clone() if shift == -1 else hits + hint[:, 1]
    assert hits.tolist() == ([1] * rows if options.get().hamming_topk.hint_window == 2 else [0] * rows)
    hint[:, 0], hint[:, 1] = lo, 1
    stats = mod.hint_stats(device)
    assert stats["hits"] >= rows and stats["calls"] >= 2 * rows
    for seed in range(2):
        check(_codes((b, hkv * g, 1, nw), device, torch.Generator().manual_seed(seed), None))
    for seed in range(3):  # arbitrary hinted bins, some equal to the true one: exact either way
        hint[:, 0] = torch.randint(-1, 9, (rows,), generator=torch.Generator().manual_seed(seed)).to(device)
        check(qc, budget=0.1)
    if kernel_options is not None:  # switched off: selections leave the hint alone
        before = hint.clone()
        kernel_options(hamming_topk={"hint": False})
        check(qc)
        assert torch.equal(hint, before)


@interp
def test_hamming_topk_one_bin_hint_interp(kernel_options):
    """The one-bin window (``hint_window`` 1): a shifted bin never hits."""
    kernel_options(hamming_topk={"hint_window": 1})
    _check_hinted("cpu")


@interp
def test_hamming_topk_selection_hint_interp(kernel_options):
    kernel_options(hamming_topk={"interp_score_block_t": 32})  # many splits a row
    _check_hinted("cpu", kernel_options)


def test_score_l2_prefetch_setting_is_checked(kernel_options):
    """A malformed score_l2_prefetch is a one-line user error when it is set, not a traceback at launch."""
    from hatac.errors import HatacError

    mod = K["hamming_topk"]
    with pytest.raises(HatacError, match=r"^kernel option hamming_topk.score_l2_prefetch must be int, got 'lots'$"):
        kernel_options(hamming_topk={"score_l2_prefetch": "lots"})
    with pytest.raises(HatacError, match=r"^kernel option hamming_topk.score_l2_prefetch must be at least 0, got -1$"):
        kernel_options(hamming_topk={"score_l2_prefetch": -1})
    kernel_options(hamming_topk={"score_l2_prefetch": 512})
    assert mod._l2_prefetch_slots(torch.zeros(1, 2, 8, 4, dtype=torch.int32), 4) == 0  # CPU: no prefetch


TOPK_GPU = [
    (8, 8, 4, 1, 32768, 4, 1024, 0.03125, 0, 0, 0),
    (1, 8, 4, 1, 70000, 4, 1094, 0.015625, 4, 64, 0),
    (2, 4, 8, 1, 9000, 8, 300, 300.0, 0, 0, 4096),
    (2, 2, 1, 1, 5000, 1, 128, 128.0, 0, 0, 0),
    (1, 4, 4, 5, 3000, 4, 100, 0.03, 1, 1, 0),
    (3, 2, 6, 1, 4000, 3, 256, 256.0, 0, 8, 0),
    (1, 1, 32, 1, 2000, 2, 64, 64.0, 0, 0, 0),
]


@pytest.mark.parametrize("case", TOPK_GPU)
@pytest.mark.gpu
def test_hamming_topk_gpu(case):
    _check_topk("cuda", *case, seed=0)
    _check_topk("cuda", *case, seed=7, distinct=5)  # many ties


@pytest.mark.parametrize("d, dtype, lines", [(128, torch.bfloat16, 2), (64, torch.float16, 1), (256, torch.bfloat16, 4), (128, torch.float32, 4), (256, torch.float32, 0)])
@pytest.mark.gpu
def test_hamming_topk_kv_prefetch_gpu(d, dtype, lines):
    """Given the K/V caches, the write pass prefetches the selected rows (lines a row, 0: a row size it
    does not take); the selection is the same."""
    mod = K["hamming_topk"]
    for case in TOPK_GPU[:3]:
        b, hkv, t = case[0], case[1], case[4]
        kv = [torch.empty(b, hkv, t, d, dtype=dtype, device="cuda") for _ in range(2)]
        qc = torch.zeros(b, hkv * case[2], case[3], case[5], dtype=torch.int32, device="cuda")
        assert mod._kv_prefetch_rows(qc, *kv, 1) == (lines if mod.pdl_args(qc)["PDL"] else 0)
        _check_topk("cuda", *case, seed=1, caches=kv)
        _check_topk("cuda", *case, seed=8, distinct=5, caches=kv)


@pytest.mark.gpu
def test_hamming_topk_selection_hint_gpu():
    _check_hinted("cuda")


def _counters_zero(owner):
    """Every kernel that keeps persistent counters must leave them at zero (the next launch relies on it)."""
    from hatac.kernels._common import _COUNTERS

    bufs = [buf for (name, _), buf in _COUNTERS.items() if name == owner]
    assert bufs, f"{owner} made no counters"
    assert all(int(buf.abs().sum()) == 0 for buf in bufs), f"{owner} left counters non-zero"


# ---------------------------------------------------------------------------------------------- attention


def _check_attention(device, b, hkv, g, s, t, d, kk, dtype, seed, tol):
    gen = torch.Generator().manual_seed(seed)
    q = torch.randn(b, hkv * g, s, d, generator=gen).to(device, dtype)
    kc = torch.randn(b, hkv, t, d, generator=gen).to(device, dtype)
    vc = torch.randn(b, hkv, t, d, generator=gen).to(device, dtype)
    idx = torch.full((b, hkv, s, kk), -1, dtype=torch.int32)
    empty_row = b * hkv * s > 1
    for bi in range(b):
        for h in range(hkv):
            for si in range(s):
                n = int(torch.randint(0, min(kk, t) + 1, (1,), generator=gen))
                if bi == 0 and h == 0 and si == 0 and empty_row:
                    n = 0  # a query with nothing selected gets zeros
                idx[bi, h, si, :n] = torch.randperm(t, generator=gen)[:n].sort().values.to(torch.int32)
    idx = idx.to(device)
    scale = 1 / math.sqrt(d)
    out = torch.full((b, hkv * g, s, d), float("nan"), dtype=dtype, device=device)
    K["sparse_attention"].sparse_attention(q, kc, vc, idx, scale, out=out)
    want = ref.sparse_attention(q.cpu().double(), kc.cpu().double(), vc.cpu().double(), idx.cpu(), scale)
    got = out.cpu().double()
    assert torch.isfinite(got).all()
    err = ((got - want).norm() / want.norm()).item()
    assert err < tol, f"relative error {err:.2e}"
    if empty_row:
        assert (got[0, :g, 0] == 0).all()


@pytest.mark.parametrize("smem_kb,want", [(228, (128, 3)), (164, (128, 2)), (100, (64, 2)), (48, (32, 2))])
def test_dense_decode_stages_fit_shared_memory(monkeypatch, smem_kb, want):
    """The dense decode's pipelined K/V tiles (bf16, d 128: 512 bytes a row) shrink to the GPU's shared memory:
    H100 keeps 3 stages of 128 rows, A100 2, smaller parts shorter tiles."""
    att = K["sparse_attention"]
    props = types.SimpleNamespace(shared_memory_per_multiprocessor=smem_kb * 1024)
    monkeypatch.setattr(att, "device_properties", lambda device: props)
    assert att._fit_stages(torch.device("cpu"), 128, 3, 512) == want


def test_self_reset_counters_grow_and_keep_old_buffers():
    """Outgrown counter buffers stay alive (a captured CUDA graph may still point at them), and a grown buffer
    starts at zero."""
    common = K["_common"]
    first = common.self_reset_counters("test-owner", "cpu", 10)
    assert first is not None and first.numel() >= 10 and int(first.abs().sum()) == 0
    assert common.self_reset_counters("test-owner", "cpu", 5) is first  # big enough: reused
    grown = common.self_reset_counters("test-owner", "cpu", first.numel() + 1)
    assert grown is not first and grown.numel() > first.numel() and int(grown.abs().sum()) == 0
    assert any(t is first for t in common._RETIRED)


@interp
@pytest.mark.parametrize(
    "case",
    [
        (2, 2, 2, 1, 50, 32, 20, torch.float32, 1e-5),
        (1, 2, 4, 2, 40, 64, 33, torch.bfloat16, 1e-2),
        (1, 1, 3, 2, 30, 48, 8, torch.float16, 1e-3),
        (1, 1, 8, 1, 400, 128, 300, torch.float32, 1e-5),  # 10 pieces of one row to merge
    ],
)
def test_sparse_attention_interp(case):
    _check_attention("cpu", *case[:-1], seed=2, tol=case[-1])
    _check_attention("cpu", *case[:-1], seed=3, tol=case[-1])  # again on the counters the first call left
    _counters_zero("sparse_attention")


@pytest.mark.parametrize(
    "case",
    [
        (8, 8, 4, 1, 8192, 128, 1024, torch.bfloat16, 1e-2),
        (1, 8, 4, 1, 4096, 128, 2048, torch.bfloat16, 1e-2),
        (2, 2, 8, 3, 1000, 64, 100, torch.float16, 2e-3),
        (1, 2, 2, 1, 1000, 256, 300, torch.bfloat16, 1e-2),
        (2, 4, 1, 1, 600, 96, 64, torch.float32, 1e-4),
        (1, 1, 32, 1, 500, 128, 200, torch.bfloat16, 1e-2),
    ],
)
@pytest.mark.gpu
def test_sparse_attention_gpu(case):
    _check_attention("cuda", *case[:-1], seed=4, tol=case[-1])
    _check_attention("cuda", *case[:-1], seed=5, tol=case[-1])
    torch.cuda.synchronize()
    _counters_zero("sparse_attention")


# ---------------------------------------------------------------------------------------------- integration


def test_import_registers_without_gpu():
    import hatac.kernels.registry as kernels

    assert kernels.AVAILABLE
    assert {"hash_encode", "hash_encode_step", "hash_encode_step_kv", "hamming_topk", "sparse_attention"} <= set(kernels.KERNELS)


def _decode_inputs(b=2, hkv=4, g=4, t=3000, d=128, r=128, seed=0):
    gen = torch.Generator().manual_seed(seed)
    dev, dt = "cuda", torch.bfloat16
    q = torch.randn(b, hkv * g, 1, d, generator=gen).to(dev, dt)
    k = torch.randn(b, hkv, 1, d, generator=gen).to(dev, dt)
    w = torch.randn(hkv, d, r, generator=gen).to(dev)
    kc = torch.randn(b, hkv, t, d, generator=gen).to(dev, dt)
    vc = torch.randn(b, hkv, t, d, generator=gen).to(dev, dt)
    codes = ref.hash_encode(kc.float().cpu(), w.cpu()).to(dev)
    pos = torch.tensor([[t - 1], [t // 2]], device=dev)[:b]
    return q, k, w, kc, vc, codes, pos


def _decode_step(q, k, w, kc, vc, codes, pos):
    ops = torch.ops.hatac
    qc = ops.hash_encode_step(q, k, w, codes, pos)
    idx = ops.hamming_topk(qc, codes, pos, 128, 128.0, 2, 8, 0)
    return ops.sparse_attention(q, kc, vc, idx, 0.088)


@pytest.mark.gpu
def test_ops_dispatch_compile_and_graph_gpu():
    """torch.ops.hatac on CUDA runs the Triton bodies; fullgraph compile and CUDA-graph replay agree."""
    inputs = _decode_inputs()
    cpu = [x.cpu() for x in inputs]
    want = _decode_step(*cpu)
    eager = _decode_step(*[x.clone() for x in inputs])
    assert ((eager.cpu().double() - want.double()).norm() / want.double().norm()) < 1e-2
    compiled = torch.compile(_decode_step, fullgraph=True)
    got = compiled(*[x.clone() for x in inputs])
    assert ((got.cpu().double() - want.double()).norm() / want.double().norm()) < 1e-2
    static = [x.clone() for x in inputs]
    _decode_step(*static)  # warm up: compile the kernels outside the capture
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = _decode_step(*static)
    fresh = _decode_inputs(seed=1)
    for dst, src in zip(static, fresh):
        dst.copy_(src)
    graph.replay()
    want = _decode_step(*[x.cpu() for x in fresh])
    assert ((out.cpu().double() - want.double()).norm() / want.double().norm()) < 1e-2
