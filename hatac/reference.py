"""Vectorized PyTorch references for hatac's ops.

These are the CPU implementations of the ``hatac::`` ops and the ground truth every Triton kernel is
checked against. No Python loop runs over tokens or heads; loops only walk fixed-size chunks of query
rows to bound memory on long contexts.

Shapes (B batch, H/Hq query heads, Hkv KV heads, G = Hq // Hkv, S query rows, T cache slots, D head
dim, R hash bits, NW = R // 32 code words, K selection width):

- keys and values live in caches of shape (B, Hkv, T, D); key codes in (B, Hkv, T, NW) int32;
- a query row s of batch row b sits at position ``q_pos[b, s]``; it may attend to cache slots
  ``0 .. q_pos[b, s]`` (inclusive), minus those outside a sliding ``window`` when one is set.
"""

from __future__ import annotations

import math

import torch

WORD_BITS = 32
# Query rows per chunk in the references: bounds the (rows x T) score tiles on long contexts.
_ROW_CHUNK = 256
# Selected K/V rows copied at once by sparse_attention's reference.
_GATHER_ROWS = 32768


def _bit_weights(device: torch.device) -> torch.Tensor:
    """2**j for j in 0..31 as int64, with bit 31 folded to the int32 sign bit."""
    w = torch.ones(WORD_BITS, dtype=torch.int64, device=device) << torch.arange(WORD_BITS, device=device)
    return w


