"""Conversion and decoding on tiny random-weight models of several architectures."""

import warnings

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

import hatac
from hatac.errors import HatacError
from models import ARCHS, tiny_model

ops = torch.ops.hatac
FULL = 100_000  # a budget covering the whole context


def _hatac_ops(gm):
    return [str(n.target) for n in gm.graph.nodes if str(n.target).startswith("hatac.")]


@pytest.fixture(scope="module")
def llama():
    m = tiny_model("llama")
    return m, hatac.convert(m, hatac.HataConfig(hash="random", budget=FULL, dense_layers=2, rbits=64))


@pytest.mark.parametrize("arch", sorted(ARCHS))
def test_architecture_full_budget_equals_dense_and_padding(arch):
    """Every attention node is rewritten; with the budget covering the context, greedy decoding is the
    dense model's token for token; a left-padded row decodes as it would alone."""
    model = tiny_model(arch)
    hm = hatac.convert(model, hatac.HataConfig(hash="random", budget=FULL, dense_layers=1, rbits=64))
    n_layers = model.config.num_hidden_layers
    decode_ops = _hatac_ops(hm.decode_graph)
    assert decode_ops.count("hatac.sparse_attention.default") == n_layers - 1
    assert decode_ops.count("hatac.hamming_topk.default") == n_layers - 1
    assert decode_ops.count("hatac.cache_attention.default") == 1
    assert not any("scaled_dot_product" in str(n.target) for n in hm.decode_graph.graph.nodes)
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(3, model.config.vocab_size, (2, 12), generator=g)
    mask = torch.ones_like(ids)
    mask[1, :4] = 0
    kw = dict(max_new_tokens=10, do_sample=False, pad_token_id=0)
    dense = model.generate(ids, attention_mask=mask, **kw)
    ours = hm.generate(ids, attention_mask=mask, **kw)
    assert torch.equal(ours, dense)
    alone = hm.generate(ids[1:, 4:], **kw)
    assert torch.equal(ours[1, 4:], alone[0])


@pytest.mark.parametrize("name", ["cache", "past_key_values", None])
def test_generate_carries_its_cache_through_every_step_without_warnings(llama, name):
    """generate() hands the same HataCache to every decode step under the name this transformers version
    uses (``cache`` from 5.24, ``past_key_values`` before), whether the caller passes one under either
    name or none; greedy tokens equal the dense model's at full budget; no deprecation warning."""
    model, hm = llama
    from hatac.runtime.model import CACHE_KWARG

    ids = torch.randint(3, model.config.vocab_size, (2, 9), generator=torch.Generator().manual_seed(1))
    kw = dict(max_new_tokens=7, do_sample=False, pad_token_id=0)
    cache = hm.new_cache()
    seen = []
    hook = hm.register_forward_pre_hook(lambda mod, args, kwargs: seen.append(kwargs.get(CACHE_KWARG)), with_kwargs=True)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            out = hm.generate(ids, **kw, **({name: cache} if name else {}))
    finally:
        hook.remove()
    assert torch.equal(out, model.generate(ids, **kw))
    assert len(seen) == 7 and all(c is seen[0] for c in seen) and seen[0] is not None
    if name:
        assert seen[0] is cache and cache.get_seq_length() == 9 + 7 - 1
    assert not [w for w in caught if issubclass(w.category, (FutureWarning, DeprecationWarning)) and "past_key_values" in str(w.message)]


def test_forward_takes_the_cache_under_either_name_once(llama):
    model, hm = llama
    ids = torch.randint(3, model.config.vocab_size, (1, 6))
    a, b = hm.new_cache(), hm.new_cache()
    out_a = hm(ids, cache=a).logits
    out_b = hm(ids, past_key_values=b).logits
    torch.testing.assert_close(out_a, out_b)
    assert a.get_seq_length() == b.get_seq_length() == 6
    with pytest.raises(ValueError, match="pass the cache once"):
        hm(ids, cache=a, past_key_values=b)


def test_selection_is_handed_the_caches_its_attention_reads(llama):
    """Each decode hamming_topk gets, as its prefetch hint, the very K/V caches its sparse_attention gathers."""
    _, hm = llama
    tops = [n for n in hm.decode_graph.graph.nodes if "hamming_topk" in str(n.target)]
    assert tops
    for node in tops:
        (attn,) = [u for u in node.users if "sparse_attention" in str(u.target)]
        k_cache, v_cache = node.args[8:10]
        assert (k_cache, v_cache) == attn.args[1:3]


def test_gqa_and_head_dims_are_covered():
    dims = {tiny_model(a).config.head_dim if getattr(tiny_model(a).config, "head_dim", None) else None for a in ("llama", "llama-hd128")}
    assert dims == {64, 128}
    for arch in ARCHS:
        cfg = tiny_model(arch).config
        assert cfg.num_key_value_heads < cfg.num_attention_heads


def test_soft_capping_is_refused_naming_layer_and_node():
    model = tiny_model("gemma2-softcap")
    with pytest.raises(HatacError, match=r"cannot rewrite layer 0 \(model\.layers\.0\.self_attn\), node \w+: .*soft-capping"):
        hatac.convert(model, hatac.HataConfig(hash="random"))


