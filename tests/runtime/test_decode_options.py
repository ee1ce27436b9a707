"""Decode options: the runtime decode passes come from DecodeOptions, run through PassManager, and the runtime
graph and compiled step are cached on the model per options."""

from __future__ import annotations

import pytest
import torch

import hatac
from hatac.passes.base import PassError, PassResult
from hatac.passes.decode.linears import FuseGatedLinear, RouteDecodeLinears
from hatac.passes.decode.norms import FuseAddRMSNorm
from hatac.passes.decode.rope import FuseRoPEEncode
from hatac.runtime import decode_step
from hatac.runtime.decode_step import StaticDecodeStep, compiled_decode, runtime_decode_graph
from hatac.runtime.options import DecodeOptions, decode_passes
from models import tiny_model

FUSED = torch.ops.hatac.rope_hash_encode_step_kv.default
LINEAR = torch.ops.hatac.linear.default


@pytest.fixture(scope="module")
def hm():
    return hatac.convert(tiny_model("llama"), hatac.HataConfig(hash="random", budget=0.5, dense_layers=1, rbits=64))


def _targets(gm):
    return [n.target for n in gm.graph.nodes]


def test_the_pass_list_follows_the_options():
    names = lambda o: [type(p) for p in decode_passes(o)]  # noqa: E731
    assert names(DecodeOptions()) == [FuseRoPEEncode, FuseAddRMSNorm, FuseGatedLinear, RouteDecodeLinears]
    assert names(DecodeOptions(rope=False, gated=False)) == [FuseAddRMSNorm, RouteDecodeLinears]
    assert names(DecodeOptions(linears=False, gated=False, norm=False, rope=False)) == []


@torch.no_grad()
def test_other_options_give_another_graph_and_both_stay_cached(hm):
    default = runtime_decode_graph(hm)
    no_rope = runtime_decode_graph(hm, DecodeOptions(rope=False))
    assert FUSED in _targets(default) and FUSED not in _targets(no_rope)
    assert LINEAR in _targets(no_rope)  # the other passes still ran
    assert runtime_decode_graph(hm, DecodeOptions()) is default
    assert runtime_decode_graph(hm, DecodeOptions(rope=False)) is no_rope
    plain = runtime_decode_graph(hm, DecodeOptions(linears=False, gated=False, norm=False, rope=False))
    assert plain is hm.decode_graph  # nothing asked for: the model's own graph
    saved = hm.decode_options
    try:
        hm.decode_options = DecodeOptions(rope=False)  # the model's options are the default for a new step
        assert runtime_decode_graph(hm) is no_rope
    finally:
        hm.decode_options = saved
    assert FUSED not in _targets(hm.decode_graph)  # the saved graph is never rewritten


@torch.no_grad()
def test_the_compiled_step_is_cached_per_options_and_backend(hm):
    a = compiled_decode(hm, "aot_eager")
    b = compiled_decode(hm, "aot_eager", DecodeOptions(norm=False))
    assert a is not b and a is compiled_decode(hm, "aot_eager", DecodeOptions())
    assert b is compiled_decode(hm, "aot_eager", DecodeOptions(norm=False))
    assert compiled_decode(hm, "eager") is not a


@torch.no_grad()
def test_a_step_with_other_options_decodes_the_same(hm):
    ids = torch.randint(3, 300, (2, 9), generator=torch.Generator().manual_seed(1))
    out = {}
    for opts in (DecodeOptions(), DecodeOptions(linears=False, gated=False, norm=False, rope=False)):
        cache = hm.new_cache(capacity=16, static=True)
        hm(ids, cache=cache)
        step = StaticDecodeStep(hm, cache, compile=False, cuda_graph=False, options=opts)
        assert step.options == opts
        out[opts] = step(ids[:, -1:])
    a, b = out.values()
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


def test_the_runtime_passes_run_through_the_pass_manager_which_names_a_failing_one(hm, monkeypatch):
    class BreakTheGraph(RouteDecodeLinears):
        def call(self, gm, ctx=None):
            raise RuntimeError("boom")

    class ReturnNothing(RouteDecodeLinears):
        def call(self, gm, ctx=None):
            return None

    opts = DecodeOptions(gated=False)  # a key no other test caches
    monkeypatch.setattr(decode_step, "decode_passes", lambda o: [FuseRoPEEncode(), BreakTheGraph()])
    with pytest.raises(PassError, match=r"^pass BreakTheGraph failed: RuntimeError: boom$"):
        runtime_decode_graph(hm, opts)
    monkeypatch.setattr(decode_step, "decode_passes", lambda o: [ReturnNothing()])
    with pytest.raises(PassError, match=r"^pass ReturnNothing (failed|returned)"):
        runtime_decode_graph(hm, opts)
    assert opts not in hm.__dict__.get("_runtime_decode_graph", {})  # a failure caches nothing
    seen = []

    class Record(RouteDecodeLinears):
        def call(self, gm, ctx=None):
            seen.append(ctx.mode)
            return PassResult(gm, False)

    monkeypatch.setattr(decode_step, "decode_passes", lambda o: [Record()])
    runtime_decode_graph(hm, opts)
    assert seen == ["decode"]  # the manager gave it a context


def test_options_are_checked_in_one_line(hm):
    with pytest.raises(hatac.HatacError, match=r"^decode option rope must be bool, got 'no'$"):
        DecodeOptions(rope="no")
    with pytest.raises(hatac.HatacError, match=r"^decode options must be a hatac.DecodeOptions, got dict$"):
        hm.decode_options = {"rope": False}
    with pytest.raises(hatac.HatacError, match=r"^decode option kernels must be a KernelOptions or None, got dict$"):
        DecodeOptions(kernels={"pdl": False})


def test_the_model_runs_under_its_kernel_options(hm, monkeypatch):
    from hatac.kernels import options as kernel_options

    seen = []
    real = hm.graphs["decode"].forward

    def spy(*args, **kwargs):
        seen.append(kernel_options.get().hamming_topk.hint)
        return real(*args, **kwargs)

    monkeypatch.setattr(hm.graphs["decode"], "forward", spy)
    saved = hm.decode_options
    ids = torch.randint(3, 300, (1, 5))
    try:
        for kernels in (None, hatac.KernelOptions().replace(hamming_topk={"hint": False})):
            hm.decode_options = DecodeOptions(kernels=kernels)
            cache = hm.new_cache()
            with torch.no_grad():
                hm(ids, cache=cache)
                hm(ids[:, -1:], cache=cache)
    finally:
        hm.decode_options = saved
    assert seen == [True, False] and kernel_options.get().hamming_topk.hint is True


def test_load_takes_decode_options(llama_dir, tmp_path):
    model = hatac.convert(hatac_source(llama_dir), hatac.HataConfig(hash="random", budget=0.5, dense_layers=1, rbits=64))
    hatac.save(model, tmp_path / "art")
    loaded = hatac.load(tmp_path / "art", options=DecodeOptions(rope=False))
    assert loaded.decode_options == DecodeOptions(rope=False)
    assert hatac.load(tmp_path / "art").decode_options == DecodeOptions()
    with pytest.raises(hatac.HatacError, match="^decode options must be a hatac.DecodeOptions, got str$"):
        hatac.load(tmp_path / "art", options="fast")


def hatac_source(folder):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(folder).eval()
