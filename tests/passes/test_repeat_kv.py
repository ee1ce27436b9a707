"""StripRepeatKV must find the KV heads behind transformers' repeat_kv in every form torch exports it.

Missing it is silent (results stay right) but costs G times the cache memory: torch 2.11's export keeps
the full-range slices of ``x[:, :, None, :, :]`` around the unsqueeze, which an exact-pattern match missed.
"""

import pytest
import torch
from torch.fx.experimental.proxy_tensor import make_fx

import hatac
from hatac.passes.rewrite.repeat_kv import strip_repeat_kv
from models import tiny_model

aten = torch.ops.aten
BIG = 9223372036854775807


def _plain(x):
    b, h, s, d = x.shape
    return aten.reshape.default(aten.expand.default(aten.unsqueeze.default(x, 2), [b, h, 4, s, d]), [b, h * 4, s, d])


def _torch211(x):
    """The form torch 2.11 exports: no-op slices before and after the unsqueeze."""
    b, h, s, d = x.shape
    y = aten.slice.Tensor(aten.slice.Tensor(x, 0, 0, BIG), 1, 0, BIG)
    y = aten.unsqueeze.default(y, 2)
    y = aten.slice.Tensor(aten.slice.Tensor(y, 3, 0, BIG), 4, 0, BIG)
    return aten.reshape.default(aten.expand.default(y, [b, h, 4, s, d]), [b, h * 4, s, d])


def _view_form(x):
    b, h, s, d = x.shape
    return aten.reshape.default(aten.expand.default(aten.view.default(x, [b, h, 1, s, d]), [b, h, 4, s, d]), [b, h * 4, s, d])


def _not_a_repeat(x):
    """A slice that drops tokens between the expand and the reshape is no identity: nothing may be stripped."""
    b, h, s, d = x.shape
    y = aten.expand.default(aten.unsqueeze.default(x, 2), [b, h, 4, s, d])
    return aten.reshape.default(aten.slice.Tensor(y, 3, 1, BIG), [b, h * 4, s - 1, d])


def _graph(fn):
    gm = make_fx(fn, tracing_mode="fake")(torch.randn(2, 2, 5, 8))
    x = next(n for n in gm.graph.nodes if n.op == "placeholder")
    out = next(n for n in gm.graph.nodes if n.op == "output").args[0]
    out = out[0] if isinstance(out, (tuple, list)) else out
    return x, out


@pytest.mark.parametrize("fn", [_plain, _torch211, _view_form])
def test_strips_every_export_form(fn):
    x, out = _graph(fn)
    assert strip_repeat_kv(out) is x


def test_keeps_what_is_not_a_repeat():
    x, out = _graph(_not_a_repeat)
    assert strip_repeat_kv(out) is out


def test_caches_hold_the_config_kv_heads():
    model = tiny_model("llama")
    hm = hatac.convert(model, hatac.HataConfig(hash="random"))
    assert {s.n_kv_heads for s in hm.layers.values()} == {model.config.num_key_value_heads}
    assert model.config.num_key_value_heads < model.config.num_attention_heads