class _CountEncodes(TorchDispatchMode):
    """Counts rows hash-encoded, split by head count (keys have H_kv heads, queries H_q); the fused decode
    ops ``hash_encode_step(q, k, ...)`` and ``hash_encode_step_kv(q, k, ...)`` encode both their query and
    their new key."""

    def __init__(self):
        super().__init__()
        self.rows = {}

    def _add(self, x):
        self.rows[x.shape[1]] = self.rows.get(x.shape[1], 0) + x.shape[0] * x.shape[2]

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func is ops.hash_encode.default:
            self._add(args[0])
        elif func in (ops.hash_encode_step.default, ops.hash_encode_step_kv.default):
            self._add(args[0])
            self._add(args[1])
        return func(*args, **(kwargs or {}))


def test_key_codes_are_computed_once_per_key(llama):
    model, hm = llama
    cfg = model.config
    hashed = sum(s.hashed for s in hm.layers.values())
    ids = torch.randint(3, cfg.vocab_size, (2, 9))
    counter = _CountEncodes()
    with counter:
        hm.generate(ids, max_new_tokens=6, do_sample=False, pad_token_id=0)
    fed = 9 + 6 - 1  # the prompt, then every generated token but the last
    assert counter.rows[cfg.num_key_value_heads] == 2 * fed * hashed
    # the query is encoded only in decode steps, one row per step
    assert counter.rows[cfg.num_attention_heads] == 2 * (6 - 1) * hashed


class _RecordSelections(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.kept = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if func is ops.hamming_topk.default:
            self.kept.append(((out >= 0).sum(-1), args[2]))
        return out


@pytest.mark.parametrize("budget", [0.25, 5])
def test_budget_fraction_or_count(budget):
    model = tiny_model("llama")
    hm = hatac.convert(model, hatac.HataConfig(hash="random", budget=budget, dense_layers=2, rbits=64, sink=1, recent=1))
    rec = _RecordSelections()
    with rec:
        hm.generate(torch.randint(3, 300, (1, 30)), max_new_tokens=4, do_sample=False, pad_token_id=0)
    assert rec.kept
    for kept, q_pos in rec.kept:
        length = int(q_pos.max()) + 1
        want = min(length, budget if budget >= 1 else max(1, -(-length // 4)))
        assert (kept == want).all(), (kept, want, length)


def test_sparse_budget_changes_attention_but_decodes(llama):
    model, _ = llama
    hm = hatac.convert(model, hatac.HataConfig(hash="random", budget=4, dense_layers=2, rbits=64))
    ids = torch.randint(3, 300, (1, 40))
    out = hm(ids, cache=hm.new_cache()).logits
    assert torch.isfinite(out).all()
    torch.manual_seed(0)
    sampled = hm.generate(ids, max_new_tokens=5, do_sample=True, top_k=20, pad_token_id=0)
    assert sampled.shape == (1, 45)


def test_one_pass_top_k_equals_token_by_token_decoding():
    """The decode graph run on a whole text (top-k at every position, causal per query) gives the same
    logits as feeding the tokens one at a time: the basis of hatac eval's one-pass perplexity."""
    model = tiny_model("qwen3")
    hm = hatac.convert(model, hatac.HataConfig(hash="random", budget=0.3, dense_layers=1, rbits=64, sink=1))
    ids = torch.randint(3, 300, (1, 24))
    one_pass = hm(ids, cache=hm.new_cache(), hata_mode="decode").logits
    cache = hm.new_cache()
    steps = torch.cat([hm(ids[:, i : i + 1], cache=cache).logits for i in range(ids.shape[1])], dim=1)
    torch.testing.assert_close(one_pass, steps, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("backend", ["aot_eager", pytest.param("inductor", marks=pytest.mark.slow)])
@torch.no_grad()
def test_decode_step_compiles_fullgraph_and_matches_eager(llama, backend):
    model, _ = llama
    hm = hatac.convert(model, hatac.HataConfig(hash="random", budget=6, dense_layers=2, rbits=64))
    ids = torch.randint(3, 300, (2, 10))
    cache = hm.new_cache(capacity=32)
    hm(ids, cache=cache)
    nxt = torch.randint(3, 300, (2, 1))
    inputs, _, _ = hm.step_inputs(cache, nxt, None, "decode", 1)
    snapshot = {k: v.clone() for k, v in cache.tensors.items()}
    eager = hm.decode_graph(**inputs)
    for k, v in snapshot.items():  # undo the eager step's cache writes
        cache.tensors[k].copy_(v)
    torch._dynamo.reset()
    compiled = torch.compile(hm.decode_graph, fullgraph=True, backend=backend)
    out = compiled(**inputs)
    torch.testing.assert_close(out, eager, rtol=1e-5, atol=1e-5)
    for k in snapshot:  # the compiled step wrote the new token's K, V and code like eager did
        assert not torch.equal(cache.tensors[k], snapshot[k])
