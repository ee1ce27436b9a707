"""``hatac::add_rms_norm``'s Triton kernel against the reference (interpreter without CUDA, compiled on the GPU
for tests marked ``gpu``) and ``FuseAddRMSNorm``, the runtime rewrite that puts it in a decode step."""

from __future__ import annotations

import pytest
import torch

from _kernel_mode import interp, kernel_module  # sets the mode before any kernel module is imported

triton = pytest.importorskip("triton")

from hatac import reference as ref  # noqa: E402

N = kernel_module("rms_norm", "_add_rms_norm_kernel")


def _inputs(shape, dtype, device="cpu", seed=0):
    gen = torch.Generator(device=device).manual_seed(seed)
    x = torch.randn(shape, generator=gen, device=device).to(dtype)
    r = torch.randn(shape, generator=gen, device=device).to(dtype)
    w = (torch.rand(shape[-1], generator=gen, device=device) + 0.5).to(dtype)
    return x, r, w


def _rel(a, b):
    return ((a.float() - b.float()).norm() / b.float().norm()).item()


@interp
@pytest.mark.parametrize("dtype,tol", [(torch.bfloat16, 1e-2), (torch.float16, 1e-3)])
@pytest.mark.parametrize("shape", [(1, 1, 40), (8, 1, 64), (3, 2, 100)])
def test_add_rms_norm_interpreted(dtype, tol, shape):
    """Rows not a power of two wide, x of rank 3 with several rows. (bf16's tolerance is the interpreter's:
    it rounds float32 to bf16 toward zero, the GPU to nearest.)"""
    x, r, w = _inputs(shape, dtype, seed=shape[-1])
    assert N.norm_fits(x, r, w)
    s, o = N.add_rms_norm(x, r, w, 1e-5)
    want_s, want_o = ref.add_rms_norm(x.float(), r.float(), w.float(), 1e-5)
    assert s.shape == o.shape == x.shape and s.dtype == o.dtype == dtype
    assert _rel(s, want_s) < tol and _rel(o, want_o) < tol


def test_add_rms_norm_declines_what_it_cannot_take():
    x, r, w = _inputs((2, 32), torch.bfloat16)
    assert not N.norm_fits(x, r, w.float())  # a float32 weight: the output would be float32
    assert not N.norm_fits(x, r[:, :16], w[:16])
    assert not N.norm_fits(x.float(), r.float(), w.float())
    wide = torch.zeros(1, N.MAX_N + 1, dtype=torch.bfloat16)
    assert not N.norm_fits(wide, wide, torch.ones(N.MAX_N + 1, dtype=torch.bfloat16))
    xf, rf, wf = x.float(), r.float(), w.float()  # the fallback is the reference, and the op's CPU body
    got = N.add_rms_norm(xf, rf, wf, 1e-6)
    want = torch.ops.hatac.add_rms_norm(xf, rf, wf, 1e-6)
    assert all(torch.equal(a, b) for a, b in zip(got, want))


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("shape", [(1, 1, 4096), (8, 1, 4096), (16, 1, 4096), (4, 1, 1536), (3, 1, 5120)])
def test_add_rms_norm_gpu(dtype, shape):
    """Against the unfused graph's ops on the same tensors (the same bits but for summation order)."""
    x, r, w = _inputs(shape, dtype, device="cuda", seed=shape[0])
    s, o = torch.ops.hatac.add_rms_norm(x, r, w, 1e-5)
    want_s, want_o = ref.add_rms_norm(x, r, w, 1e-5)
    assert torch.equal(s, want_s)
    assert _rel(o, want_o) < 2e-3


def _norm_graph(f32_copy_read_later=False, dim=-1):
    """residual + y, then a Llama RMSNorm of the sum (bf16, with export's dtype asserts); the sum is read later."""
    aten = torch.ops.aten
    g = torch.fx.Graph()
    y, res = g.placeholder("y"), g.placeholder("res")
    nw = g.get_attr("nw")
    s = g.call_function(aten.add.Tensor, (res, y))
    g.call_function(aten._assert_tensor_metadata.default, (s,), {"dtype": torch.bfloat16})
    xf = g.call_function(aten.to.dtype, (s, torch.float32))
    p = g.call_function(aten.pow.Tensor_Scalar, (xf, 2))
    mean = g.call_function(aten.mean.dim, (p, [dim], True))
    a = g.call_function(aten.add.Tensor, (mean, 1e-6))
    r = g.call_function(aten.rsqrt.default, (a,))
    m = g.call_function(aten.mul.Tensor, (xf, r))
    t = g.call_function(aten.to.dtype, (m, torch.bfloat16))
    out = g.call_function(aten.mul.Tensor, (nw, t))
    later = g.call_function(aten.add.Tensor, (xf if f32_copy_read_later else s, 1.0))
    g.output((out, later))
    root = torch.nn.Module()
    root.nw = torch.nn.Parameter((torch.rand(16) + 0.5).to(torch.bfloat16), requires_grad=False)
    gm = torch.fx.GraphModule(root, g)
    args = (torch.randn(3, 16).to(torch.bfloat16), torch.randn(3, 16).to(torch.bfloat16))

    class Record(torch.fx.Interpreter):  # each node's value as its meta["val"], as export leaves it
        def run_node(self, n):
            n.meta["val"] = super().run_node(n)
            return n.meta["val"]

    Record(gm).run(*args)
    return gm, args


def test_fuse_add_rms_norm_rewrites_the_pattern():
    from hatac.passes.decode.norms import FuseAddRMSNorm

    gm, args = _norm_graph()
    want = gm(*args)
    assert FuseAddRMSNorm().call(gm).modified
    targets = [n.target for n in gm.graph.nodes if n.op == "call_function"]
    assert targets.count(torch.ops.hatac.add_rms_norm.default) == 1
    assert torch.ops.aten.rsqrt.default not in targets and torch.ops.aten._assert_tensor_metadata.default not in targets
    got = gm(*args)
    assert all(torch.equal(a, b) for a, b in zip(got, want))  # the sum's later reader gets the op's sum


@pytest.mark.parametrize("kind", ["float32 copy read later", "norm over another dim"])
def test_fuse_add_rms_norm_leaves_other_graphs(kind):
    from hatac.passes.decode.norms import FuseAddRMSNorm

    gm, _ = _norm_graph(f32_copy_read_later=True) if kind.startswith("float32") else _norm_graph(dim=0)
    before = [n.target for n in gm.graph.nodes]
    assert not FuseAddRMSNorm().call(gm).modified
    assert [n.target for n in gm.graph.nodes] == before
