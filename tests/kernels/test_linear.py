"""``hatac::linear``'s Triton GEMV against ``F.linear``: in Triton's interpreter without CUDA (tiny shapes),
compiled on the GPU (tests marked ``gpu``), and the decode step's routing of its linears through it."""

from __future__ import annotations

import operator

import pytest
import torch
import torch.nn.functional as F

from _kernel_mode import CUDA, INTERPRET, interp, kernel_module  # sets the mode before any kernel module is imported

triton = pytest.importorskip("triton")

from hatac import reference as ref  # noqa: E402
from hatac.kernels import options  # noqa: E402

L = kernel_module("linear", "_gemv_kernel")


def _check(x, w, bias, tol, prefetch=0.0):
    assert L.gemv_fits(x, w, bias)
    got = L.linear(x, w, bias, prefetch)
    want = F.linear(x.float(), w.float(), None if bias is None else bias.float())
    assert got.shape == want.shape and got.dtype == x.dtype
    err = ((got.float() - want).norm() / want.norm()).item()
    assert err < tol, f"rel. error {err:.2e}"


@interp
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("rows,n,k,bias", [(1, 40, 96, False), (3, 16, 64, True), (8, 33, 80, True), (16, 48, 32, False)])
def test_gemv_matches_linear_interpreted(dtype, rows, n, k, bias):
    """Rows 1 to 16, N and K not multiples of the blocks, with and without a bias, x of rank 3."""
    gen = torch.Generator().manual_seed(rows * n + k)
    x = torch.randn(rows, 1, k, generator=gen).to(dtype)
    w = torch.randn(n, k, generator=gen).to(dtype)
    b = torch.randn(n, generator=gen).to(dtype) if bias else None
    _check(x, w, b, 1e-2)


@interp
def test_gemv_reads_strided_rows_interpreted():
    """A non-contiguous x (a column slice) and a weight that is a row block of a larger one."""
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(4, 100, generator=gen).to(torch.bfloat16)[:, 4:68]
    big = torch.randn(50, 64, generator=gen).to(torch.bfloat16)
    _check(x, big[10:30], None, 1e-2)


def test_what_takes_the_gemv(kernel_options):
    """Rows past max_rows, float32, mixed dtypes, a weight whose rows are strided: F.linear instead."""
    kernel_options(linear={"min_wave_fill": 0.0})  # on a GPU, 8 rows of W would not fill its SMs
    bf = torch.bfloat16
    w = torch.zeros(8, 32, dtype=bf)
    fits = INTERPRET or CUDA  # on a CPU build without the interpreter nothing takes it
    dev = "cuda" if CUDA and not INTERPRET else "cpu"
    w = w.to(dev)
    assert L.gemv_fits(torch.zeros(16, 32, dtype=bf, device=dev), w, None) == fits
    assert not L.gemv_fits(torch.zeros(17, 32, dtype=bf, device=dev), w, None)
    assert not L.gemv_fits(torch.zeros(2, 32, device=dev), w.float(), None)
    assert not L.gemv_fits(torch.zeros(2, 32, dtype=torch.float16, device=dev), w, None)
    assert not L.gemv_fits(torch.zeros(2, 32, dtype=bf, device=dev), w.t().contiguous().t(), None)
    assert not L.gemv_fits(torch.zeros(2, 16, dtype=bf, device=dev), w, None)
    x = torch.randn(20, 32, device=dev).to(bf)
    torch.testing.assert_close(L.linear(x, w, None), F.linear(x, w))  # falls back


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("rows,n,k,bias", [(8, 4096, 4096, False), (1, 4096, 14336, True), (16, 28672, 4096, False), (3, 128256, 4096, False)])
@pytest.mark.parametrize("prefetch", [0.0, 0.5, 1.0])
def test_gemv_matches_linear_gpu(dtype, rows, n, k, bias, prefetch):
    gen = torch.Generator(device="cuda").manual_seed(rows + n)
    x = torch.randn(rows, k, device="cuda", generator=gen).to(dtype)
    w = (torch.randn(n, k, device="cuda", generator=gen) * 0.02).to(dtype)
    b = torch.randn(n, device="cuda", generator=gen).to(dtype) if bias else None
    if L._wave_fill(n, x.device) < options.get().linear.min_wave_fill:
        pytest.skip("this GPU's SM count leaves the shape to cuBLAS")
    assert (L._prefetch_bytes(x, w, options.get().linear.block_n, prefetch) > 0) == (prefetch > 0)
    _check(x, w, b, 1e-2, prefetch)
    y = torch.ops.hatac.linear(x, w, b, prefetch)  # the op's CUDA body is this kernel
    assert torch.equal(y, L.linear(x, w, b))  # the prefetch changes nothing in the result