def pack_bits(bits: torch.Tensor) -> torch.Tensor:
    """Pack a (..., R) boolean tensor into (..., R // 32) int32 words: bit j of word c is bits[c*32 + j]."""
    r = bits.shape[-1]
    if r % WORD_BITS:
        raise ValueError(f"hash bits must be a multiple of 32, got {r}")
    words = bits.reshape(*bits.shape[:-1], r // WORD_BITS, WORD_BITS).to(torch.int64)
    packed = (words * _bit_weights(bits.device)).sum(-1)
    # Values are in [0, 2**32); reinterpret as two's-complement int32.
    packed = torch.where(packed >= 2**31, packed - 2**32, packed)
    return packed.to(torch.int32)


def unpack_bits(codes: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`pack_bits`: (..., NW) int32 -> (..., NW * 32) bool."""
    shifts = torch.arange(WORD_BITS, device=codes.device, dtype=torch.int32)
    bits = (codes.unsqueeze(-1) >> shifts) & 1
    return bits.reshape(*codes.shape[:-1], codes.shape[-1] * WORD_BITS).bool()


def popcount32(x: torch.Tensor) -> torch.Tensor:
    """Population count of int32 words (SWAR), returned as int32."""
    v = x.to(torch.int64) & 0xFFFFFFFF
    v = v - ((v >> 1) & 0x55555555)
    v = (v & 0x33333333) + ((v >> 2) & 0x33333333)
    v = (v + (v >> 4)) & 0x0F0F0F0F
    return ((v * 0x01010101) & 0xFFFFFFFF).__rshift__(24).to(torch.int32)


def hash_encode(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """sign(x @ W) packed into int32 words.

    x: (B, H, S, D); w: (Hkv, D, R) with H a multiple of Hkv; head h uses w[h // (H // Hkv)].
    A projection > 0 gives bit 1, <= 0 gives bit 0. Returns (B, H, S, R // 32) int32.
    """
    b, h, s, d = x.shape
    hkv, d_w, r = w.shape
    if d != d_w or h % hkv:
        raise ValueError(f"hash_encode: x {tuple(x.shape)} does not fit W {tuple(w.shape)}")
    g = h // hkv
    xg = x.float().reshape(b, hkv, g * s, d)
    proj = torch.matmul(xg, w.float().unsqueeze(0))  # (B, Hkv, G*S, R)
    return pack_bits(proj > 0).reshape(b, h, s, r // WORD_BITS)



def hash_encode_step(
    q: torch.Tensor, k: torch.Tensor, w: torch.Tensor, k_codes: torch.Tensor, write_pos: torch.Tensor
) -> torch.Tensor:
    """One decode step of hashing: encode the new keys into the code cache at ``write_pos`` (in place) and
    return the query codes. q: (B, Hq, S, D); k: (B, Hkv, S, D); k_codes: (B, Hkv, T, R // 32) int32;
    write_pos: (B, S). Exactly ``cache_write(k_codes, hash_encode(k, w), write_pos); hash_encode(q, w)``:
    one op so that a fusion pass can hand both encodings to one GPU launch."""
    cache_write(k_codes, hash_encode(k, w), write_pos)
    return hash_encode(q, w)


def hash_encode_step_kv(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, w: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
    k_codes: torch.Tensor, write_pos: torch.Tensor,
) -> torch.Tensor:
    """A decode step's cache writes and hashing in one op: exactly ``cache_write(k_cache, k, write_pos);
    cache_write(v_cache, v, write_pos); hash_encode_step(q, k, w, k_codes, write_pos)``, so that a GPU
    backend writes the new key and value rows in the launch that encodes them."""
    cache_write(k_cache, k, write_pos)
    cache_write(v_cache, v, write_pos)
    return hash_encode_step(q, k, w, k_codes, write_pos)


def rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotary position embedding in the rotate-half form (Llama, Qwen, Mistral, Gemma, Phi-3):
    ``r * cos + cat(-r2, r1) * sin`` for the first R dims r = [r1 | r2] of x's last dim, the rest of x passed
    through (R = D but for partial rotary embeddings). x: (B, H, S, D); cos, sin: (B, S, R), shared by the
    heads. Float32 arithmetic and one rounding to x's dtype, as a compiled graph computes it; the result is
    contiguous."""
    rot = cos.shape[-1]
    c, s = cos.float().unsqueeze(1), sin.float().unsqueeze(1)
    r = x[..., :rot].float()
    r1, r2 = r.chunk(2, dim=-1)
    out = (r * c + torch.cat((-r2, r1), dim=-1) * s).to(x.dtype)
    return torch.cat((out, x[..., rot:]), dim=-1).contiguous()


def rope_hash_encode_step_kv(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, w: torch.Tensor,
    k_cache: torch.Tensor, v_cache: torch.Tensor, k_codes: torch.Tensor, write_pos: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`hash_encode_step_kv` of the rotated query and key: ``(q_codes, rope(q))``, with ``rope(k)`` and
    ``v`` written into the caches and ``rope(k)``'s codes into ``k_codes``."""
    q_rot = rope(q, cos, sin)
    return hash_encode_step_kv(q_rot, rope(k, cos, sin), v, w, k_cache, v_cache, k_codes, write_pos), q_rot


def linear_silu_mul(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """``SiLU(g) * u`` for ``[g | u] = x @ weight^T`` (weight = [gate; up] rows), as a gated MLP's graph
    computes it: the linear's output rounded, then SiLU's, then the product."""
    gate, up = torch.nn.functional.linear(x, weight).chunk(2, dim=-1)
    return torch.nn.functional.silu(gate) * up


def add_rms_norm(x: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor, eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    """``(s, weight * RMSNorm(s))`` for ``s = x + residual``, as a Llama-style decoder computes them: float32
    statistics over the last dim, the normalized row cast back to s's dtype, then the weight."""
    s = x + residual
    sf = s.float()
    return s, weight * (sf * torch.rsqrt(sf.pow(2).mean(-1, keepdim=True) + eps)).to(s.dtype)

def keep_counts(lengths: torch.Tensor, budget: float, sink: int, recent: int) -> torch.Tensor:
    """Tokens each query keeps: a fraction of its valid length (budget < 1) or a count (>= 1).

    Forced sink and recent tokens count inside the budget; when they alone exceed it they are all kept.
    Never more than the valid length, and at least one token when any is valid.
    """
    lengths = lengths.to(torch.int64)
    if budget >= 1:
        want = torch.full_like(lengths, int(budget))
    else:
        want = torch.ceil(lengths.to(torch.float64) * budget).to(torch.int64).clamp_min(1)
    want = torch.maximum(want, torch.full_like(lengths, sink + recent))
    return torch.minimum(want, lengths)


def topk_width(max_length: int, budget: float, sink: int = 0, recent: int = 0) -> int:
    """The selection width K that holds every row's keep count for contexts up to ``max_length``."""
    want = int(budget) if budget >= 1 else max(1, math.ceil(max_length * budget))
    return max(1, min(max_length, max(want, sink + recent)))


def valid_range(q_pos: torch.Tensor, window: int) -> tuple[torch.Tensor, torch.Tensor]:
    """First valid slot and valid length for each query: slots [lo, q_pos] are attendable."""
    hi = q_pos.to(torch.int64) + 1
    lo = (hi - window).clamp_min(0) if window > 0 else torch.zeros_like(hi)
    return lo, hi - lo


def hamming_scores(q_codes: torch.Tensor, k_codes: torch.Tensor) -> torch.Tensor:
    """Sum over each KV head's G query heads of popcount(q_code XOR k_code).

    q_codes: (B, Hq, S, NW); k_codes: (B, Hkv, T, NW). Returns (B, Hkv, S, T) int32.
    Computed exactly as sum|q| + G*|k| - 2 * (sum_j q_j) . k over {0, 1} bits (integers < 2**24 are exact
    in float32), which is a matmul rather than a (S x T x G x NW) XOR tensor.
    """
    b, hq, s, nw = q_codes.shape
    hkv, t = k_codes.shape[1], k_codes.shape[2]
    g = hq // hkv
    qb = unpack_bits(q_codes).float().reshape(b, hkv, g, s, nw * WORD_BITS)
    kb = unpack_bits(k_codes).float()  # (B, Hkv, T, R)
    q_sum = qb.sum(2)  # (B, Hkv, S, R): how many of the G heads have each bit set
    q_pop = qb.sum((2, 4))  # (B, Hkv, S)
    k_pop = kb.sum(-1)  # (B, Hkv, T)
    dot = torch.matmul(q_sum, kb.transpose(-1, -2))  # (B, Hkv, S, T)
    scores = q_pop.unsqueeze(-1) + g * k_pop.unsqueeze(-2) - 2 * dot
    return scores.round().to(torch.int32)


def select_topk(
    scores: torch.Tensor,
    q_pos: torch.Tensor,
    k: int,
    budget: float,
    sink: int = 0,
    recent: int = 0,
    window: int = 0,
) -> torch.Tensor:
    """Exact selection shared by every scoring method (Hamming, exact q.k, bounds): smallest score wins.

    scores: (B, Hkv, S, T), smaller is better (any dtype); q_pos: (B, S). Keeps, per (b, kv head, query),
    the first ``sink`` and last ``recent`` valid slots, then the lowest scores, ties to the lower slot,
    up to the keep count of :func:`keep_counts`. Returns (B, Hkv, S, k) int32 slot indices sorted
    ascending, padded with -1.
    """
    bsz, hkv, s, t = scores.shape
    lo, length = valid_range(q_pos, window)  # (B, S)
    n_keep = keep_counts(length, budget, sink, recent)  # (B, S)
    slot = torch.arange(t, device=scores.device).view(1, 1, t)
    rel = slot - lo.unsqueeze(-1)  # position inside the valid range
    valid = (rel >= 0) & (rel < length.unsqueeze(-1))
    # Rank key, one int64 per slot: forced slots first (by slot), then by score, then by slot, invalid
    # slots last. The score enters through an integer with the order of its float32 value, so float
    # scores (exact q.k baselines) and integer ones (Hamming) sort alike, ties to the lower slot.
    key = _float_order(scores).to(torch.int64).mul_(t).add_(slot.unsqueeze(1))  # in [-2**31 t, 2**31 t)
    if sink or recent:
        forced = valid & ((rel < sink) | (rel >= (length - recent).unsqueeze(-1)))
        key = torch.where(forced.unsqueeze(1), (slot - (2**31 + 1) * t).unsqueeze(1), key)
    invalid_key = 2**31 * t
    key.masked_fill_(~valid.unsqueeze(1), invalid_key)
    kk = min(k, t)
    picked_key, picked = torch.topk(key, kk, dim=-1, largest=False, sorted=True)
    rank = torch.arange(kk, device=scores.device).view(1, 1, 1, kk)
    keep = (rank < n_keep.view(bsz, 1, s, 1)) & (picked_key < invalid_key)
    picked = torch.where(keep, picked, torch.full_like(picked, t))
    picked, _ = torch.sort(picked, dim=-1)
    picked = torch.where(picked >= t, torch.full_like(picked, -1), picked)
    if kk < k:
        picked = torch.nn.functional.pad(picked, (0, k - kk), value=-1)
    return picked.to(torch.int32)


def _float_order(scores: torch.Tensor) -> torch.Tensor:
    """int32 with the order of ``scores.float()`` (-0.0 equal to 0.0; NaN after +inf)."""
    i = (scores.float() + 0.0).view(torch.int32)
    return i ^ ((i >> 31) & 0x7FFFFFFF)  # negative floats: reverse the magnitude bits


def hamming_topk(
    q_codes: torch.Tensor,
    k_codes: torch.Tensor,
    q_pos: torch.Tensor,
    k: int,
    budget: float,
    sink: int = 0,
    recent: int = 0,
    window: int = 0,
) -> torch.Tensor:
    """Indices of the cached keys with the smallest Hamming distance summed over each group's query heads.

    q_codes: (B, Hq, S, NW) int32; k_codes: (B, Hkv, T, NW) int32; q_pos: (B, S) int. Returns
    (B, Hkv, S, k) int32, see :func:`select_topk` for the order and padding.
    """
    s = q_codes.shape[2]
    out = []
    for c in range(0, s, _ROW_CHUNK):
        qc = q_codes[:, :, c : c + _ROW_CHUNK]
        scores = hamming_scores(qc, k_codes)
        out.append(select_topk(scores, q_pos[:, c : c + _ROW_CHUNK], k, budget, sink, recent, window))
    return torch.cat(out, dim=2)


def sparse_attention(
    q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, indices: torch.Tensor, scale: float
) -> torch.Tensor:
    """Attention of each query over its selected cache slots only.

    q: (B, Hq, S, D); caches: (B, Hkv, T, D); indices: (B, Hkv, S, K) int, -1 = unused. The G query heads of
    a KV head share its selection. Accumulates in float32; a query with nothing selected gets zeros.
    Returns (B, Hq, S, D) in q's dtype.
    """
    b, hq, s, d = q.shape
    hkv, t, kk = k_cache.shape[1], k_cache.shape[2], indices.shape[-1]
    dv = v_cache.shape[-1]
    g = hq // hkv
    # Selected rows are copied whole (index_select on (B*Hkv*T, D) rows, much faster than an element-wise
    # gather); chunks hold about _GATHER_ROWS of them, so the copies stay in cache.
    k_rows, v_rows = k_cache.reshape(b * hkv * t, d), v_cache.reshape(b * hkv * t, dv)
    base = (torch.arange(b * hkv, device=q.device) * t).view(b, hkv, 1, 1)
    chunk = max(1, min(_ROW_CHUNK, _GATHER_ROWS // max(kk, 1)))
    out = []
    for c in range(0, s, chunk):
        idx = indices[:, :, c : c + chunk].to(torch.int64)  # (B, Hkv, s_c, K)
        sc = idx.shape[2]
        rows = b * hkv * sc
        flat = (idx.clamp_min(0) + base).reshape(-1)
        ks = k_rows.index_select(0, flat).float().reshape(rows, kk, d)
        vs = v_rows.index_select(0, flat).float().reshape(rows, kk, dv)
        # One (G x D) @ (D x K) product per (batch, KV head, query row): the group shares the selection.
        qc = q[:, :, c : c + chunk].float().reshape(b, hkv, g, sc, d).transpose(2, 3).reshape(rows, g, d)
        logits = torch.bmm(qc, ks.transpose(1, 2)).mul_(scale)  # (rows, G, K)
        logits.masked_fill_((idx < 0).reshape(rows, 1, kk), float("-inf"))
        probs = torch.softmax(logits, dim=-1).nan_to_num_(0.0)
        o = torch.bmm(probs, vs)  # (rows, G, Dv)
        out.append(o.reshape(b, hkv, sc, g, dv).transpose(2, 3).reshape(b, hq, sc, dv))
    return torch.cat(out, dim=2).to(q.dtype)


def cache_attention(
    q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, q_pos: torch.Tensor, scale: float, window: int = 0
) -> torch.Tensor:
    """Dense causal attention of each query over cache slots [q_pos - window + 1, q_pos] (all of 0..q_pos
    when ``window`` is 0). The dense path: prefill and the layers that stay dense."""
    b, hq, s, d = q.shape
    hkv, t = k_cache.shape[1], k_cache.shape[2]
    slot = torch.arange(t, device=q.device).view(1, 1, t)
    lo, length = valid_range(q_pos, window)
    mask = (slot >= lo.unsqueeze(-1)) & (slot < (lo + length).unsqueeze(-1))  # (B, S, T)
    out = torch.nn.functional.scaled_dot_product_attention(
        q, k_cache.to(q.dtype), v_cache.to(q.dtype), attn_mask=mask.unsqueeze(1), scale=scale, enable_gqa=hq != hkv
    )
    return out


def cache_write(cache: torch.Tensor, values: torch.Tensor, write_pos: torch.Tensor) -> None:
    """cache[b, :, write_pos[b, s]] = values[b, :, s], in place. cache: (B, H, T, X); values: (B, H, S, X).

    Written with index_put_ (advanced indexing): ``scatter_`` on 16-bit tensors makes a full-size copy of
    the cache, which at long contexts costs more memory than the cache itself.
    """
    b, h, s, _ = values.shape
    bi = torch.arange(b, device=cache.device).view(b, 1, 1)
    hi = torch.arange(h, device=cache.device).view(1, h, 1)
    cache[bi, hi, write_pos.to(device=cache.device, dtype=torch.int64).view(b, 1, s)] = values.to(cache.dtype)
