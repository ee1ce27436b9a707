"""The hatac:: ops: registration (opcheck), and the reference semantics every kernel must match."""

import math

import pytest
import torch

from hatac import reference as ref

ops = torch.ops.hatac


def _codes(*shape, gen):
    return torch.randint(-(2**31), 2**31 - 1, shape, dtype=torch.int32, generator=gen)


def test_pack_bits_layout():
    bits = torch.zeros(64, dtype=torch.bool)
    bits[0] = bits[33] = bits[31] = True
    words = ref.pack_bits(bits)
    assert words[0].item() == 1 - 2**31  # bit 0 and bit 31 (the int32 sign bit)
    assert words[1].item() == 2  # bit 33 = word 1, bit 1
    assert torch.equal(ref.unpack_bits(words), bits)


def test_hash_encode_is_sign_of_projection():
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(2, 4, 5, 16, generator=gen)
    w = torch.randn(2, 16, 64, generator=gen)
    codes = ops.hash_encode(x, w)
    assert codes.shape == (2, 4, 5, 2) and codes.dtype == torch.int32
    g = 2
    for h in range(4):
        proj = x[:, h] @ w[h // g]
        assert torch.equal(ref.unpack_bits(codes[:, h]), proj > 0)


def test_hamming_scores_match_xor_popcount():
    gen = torch.Generator().manual_seed(1)
    q, k = _codes(2, 6, 3, 4, gen=gen), _codes(2, 2, 40, 4, gen=gen)
    x = q.view(2, 2, 3, 3, 1, 4) ^ k.view(2, 2, 1, 1, 40, 4)
    brute = ref.popcount32(x).sum((2, 5))
    assert torch.equal(ref.hamming_scores(q, k), brute)
    assert ref.popcount32(torch.tensor([-1, 0, 7], dtype=torch.int32)).tolist() == [32, 0, 3]


@pytest.mark.parametrize("budget,sink,recent,window", [(8, 0, 0, 0), (0.25, 2, 3, 0), (5, 1, 1, 20), (1000, 0, 0, 0)])
def test_hamming_topk_selection(budget, sink, recent, window):
    gen = torch.Generator().manual_seed(2)
    b, hq, hkv, s, t, nw = 2, 4, 2, 3, 64, 2
    q, k = _codes(b, hq, s, nw, gen=gen), _codes(b, hkv, t, nw, gen=gen)
    q_pos = torch.tensor([[5, 30, 40], [63, 10, 0]])
    width = ref.topk_width(t, budget, sink, recent)
    idx = ops.hamming_topk(q, k, q_pos, width, float(budget), sink, recent, window)
    scores = ref.hamming_scores(q, k)
    for bi in range(b):
        for si in range(s):
            hi = int(q_pos[bi, si]) + 1
            lo = max(0, hi - window) if window else 0
            length = hi - lo
            n = min(length, max(int(budget) if budget >= 1 else max(1, math.ceil(budget * length)), sink + recent))
            for g in range(hkv):
                row = idx[bi, g, si]
                chosen = row[row >= 0]
                assert len(chosen) == n and (row[len(chosen):] == -1).all()
                assert torch.equal(chosen, chosen.sort().values), "sorted ascending"
                assert ((chosen >= lo) & (chosen < hi)).all(), "never outside the valid range"
                forced = set(range(lo, lo + min(sink, length))) | set(range(max(lo, hi - recent), hi))
                assert forced <= set(chosen.tolist())
                # the rest are the lowest scores, ties to the lower slot
                rest = [j for j in range(lo, hi) if j not in forced]
                rest.sort(key=lambda j: (int(scores[bi, g, si, j]), j))
                expect = sorted(forced | set(rest[: n - len(forced)])) if n > len(forced) else None
                if expect is not None:
                    assert chosen.tolist() == expect


def test_sparse_attention_over_everything_is_dense_attention():
    gen = torch.Generator().manual_seed(3)
    b, hq, hkv, s, t, d = 2, 6, 2, 3, 20, 16
    q = torch.randn(b, hq, s, d, generator=gen)
    kc, vc = torch.randn(b, hkv, t, d, generator=gen), torch.randn(b, hkv, t, d, generator=gen)
    q_pos = torch.tensor([[4, 9, 19], [0, 1, 2]])
    idx = torch.arange(t).view(1, 1, 1, t).expand(b, hkv, s, t).clone()
    idx = torch.where(idx <= q_pos.view(b, 1, s, 1), idx, -1).to(torch.int32)
    out = ops.sparse_attention(q, kc, vc, idx, 0.25)
    dense = ops.cache_attention(q, kc, vc, q_pos, 0.25, 0)
    torch.testing.assert_close(out, dense, rtol=1e-5, atol=1e-5)
    # nothing selected -> zeros, not NaN
    none = ops.sparse_attention(q, kc, vc, torch.full_like(idx, -1), 0.25)
    assert torch.equal(none, torch.zeros_like(none))


def test_cache_write_scatters_rows():
    cache = torch.zeros(2, 1, 6, 3)
    vals = torch.arange(12.0).view(2, 1, 2, 3)
    ops.cache_write(cache, vals, torch.tensor([[4, 0], [1, 2]]))
    assert torch.equal(cache[0, 0, 4], vals[0, 0, 0]) and torch.equal(cache[0, 0, 0], vals[0, 0, 1])
    assert torch.equal(cache[1, 0, 1:3], vals[1, 0])


def test_hash_encode_step_kv_is_the_writes_then_the_encode_step():
    gen = torch.Generator().manual_seed(5)
    b, hq, hkv, s, t, d = 2, 4, 2, 1, 10, 16
    q, k, v = torch.randn(b, hq, s, d, generator=gen), torch.randn(b, hkv, s, d, generator=gen), torch.randn(b, hkv, s, 8, generator=gen)
    w = torch.randn(hkv, d, 64, generator=gen)
    kc, vc, codes = torch.randn(b, hkv, t, d, generator=gen), torch.randn(b, hkv, t, 8, generator=gen), _codes(b, hkv, t, 2, gen=gen)
    pos = torch.tensor([[7], [2]])
    want = [x.clone() for x in (kc, vc, codes)]
    ops.cache_write(want[0], k, pos)
    ops.cache_write(want[1], v, pos)
    want_q = ops.hash_encode_step(q, k, w, want[2], pos)
    got_q = ops.hash_encode_step_kv(q, k, v, w, kc, vc, codes, pos)
    assert torch.equal(got_q, want_q) and all(torch.equal(a, b) for a, b in zip((kc, vc, codes), want))
    assert torch.equal(kc[0, :, 7], k[0, :, 0]) and torch.equal(vc[1, :, 2], v[1, :, 0])


def test_opcheck_every_op():
    gen = torch.Generator().manual_seed(4)
    b, hq, hkv, s, t, d = 2, 4, 2, 3, 24, 16
    x, w = torch.randn(b, hq, s, d, generator=gen), torch.randn(hkv, d, 64, generator=gen)
    kc, vc = torch.randn(b, hkv, t, d, generator=gen), torch.randn(b, hkv, t, d, generator=gen)
    qc, kcodes = ops.hash_encode(x, w), _codes(b, hkv, t, 2, gen=gen)
    q_pos = torch.tensor([[3, 4, 5], [20, 21, 22]])
    idx = ops.hamming_topk(qc, kcodes, q_pos, 6, 6.0, 1, 1, 0)
    cases = [
        (ops.hash_encode.default, (x, w)),
        (ops.hamming_topk.default, (qc, kcodes, q_pos, 6, 6.0, 1, 1, 0)),
        (ops.hamming_topk.default, (qc, kcodes, q_pos, 6, 6.0, 1, 1, 0, kc, vc)),  # the caches: a prefetch hint
        (ops.sparse_attention.default, (x, kc, vc, idx, 0.25)),
        (ops.cache_attention.default, (x, kc, vc, q_pos, 0.25, 0)),
        (ops.cache_write.default, (kc.clone(), x[:, :hkv], q_pos)),
        (ops.hash_encode_step.default, (x, x[:, :hkv], w, kcodes.clone(), q_pos)),
        (ops.hash_encode_step_kv.default, (x, x[:, :hkv], x[:, hkv:], w, kc.clone(), vc.clone(), kcodes.clone(), q_pos)),
        (ops.rope_hash_encode_step_kv.default, (x, x[:, :hkv], x[:, hkv:], torch.randn(b, s, d, generator=gen),
                                                 torch.randn(b, s, d, generator=gen), w, kc.clone(), vc.clone(),
                                                 kcodes.clone(), q_pos)),
        (ops.rope_hash_encode_step_kv.default, (x, x[:, :hkv], x[:, hkv:], torch.randn(b, s, d // 2, generator=gen),
                                                 torch.randn(b, s, d // 2, generator=gen), w, kc.clone(), vc.clone(),
                                                 kcodes.clone(), q_pos)),  # partial: half of each head rotated
        (ops.linear.default, (x, w[0].t().contiguous())),
        (ops.linear.default, (x, w[0].t().contiguous(), torch.randn(64, generator=gen), 0.25)),
        (ops.linear_silu_mul.default, (x, w[0].t().contiguous())),
        (ops.add_rms_norm.default, (x, torch.randn(b, hq, s, d, generator=gen), torch.rand(d, generator=gen), 1e-6)),
    ]
    for op, args in cases:
        torch.library.opcheck(op, args)
    assert torch.equal(ops.hamming_topk(qc, kcodes, q_pos, 6, 6.0, 1, 1, 0, kc, vc), idx)