def test_gemv_only_where_its_programs_fill_the_sms(monkeypatch):
    """132 SMs (H100): 128 or 896 programs of 32 rows fill them evenly and take the GEMV; q/k/v's 192 do
    not (one SM in two would run two), nor would 32."""
    dev = torch.device("cuda", 99)
    monkeypatch.setattr(L, "_sm_count", lambda device: 132)
    assert L._wave_fill(4096, dev) == pytest.approx(128 / 132)
    assert L._wave_fill(28672, dev) == pytest.approx(896 / 132 / 7)
    assert L._wave_fill(6144, dev) == pytest.approx(192 / 132 / 2)
    fits = {n: L._wave_fill(n, dev) >= options.get().linear.min_wave_fill for n in (4096, 6144, 1024, 28672, 128256)}
    assert fits == {4096: True, 6144: False, 1024: False, 28672: True, 128256: True}


@torch.no_grad()
def test_runtime_decode_graph_routes_linears_and_leaves_the_model_graph():
    import hatac
    from hatac.runtime.decode_step import runtime_decode_graph
    from models import tiny_model

    hm = hatac.convert(tiny_model("qwen2"), hatac.HataConfig(hash="random", budget=0.5, dense_layers=1, rbits=64))
    linear = torch.ops.aten.linear.default
    before = [n for n in hm.decode_graph.graph.nodes if n.target == linear]
    routed = runtime_decode_graph(hm)
    assert before and routed is not hm.decode_graph and routed is runtime_decode_graph(hm)
    assert [n for n in hm.decode_graph.graph.nodes if n.target == linear] == before  # untouched
    assert not [n for n in routed.graph.nodes if n.target == linear]
    mine = [n for n in routed.graph.nodes if n.target == torch.ops.hatac.linear.default]
    gated = [n for n in routed.graph.nodes if n.target == torch.ops.hatac.linear_silu_mul.default]
    assert len(gated) == hm.config.num_hidden_layers  # each MLP's stacked gate/up and its SiLU-and-mul
    assert len(mine) + len(gated) == len(before)
    assert not [n for n in routed.graph.nodes if n.target == torch.ops.aten.silu.default]
    # each residual add and the RMSNorm after it: hatac::add_rms_norm; left: the first layer's norm (no add)
    norms = [n for n in routed.graph.nodes if n.target == torch.ops.hatac.add_rms_norm.default]
    assert len(norms) == 2 * hm.config.num_hidden_layers
    assert len([n for n in routed.graph.nodes if n.target == torch.ops.aten.rsqrt.default]) == 1
    # o_proj of each hashed layer (it reads hatac::sparse_attention's output) prefetches; nothing else does
    attn = [n for n in routed.graph.nodes if n.target == torch.ops.hatac.sparse_attention.default]
    assert attn and sorted(n.args[3] for n in mine) == [0.0] * (len(mine) - len(attn)) + [0.25] * len(attn)
    for attrs in ("named_parameters", "named_buffers"):  # the same tensors, not copies
        mine = dict(getattr(routed, attrs)(remove_duplicate=False))
        theirs = dict(getattr(hm.decode_graph, attrs)(remove_duplicate=False))
        assert mine and mine.keys() <= theirs.keys() and all(theirs[k] is v for k, v in mine.items())


def test_reads_sparse_attention_sees_through_layout_ops_only():
    from hatac.passes.decode.linears import reads_sparse_attention

    aten = torch.ops.aten
    g = torch.fx.Graph()
    q, kc, vc, idx, w = (g.placeholder(n) for n in ("q", "kc", "vc", "idx", "w"))
    att = g.call_function(torch.ops.hatac.sparse_attention.default, (q, kc, vc, idx, 0.1))
    t = g.call_function(aten.transpose.int, (att, 1, 2))
    r = g.call_function(aten.reshape.default, (t, [2, -1]))
    scaled = g.call_function(aten.mul.Tensor, (r, 2.0))
    direct = g.call_function(aten.linear.default, (att, w))
    through = g.call_function(aten.linear.default, (r, w))
    after_math = g.call_function(aten.linear.default, (scaled, w))
    other = g.call_function(aten.linear.default, (q, w))
    assert reads_sparse_attention(direct) and reads_sparse_attention(through)
    assert not reads_sparse_attention(after_math) and not reads_sparse_attention(other)


def _gated_reference(x, w):
    gate, up = F.linear(x.float(), w.float()).chunk(2, dim=-1)
    return F.silu(gate) * up


