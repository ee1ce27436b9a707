"""Kernel options: typed, frozen, one current value that override() changes and restores."""

from __future__ import annotations

import dataclasses

import pytest

from hatac.errors import HatacError
from hatac.kernels import options
from hatac.kernels.options import HammingTopkOptions, KernelOptions


def test_defaults_are_the_kernels_tuning():
    o = KernelOptions()
    assert o.pdl is True
    assert (o.hamming_topk.hint, o.hamming_topk.kv_prefetch, o.hamming_topk.score_l2_prefetch) == (True, True, 1024)
    assert (o.hamming_topk.score_block_t, o.hamming_topk.select_block_t, o.hamming_topk.hint_window) == (512, 1024, 2)
    assert (o.linear.max_rows, o.linear.min_wave_fill, o.linear.gated.block_k) == (16, 0.9, 128)
    assert (o.sparse_attention.programs, o.dense_attention.programs) == (528, 66)
    assert hash(o) == hash(KernelOptions())  # frozen and hashable: usable in cache keys
    with pytest.raises(dataclasses.FrozenInstanceError):
        o.pdl = False


def test_override_restores_the_previous_options_even_on_an_exception():
    before = options.get()
    with pytest.raises(RuntimeError, match="inside"):
        with options.override(pdl=False, hamming_topk={"hint": False}) as now:
            assert now is options.get()
            assert (now.pdl, now.hamming_topk.hint, now.hamming_topk.kv_prefetch) == (False, False, True)
            with options.override(hamming_topk={"hint_window": 1}):
                assert (options.get().pdl, options.get().hamming_topk.hint_window) == (False, 1)
            assert options.get().hamming_topk.hint_window == 2
            raise RuntimeError("inside")
    assert options.get() is before


def test_override_as_a_call_returns_the_previous_options():
    before = options.get()
    o = options.override(KernelOptions(pdl=False))
    try:
        assert o.previous is before and options.get() == KernelOptions(pdl=False)
    finally:
        o.restore()
    assert options.get() is before


@pytest.mark.parametrize("changes,message", [
    ({"pdll": False}, r"^unknown kernel option kernels\.pdll: choose from pdl, hamming_topk, "),
    ({"hamming_topk": {"hints": False}}, r"^unknown kernel option hamming_topk\.hints: choose from "),
    ({"pdl": "0"}, r"^kernel option kernels\.pdl must be bool, got '0'$"),
    ({"hamming_topk": {"hint": 1}}, r"^kernel option hamming_topk\.hint must be bool, got 1$"),
    ({"hamming_topk": {"score_l2_prefetch": "1024"}}, r"^kernel option hamming_topk\.score_l2_prefetch must be int, got '1024'$"),
    ({"hamming_topk": {"split_round": "sideways"}}, r"^kernel option hamming_topk\.split_round must be one of 'up', 'down', got 'sideways'$"),
    ({"linear": {"gated": {"warps": 2.5}}}, r"^kernel option linear\.gated\.warps must be int, got 2\.5$"),
    ({"hamming_topk": HammingTopkOptions}, r"^kernel option kernels\.hamming_topk must be HammingTopkOptions, got <class"),
])
def test_override_rejects_unknown_fields_and_bad_values_in_one_line(changes, message):
    before = options.get()
    with pytest.raises(HatacError, match=message) as info:
        options.override(**changes)
    assert "\n" not in str(info.value)
    assert options.get() is before  # nothing changed


def test_a_group_may_be_replaced_whole():
    with options.override(hamming_topk=HammingTopkOptions(hint=False)) as now:
        assert now.hamming_topk == HammingTopkOptions(hint=False) and now.linear == KernelOptions().linear
    with options.override(hamming_topk={"select_warps": 2, "score_maxnreg": None}) as now:
        assert (now.hamming_topk.select_warps, now.hamming_topk.score_maxnreg) == (2, None)
