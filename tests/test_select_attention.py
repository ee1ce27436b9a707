"""FuseSelectAttention (recipe ``fuse_select``): hamming_topk feeding sparse_attention becomes one
``hatac::topk_attention`` in decode graphs, with the same values."""

import torch
import torch.fx as fx

import hatac
from hatac.passes.base import DECODE, PassContext
from hatac.passes.fusions import FuseSelectAttention
from models import tiny_model

ops = torch.ops.hatac
CFG = dict(hash="random", budget=6, dense_layers=1, rbits=64)


def _count(gm, op) -> int:
    return sum(1 for n in gm.graph.nodes if n.target is op)


def test_fused_decode_graph_computes_what_the_pair_does():
    torch.manual_seed(3)
    ids = torch.randint(0, 300, (2, 24))
    model = tiny_model("llama")
    pair = hatac.convert(model, hatac.HataConfig(**CFG, fuse_select=False))
    fused = hatac.convert(model, hatac.HataConfig(**CFG), hash_weights=pair.hash_weights)
    hashed = model.config.num_hidden_layers - 1
    assert _count(pair.decode_graph, ops.hamming_topk.default) == hashed
    assert _count(fused.decode_graph, ops.topk_attention.default) == hashed
    assert _count(fused.decode_graph, ops.hamming_topk.default) == 0
    assert _count(fused.decode_graph, ops.sparse_attention.default) == 0
    assert _count(fused.prefill_graph, ops.topk_attention.default) == 0  # prefill attends densely
    node = next(n for n in fused.decode_graph.graph.nodes if n.target is ops.topk_attention.default)
    assert node.meta.get("hatac_layer") == 1 and "nn_module_stack" in node.meta
    with torch.no_grad():
        want = pair(ids, past_key_values=pair.new_cache(), hata_mode="decode").logits
        got = fused(ids, past_key_values=fused.new_cache(), hata_mode="decode").logits
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    assert fused.recipe.fuse_select and not pair.recipe.fuse_select


def _pair_graph(write_between: bool) -> fx.GraphModule:
    """A hand-made decode graph: select, (optionally) a write into the code cache, attend."""
    g = fx.Graph()
    q, qc, kc, kv, vv, pos, new = (g.placeholder(n) for n in ("q", "qc", "kc", "kv", "vv", "pos", "new"))
    idx = g.call_function(ops.hamming_topk.default, (qc, kc, pos, 4, 4.0))
    if write_between:
        g.call_function(ops.cache_write.default, (kc, new, pos))
    out = g.call_function(ops.sparse_attention.default, (q, kv, vv, idx, 0.5))
    g.output(out)
    return fx.GraphModule(torch.nn.Module(), g)


def test_pair_is_left_alone_when_its_inputs_are_written_between():
    ctx = PassContext(config=hatac.HataConfig(**CFG), model=torch.nn.Module(), mode=DECODE)
    fused = FuseSelectAttention()(_pair_graph(False), ctx)
    assert fused.modified and _count(fused.graph_module, ops.topk_attention.default) == 1
    kept = FuseSelectAttention()(_pair_graph(True), ctx)
    assert not kept.modified and _count(kept.graph_module, ops.hamming_topk.default) == 1