@interp
@pytest.mark.parametrize("dtype,tol", [(torch.bfloat16, 3e-2), (torch.float16, 2e-3)])
@pytest.mark.parametrize("rows,n,k", [(1, 40, 96), (8, 34, 80), (16, 64, 32), (3, 2, 16)])
def test_gated_gemv_matches_silu_mul_interpreted(dtype, tol, rows, n, k):
    """SiLU(x Wg^T) * (x Wu^T) for W = [Wg; Wu]: halves not a multiple of the block, x of rank 3. (bf16's
    tolerance is the interpreter's: it rounds float32 to bf16 toward zero, the GPU to nearest.)"""
    gen = torch.Generator().manual_seed(rows * n + k)
    x = torch.randn(rows, 1, k, generator=gen).to(dtype)
    w = (torch.randn(n, k, generator=gen) * 0.3).to(dtype)
    assert L.gemv_fits(x, w, None, gated=True)
    got = L.linear_silu_mul(x, w)
    want = _gated_reference(x, w)
    assert got.shape == (rows, 1, n // 2) and got.dtype == dtype
    assert ((got.float() - want).norm() / want.norm()).item() < tol


def test_gated_gemv_declines_what_it_cannot_take():
    x = torch.randn(2, 64).to(torch.bfloat16)
    assert not L.gemv_fits(x, torch.randn(33, 64).to(torch.bfloat16), None, gated=True)  # odd rows: no halves
    assert not L.gemv_fits(x, torch.randn(32, 64).to(torch.bfloat16), torch.randn(32).to(torch.bfloat16), gated=True)
    x32, w32 = torch.randn(2, 64), torch.randn(32, 64)  # float32: the fallback, same result
    torch.testing.assert_close(L.linear_silu_mul(x32, w32), _gated_reference(x32, w32))


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("rows", [1, 8, 16])
@pytest.mark.parametrize("n,k", [(28672, 4096), (2 * 8960, 1536), (2 * 3072, 1024)], ids=["llama3-8b", "qwen2-1.5b", "small"])
def test_gated_gemv_gpu(n, k, dtype, rows):
    """Against the unfused graph (linear, then SiLU-and-mul) and float32; Llama-3-8B's shape takes the GEMV."""
    gen = torch.Generator(device="cuda").manual_seed(n + rows)
    x = torch.randn(rows, k, device="cuda", generator=gen).to(dtype)
    w = (torch.randn(n, k, device="cuda", generator=gen) * 0.02).to(dtype)
    if n == 28672:
        assert L.gemv_fits(x, w, None, gated=True)
    got = torch.ops.hatac.linear_silu_mul(x, w)
    unfused = ref.linear_silu_mul(x, w)  # the unfused graph's ops, in x's dtype
    want = _gated_reference(x, w)
    assert ((got.float() - want).norm() / want.norm()).item() < 1e-2
    assert ((got.float() - unfused.float()).norm() / want.norm()).item() < 1e-2


def _mlp_graph(sizes=(8, 8), extra_silu_user=False, swap=False):
    aten = torch.ops.aten
    g = torch.fx.Graph()
    x, w = g.placeholder("x"), g.placeholder("w")
    lin = g.call_function(aten.linear.default, (x, w))
    split = g.call_function(aten.split_with_sizes.default, (lin, list(sizes), -1))
    gate = g.call_function(operator.getitem, (split, 0))
    up = g.call_function(operator.getitem, (split, 1))
    act = g.call_function(aten.silu.default, (gate,))
    mul = g.call_function(aten.mul.Tensor, (up, act) if swap else (act, up))
    g.output((mul, act) if extra_silu_user else mul)
    return torch.fx.GraphModule(torch.nn.Module(), g)


@pytest.mark.parametrize("swap", [False, True])
def test_fuse_gated_linear_rewrites_the_pattern(swap):
    from hatac.passes.decode.linears import FuseGatedLinear

    gm = _mlp_graph(swap=swap)
    x, w = torch.randn(3, 5), torch.randn(16, 5)
    want = gm(x, w)
    res = FuseGatedLinear().call(gm)
    assert res.modified
    targets = [n.target for n in gm.graph.nodes if n.op == "call_function"]
    assert targets == [torch.ops.hatac.linear_silu_mul.default]
    torch.testing.assert_close(gm(x, w), want)


@pytest.mark.parametrize("kind", ["unequal halves", "silu read elsewhere"])
def test_fuse_gated_linear_leaves_other_graphs(kind):
    from hatac.passes.decode.linears import FuseGatedLinear

    gm = _mlp_graph(sizes=(6, 10)) if kind == "unequal halves" else _mlp_graph(extra_silu_user=True)
    before = [n.target for n in gm.graph.nodes]
    assert not FuseGatedLinear().call(gm).modified
    assert [n.target for n in gm.graph.nodes] == before
