"""FuseSiblingLinears (recipe ``fuse_linears``): q/k/v and gate/up as one GEMM each, on a stacked weight that
the model's own parameters are views of."""

import pytest
import torch

import hatac
from hatac.errors import HatacError
from hatac.passes.fusion.sibling_linears import PREFIX, stack_rows
from models import tiny_model

aten = torch.ops.aten
CFG = dict(hash="random", budget=6, dense_layers=1, rbits=64)


def _linears(gm) -> int:
    return sum(1 for n in gm.graph.nodes if n.target == aten.linear.default)


def _stacked(gm) -> dict[str, torch.Tensor]:
    return {name: t for name, t in gm.named_buffers() if name.startswith(PREFIX)}


# per layer: q/k/v 3 -> 1 and gate/up 2 -> 1; Phi-3 has fused qkv_proj and gate_up_proj already.
@pytest.mark.parametrize("arch,saved_per_layer", [("llama", 3), ("qwen2", 3), ("phi3", 0)])
def test_stacked_graphs_compute_what_the_separate_linears_do(arch, saved_per_layer):
    torch.manual_seed(1)
    ids = torch.randint(0, 300, (2, 24))
    model = tiny_model(arch)
    plain = hatac.convert(model, hatac.HataConfig(**CFG, fuse_linears=False))
    with torch.no_grad():
        want_prefill = plain(ids).logits
        want_decode = plain(ids, cache=plain.new_cache(), hata_mode="decode").logits
    stacked = hatac.convert(model, hatac.HataConfig(**CFG), hash_weights=plain.hash_weights)
    layers = model.config.num_hidden_layers
    for gm in (stacked.prefill_graph, stacked.decode_graph):
        assert _linears(gm) == _linears(plain.decode_graph) - saved_per_layer * layers
        if saved_per_layer:
            split = [n for n in gm.graph.nodes if n.target == aten.split_with_sizes.default]
            assert len(split) == 2 * layers and all("val" in n.meta for n in split)
    with torch.no_grad():
        got_prefill = stacked(ids).logits
        got_decode = stacked(ids, cache=stacked.new_cache(), hata_mode="decode").logits
    torch.testing.assert_close(got_prefill, want_prefill, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(got_decode, want_decode, rtol=1e-5, atol=1e-5)


def test_parameters_become_views_of_one_stacked_weight_shared_by_every_graph():
    model = tiny_model("qwen2")  # q/k/v with biases
    before = {k: v.clone() for k, v in model.state_dict().items()}
    hm = hatac.convert(model, hatac.HataConfig(**CFG))
    attn = model.model.layers[1].self_attn
    prefill, decode = _stacked(hm.prefill_graph), _stacked(hm.decode_graph)
    assert len(prefill) == len(decode) == 3 * model.config.num_hidden_layers  # qkv weight, qkv bias, gate/up
    # The decode graph, built second, found the weights already stacked: same memory, nothing copied.
    assert sorted(t.data_ptr() for t in prefill.values()) == sorted(t.data_ptr() for t in decode.values())
    qkv = next(t for t in decode.values() if t.data_ptr() == attn.q_proj.weight.data_ptr() and t.dim() == 2)
    assert torch.equal(qkv, torch.cat([attn.q_proj.weight, attn.k_proj.weight, attn.v_proj.weight]))
    assert attn.v_proj.weight.untyped_storage().data_ptr() == qkv.untyped_storage().data_ptr()
    after = model.state_dict()
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)
    assert not any(k.startswith(PREFIX) for k in hm.state_dict())  # not saved: the weights are


def test_stack_rows_views_in_place_and_reuses_adjacent_tensors():
    a, b = torch.nn.Parameter(torch.randn(3, 4)), torch.nn.Parameter(torch.randn(2, 4))
    va, vb = a.detach().clone(), b.detach().clone()
    s = stack_rows([a, b])
    assert torch.equal(s, torch.cat([va, vb])) and a.data_ptr() == s.data_ptr()
    with torch.no_grad():
        b.add_(1)  # an in-place update of a parameter reaches the stacked weight
    assert torch.equal(s[3:], vb + 1)
    again = stack_rows([a, b])
    assert again.data_ptr() == s.data_ptr() and torch.equal(again, s)
    other = stack_rows([b, a])  # not adjacent in this order: a new stack, parameters re-pointed
    assert torch.equal(other, torch.cat([vb + 1, va])) and b.data_ptr() == other.data_ptr()


def test_saved_artifact_keeps_every_weight_and_loads_equal(tmp_path):
    torch.manual_seed(2)
    ids = torch.randint(0, 300, (1, 20))
    model = tiny_model("llama")
    hm = hatac.convert(model, hatac.HataConfig(**CFG))
    hatac.save(hm, tmp_path / "a")
    loaded = hatac.load(tmp_path / "a", device="cpu")
    want = model.state_dict()
    got = loaded.hf_model.state_dict()
    assert want.keys() == got.keys() and all(torch.equal(want[k], got[k]) for k in want)
    with torch.no_grad():
        torch.testing.assert_close(loaded(ids).logits, hm(ids).logits, rtol=0, atol=0)


def test_a_converted_model_refuses_to_move_with_a_clear_error():
    hm = hatac.convert(tiny_model("llama"), hatac.HataConfig(**CFG))
    hm.to("cpu")  # a move that changes nothing is fine
    hm.to(torch.float32)
    for move in (lambda: hm.to(torch.bfloat16), lambda: hm.half(), lambda: hm.to("meta")):
        with pytest.raises(HatacError, match="captured on"):
            move()
    assert hm.hf_model.model.layers[0].self_attn.q_proj.weight.dtype == torch.float32  # refused before moving
