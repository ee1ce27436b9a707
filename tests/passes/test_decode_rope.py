"""``FuseRoPEEncode``: a hashed decode layer's rotary embedding moves into ``hatac::rope_hash_encode_step_kv``,
and the step computes what it computed before (CPU: the op's reference body)."""

from __future__ import annotations

import pytest
import torch
import torch.fx as fx

import hatac
from hatac.passes.decode.rope import FuseRoPEEncode
from hatac.runtime.decode_step import StaticDecodeStep, runtime_decode_graph
from hatac.runtime.options import DecodeOptions
from models import ARCHS, tiny_model

FUSED = torch.ops.hatac.rope_hash_encode_step_kv.default
UNFUSED = torch.ops.hatac.hash_encode_step_kv.default


def _fresh_runtime(hm):
    for key in ("_runtime_decode_graph", "_compiled_decode"):
        hm.__dict__.pop(key, None)


@torch.no_grad()
@pytest.mark.parametrize("arch", list(ARCHS) + ["phi3-partial"])
def test_rope_in_the_encode_keeps_the_step(arch):
    """Every hashed layer takes the fused op (phi3 writes its rotary embedding in the partial form, slices and a
    cat around it; "phi3-partial" rotates half of each head), and three static decode steps give the logits
    of the unfused graph."""
    model = tiny_model("phi3", partial_rotary_factor=0.5) if arch == "phi3-partial" else tiny_model(arch)
    hm = hatac.convert(model, hatac.HataConfig(hash="random", budget=0.5, dense_layers=1, rbits=64, sink=1))
    hashed = hm.config.num_hidden_layers - 1
    ids = torch.randint(3, 300, (2, 9), generator=torch.Generator().manual_seed(0))
    logits = {}
    for rope in (False, True):
        hm.decode_options = DecodeOptions(rope=rope)
        _fresh_runtime(hm)
        targets = [n.target for n in runtime_decode_graph(hm).graph.nodes]
        fused = hashed if rope else 0
        assert (targets.count(FUSED), targets.count(UNFUSED)) == (fused, hashed - fused)
        cache = hm.new_cache(capacity=16, static=True)
        hm(ids, cache=cache)
        cache.static_step = StaticDecodeStep(hm, cache, compile=False, cuda_graph=False)
        tok, out = ids[:, -1:], []
        for _ in range(3):
            step = hm(tok, cache=cache).logits
            out.append(step)
            tok = step[:, -1:].argmax(-1)
        logits[rope] = torch.cat(out, 1)
    _fresh_runtime(hm)
    torch.testing.assert_close(logits[True], logits[False], rtol=1e-5, atol=1e-5)


def _rope(x, cos, sin, swap=False):
    c, s = cos.unsqueeze(1), sin.unsqueeze(1)
    half = x.shape[-1] // 2
    rot = torch.cat((-x[..., half:], x[..., :half]), dim=-1)
    return (rot * s + x * c) if swap else (x * c + rot * s)


def _graph(k_read_later=False, other_sin=False, swap=False):
    """A hashed layer's decode rope and encode, exported: (graph module, example inputs)."""
    import hatac.ops  # noqa: F401

    class Layer(torch.nn.Module):
        def forward(self, q, k, v, cos, sin, sin2, w, kc, vc, codes, pos):
            qr = _rope(q, cos, sin, swap)
            kr = _rope(k, cos, sin2 if other_sin else sin)
            qc = torch.ops.hatac.hash_encode_step_kv(qr, kr, v, w, kc, vc, codes, pos)
            out = (qr * 2, qc)
            return out + (kr + 1,) if k_read_later else out

    gen = torch.Generator().manual_seed(0)
    b, hkv, g, d, t = 2, 2, 2, 16, 8
    args = (torch.randn(b, hkv * g, 1, d, generator=gen), torch.randn(b, hkv, 1, d, generator=gen),
            torch.randn(b, hkv, 1, d, generator=gen), torch.randn(b, 1, d, generator=gen),
            torch.randn(b, 1, d, generator=gen), torch.randn(b, 1, d, generator=gen), torch.randn(hkv, d, 32, generator=gen),
            torch.zeros(b, hkv, t, d), torch.zeros(b, hkv, t, d), torch.zeros(b, hkv, t, 1, dtype=torch.int32),
            torch.tensor([[3], [5]]))
    ep = torch.export.export(Layer(), args)
    return ep.module(), args


def _run(gm, args):
    state = [a.clone() for a in args]
    return gm(*state), state


def test_fuse_rope_encode_rewrites_the_pattern():
    """Both orders of the sum; the rotated q's other reader gets the op's rotated q; the caches and codes
    written are the unfused graph's."""
    for swap in (False, True):
        gm, args = _graph(swap=swap)
        gm = fx.GraphModule(gm, gm.graph)
        want, want_state = _run(gm, args)
        assert FuseRoPEEncode().call(gm).modified
        targets = [n.target for n in gm.graph.nodes if n.op == "call_function"]
        assert targets.count(FUSED) == 1 and UNFUSED not in targets
        assert torch.ops.aten.neg.default not in targets and torch.ops.aten.cat.default not in targets
        got, state = _run(gm, args)
        for a, b in zip(list(got) + state, list(want) + want_state):
            torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("kind", ["rotated key read later", "q and k rotated by different sin"])
def test_fuse_rope_encode_leaves_other_graphs(kind):
    gm, _ = _graph(k_read_later=kind.startswith("rotated key"), other_sin=kind.startswith("q and k"))
    gm = fx.GraphModule(gm, gm.graph)
    before = [n.target for n in gm.graph.nodes]
    assert not FuseRoPEEncode().call(gm).modified
    assert [n.target for n in gm.graph.nodes] == before
