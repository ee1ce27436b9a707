"""Static-shape decoding (preallocated cache, fixed width, compiled step) and chunked prefill."""

import pytest
import torch

import hatac
from hatac.runtime.decode_step import StaticDecodeStep
from models import tiny_model


@pytest.fixture(scope="module")
def hm():
    return hatac.convert(tiny_model("llama"), hatac.HataConfig(hash="random", budget=0.5, dense_layers=2, rbits=64, sink=1))


@torch.no_grad()
def test_chunked_prefill_equals_one_chunk(hm):
    ids = torch.randint(3, 300, (2, 13))
    mask = torch.ones_like(ids)
    mask[0, :3] = 0
    whole = hm(ids, attention_mask=mask, cache=hm.new_cache()).logits
    hm.prefill_chunk = 2 * 128  # 128 tokens a row for this batch of 2
    ids = torch.randint(3, 300, (2, 300))
    mask = torch.ones_like(ids)
    mask[0, :3] = 0
    whole = hm(ids, attention_mask=mask, cache=hm.new_cache()).logits
    try:
        cache = hm.new_cache()
        chunked = hm(ids, attention_mask=mask, cache=cache).logits
    finally:
        hm.prefill_chunk = type(hm).prefill_chunk
    valid = mask.bool()  # padding's logits are filler in both
    torch.testing.assert_close(chunked[valid], whole[valid], rtol=1e-4, atol=1e-4)
    assert cache.host_lengths == [297, 300]


@torch.no_grad()
@pytest.mark.parametrize("compile", [False, True])
def test_static_step_matches_eager_decoding(hm, compile):
    ids = torch.randint(3, 300, (2, 9))
    eager_cache, static_cache = hm.new_cache(), hm.new_cache(capacity=20, static=True)
    hm(ids, cache=eager_cache)
    hm(ids, cache=static_cache)
    torch._dynamo.reset()
    step = StaticDecodeStep(hm, static_cache, compile=compile, cuda_graph=False, backend="aot_eager")
    static_cache.static_step = step
    tok = torch.randint(3, 300, (2, 1))
    for _ in range(6):
        want = hm(tok, cache=eager_cache).logits
        got = hm(tok, cache=static_cache).logits
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)
        tok = want[:, -1:].argmax(-1)
    assert static_cache.host_lengths == eager_cache.host_lengths == [15, 15]
    assert static_cache.lengths.tolist() == [15, 15] and static_cache.capacity == 20


def test_static_cache_refuses_to_grow(hm):
    cache = hm.new_cache(capacity=8, static=True)
    with pytest.raises(ValueError, match="static cache"):
        hm(torch.randint(3, 300, (1, 12)), cache=cache)


@torch.no_grad()
def test_compiled_step_is_reused_across_cache_shapes(hm):
    """One compiled decode function per model: new caches (batch, capacity) reuse it, with at most one
    recompile to dynamic shapes, so a sweep never falls back to eager at dynamo's recompile limit."""
    from hatac.runtime.decode_step import compiled_decode

    torch._dynamo.reset()
    hm.__dict__.pop("_compiled_decode", None)
    torch._dynamo.utils.counters.clear()
    fns = []
    for b, n in [(2, 9), (3, 14), (4, 11), (3, 20)]:
        ids = torch.randint(3, 300, (b, n))
        eager, static = hm.new_cache(), hm.new_cache(capacity=n + 4, static=True)
        hm(ids, cache=eager)
        hm(ids, cache=static)
        step = StaticDecodeStep(hm, static, compile=True, cuda_graph=False, backend="aot_eager")
        fns.append(step.fn)
        tok = torch.randint(3, 300, (b, 1))
        torch.testing.assert_close(step(tok), hm(tok, cache=eager).logits, rtol=1e-4, atol=1e-4)
    assert all(f is compiled_decode(hm, "aot_eager") for f in fns)
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] == 2
