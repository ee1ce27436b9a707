"""Hash encoding in one Triton kernel: projection x @ W, sign, and bit packing into int32 words.

Two forms:

- prefill (:func:`hash_encode`): a program takes a tile of rows of one head against that head's W, one
  32-bit word (32 columns of W) at a time, so the float projection never reaches memory;
- decode step (:func:`hash_encode_step`): a program takes the G query heads and the new key of one KV
  head (they share W) and writes the key's code straight into the code cache at ``write_pos``, so a
  decode step hashes with one launch and no separate cache write; given the K and V caches too
  (``hatac::hash_encode_step_kv``), the same launch also writes the new key and value rows there, which
  saves a hashed layer's two ``cache_write`` launches; given cos and sin too
  (``hatac::rope_hash_encode_step_kv``), it first applies the rotary embedding to q and k as it loads them,
  stores the rotated q for the attention and writes the rotated key, which saves the launches that rotate
  them.

Semantics are those of ``reference.hash_encode`` (bit j of word c is ``x @ W[:, 32c + j] > 0``). The
projection keeps float32 accuracy on the tensor cores (16-bit operands multiply exactly; float32 W is
split into two tf32 halves), so a bit can differ from the reference only where the projection is about zero.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from hatac.kernels._common import grid_sync, hw_flag, next_pow2, pdl_args


@triton.jit
def _pack_word(proj):
    """(M, 32) float projections -> (M,) int32 words, bit j set where column j is > 0."""
    bit = tl.arange(0, 32)
    return tl.sum(tl.where(proj > 0, 1, 0) << bit[None, :], axis=1)


@triton.jit
def _tf32_hi(v):
    """v with the mantissa bits tf32 drops cleared: exactly representable in tf32."""
    return (v.to(tl.int32, bitcast=True) & -8192).to(tl.float32, bitcast=True)


@triton.jit
def _project(x, wt, MODE: tl.constexpr):
    """x @ wt with float32 accuracy. MODE 0: both 16-bit, one native dot (products are exact).
    MODE 1: x 16-bit (exact in tf32), W split into tf32 hi + lo: two tensor-core dots.
    MODE 2: both float32, split both: three dots. MODE 3: plain float32 (the interpreter)."""
    if MODE == 0:
        return tl.dot(x, wt)
    elif MODE == 3:
        return tl.dot(x.to(tl.float32), wt.to(tl.float32), input_precision="ieee")
    else:
        xf = x.to(tl.float32)
        wf = wt.to(tl.float32)
        w_hi = _tf32_hi(wf)
        w_lo = wf - w_hi
        if MODE == 1:
            acc = tl.dot(xf, w_lo, input_precision="tf32")
            return tl.dot(xf, w_hi, acc, input_precision="tf32")
        else:
            x_hi = _tf32_hi(xf)
            x_lo = xf - x_hi
            acc = tl.dot(x_lo, w_hi, input_precision="tf32")
            acc = tl.dot(x_hi, w_lo, acc, input_precision="tf32")
            return tl.dot(x_hi, w_hi, acc, input_precision="tf32")


@triton.jit
def _encode_kernel(
    x_ptr, w_ptr, out_ptr,
    S, H, G, D,
    sxb, sxh, sxs, sxd,
    swh, swd, swr,
    sob, soh, sos, sow,
    NW: tl.constexpr, BLOCK_S: tl.constexpr, BLOCK_D: tl.constexpr,
    MODE: tl.constexpr, PDL: tl.constexpr,
):
    grid_sync(PDL)
    pid_s = tl.program_id(0)
    bh = tl.program_id(1)
    b = bh // H
    h = bh % H
    kv = h // G
    rows = pid_s * BLOCK_S + tl.arange(0, BLOCK_S)
    d = tl.arange(0, BLOCK_D)
    col = tl.arange(0, 32)
    x = tl.load(
        x_ptr + b.to(tl.int64) * sxb + h * sxh + rows[:, None].to(tl.int64) * sxs + d[None, :] * sxd,
        mask=(rows[:, None] < S) & (d[None, :] < D), other=0.0,
    )
    out_base = out_ptr + b.to(tl.int64) * sob + h * soh + rows.to(tl.int64) * sos
    for c in tl.static_range(NW):
        wt = tl.load(w_ptr + kv * swh + d[:, None] * swd + (c * 32 + col)[None, :] * swr, mask=d[:, None] < D, other=0.0)
        code = _pack_word(_project(x, wt, MODE))
        tl.store(out_base + c * sow, code, mask=rows < S)


@triton.jit
def _heads_and_key(q_ptr, k_ptr, b, kv, s, r, cols, dm, G, sqb, sqh, sqs, sqd, skb, skh, sks, skd):
    """(ROWS, BLOCK_D) float32: rows 0..G-1 the query heads of KV head ``kv``, row G the new key, each read at
    columns ``cols`` (the masks are disjoint, so the sum is exact for 16-bit inputs)."""
    xq = tl.load(
        q_ptr + b.to(tl.int64) * sqb + (kv * G + r)[:, None] * sqh + s * sqs + cols[None, :] * sqd,
        mask=(r[:, None] < G) & dm, other=0.0,
    )
    xk = tl.load(
        k_ptr + b.to(tl.int64) * skb + kv * skh + s * sks + cols[None, :] * skd + r[:, None] * 0,
        mask=(r[:, None] == G) & dm, other=0.0,
    )
    return xq.to(tl.float32) + xk.to(tl.float32)


@triton.jit
def _encode_step_kernel(
    q_ptr, k_ptr, w_ptr, qc_ptr, kc_ptr, wp_ptr, v_ptr, kcache_ptr, vcache_ptr, cos_ptr, sin_ptr, qr_ptr,
    S, Hkv, G, D, T, DV, ROT,
    sqb, sqh, sqs, sqd,
    skb, skh, sks, skd,
    swh, swd, swr,
    scb, sch, scs, scw,
    skcb, skch, skct, skcw,
    swpb, swps,
    svb, svh, svs, svd,
    sKb, sKh, sKt, sKd,
    sVb, sVh, sVt, sVd,
    scosb, scoss, scosd,
    ssinb, ssins, ssind,
    sqrb, sqrh, sqrs, sqrd,
    ROWS: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_DV: tl.constexpr, WRITE_KV: tl.constexpr,
    ROPE: tl.constexpr, MODE: tl.constexpr, PDL: tl.constexpr,
):
    grid_sync(PDL)
    pid = tl.program_id(0)
    s = pid % S
    kv = (pid // S) % Hkv
    b = pid // (S * Hkv)
    r = tl.arange(0, ROWS)  # rows 0..G-1: the query heads of this KV head; row G: the new key
    d = tl.arange(0, BLOCK_D)
    dm = d[None, :] < D
    x = _heads_and_key(q_ptr, k_ptr, b, kv, s, r, d, dm, G, sqb, sqh, sqs, sqd, skb, skh, sks, skd)
    c = tl.program_id(1)  # one 32-bit word per program: short dependency chains, NW times the programs
    if ROPE:  # rotate-half rotary embedding of the first ROT dims, float32, rounded as the unfused graph rounds it
        half = ROT // 2
        dp = tl.where(d < half, d + half, tl.where(d < ROT, d - half, d))  # partner in the other half; past ROT: itself
        xp = _heads_and_key(q_ptr, k_ptr, b, kv, s, r, dp, dm, G, sqb, sqh, sqs, sqd, skb, skh, sks, skd)
        cs = tl.load(cos_ptr + b.to(tl.int64) * scosb + s * scoss + d * scosd, mask=d < ROT, other=0.0).to(tl.float32)
        sn = tl.load(sin_ptr + b.to(tl.int64) * ssinb + s * ssins + d * ssind, mask=d < ROT, other=0.0).to(tl.float32)
        xp = tl.where(d[None, :] < half, -xp, xp)
        xr = (x * cs[None, :] + xp * sn[None, :]).to(q_ptr.dtype.element_ty).to(tl.float32)
        x = tl.where(d[None, :] < ROT, xr, x)  # dims past ROT pass through
        q_end = tl.where(c == 0, G, 0)  # the first word's program stores the rotated query heads
        tl.store(
            qr_ptr + b.to(tl.int64) * sqrb + (kv * G + r)[:, None] * sqrh + s * sqrs + d[None, :] * sqrd,
            x.to(qr_ptr.dtype.element_ty), mask=(r[:, None] < q_end) & dm,
        )
    wpos = tl.load(wp_ptr + b * swpb + s * swps).to(tl.int64)
    q_out = qc_ptr + b.to(tl.int64) * scb + (kv * G + r) * sch + s * scs
    k_out = kc_ptr + b.to(tl.int64) * skcb + kv * skch + wpos * skct + r * 0
    wv = wpos + r * 0  # a tensor, not a scalar: the interpreter mistypes bool-tensor & bool-scalar
    k_mask = (r == G) & (wv >= 0) & (wv < T)
    col = tl.arange(0, 32)
    wt = tl.load(w_ptr + kv * swh + d[:, None] * swd + (c * 32 + col)[None, :] * swr, mask=d[:, None] < D, other=0.0)
    code = _pack_word(_project(x, wt, MODE))
    tl.store(q_out + c * scw, code, mask=r < G)
    tl.store(k_out + c * skcw, code, mask=k_mask)
    if WRITE_KV:  # the first word's program also copies the new key and value rows into their caches
        in_cache = (c == 0) & (wpos >= 0) & (wpos < T)
        d_end = tl.where(in_cache, D, 0)  # the masks as compares: the interpreter mistypes bool-tensor & bool
        dv_end = tl.where(in_cache, DV, 0)
        if ROPE:  # the rotated key: row G of x
            tl.store(kcache_ptr + b.to(tl.int64) * sKb + kv * sKh + wpos * sKt + d[None, :] * sKd + r[:, None] * 0,
                     x.to(kcache_ptr.dtype.element_ty), mask=(r[:, None] == G) & (d[None, :] < d_end))
        else:
            k_row = tl.load(k_ptr + b.to(tl.int64) * skb + kv * skh + s * sks + d * skd, mask=d < d_end)
            tl.store(kcache_ptr + b.to(tl.int64) * sKb + kv * sKh + wpos * sKt + d * sKd, k_row, mask=d < d_end)
        dv = tl.arange(0, BLOCK_DV)
        v_row = tl.load(v_ptr + b.to(tl.int64) * svb + kv * svh + s * svs + dv * svd, mask=dv < dv_end)
        tl.store(vcache_ptr + b.to(tl.int64) * sVb + kv * sVh + wpos * sVt + dv * sVd, v_row, mask=dv < dv_end)


_HALF = (torch.float16, torch.bfloat16)


def _mode(hw: bool, x_dtypes, w_dtype, native_ok: bool = True) -> int:
    """The _project MODE for these operand dtypes (see there)."""
    if not hw:
        return 3
    if all(dt in _HALF for dt in x_dtypes):
        return 0 if native_ok and all(dt == w_dtype for dt in x_dtypes) else 1
    return 2


def _check(x: torch.Tensor, w: torch.Tensor) -> tuple[int, int]:
    hkv, d_w, r = w.shape
    if x.shape[-1] != d_w or x.shape[1] % hkv or r % 32:
        raise ValueError(f"hash_encode: x {tuple(x.shape)} does not fit W {tuple(w.shape)}")
    return hkv, r // 32


def hash_encode(x: torch.Tensor, w: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
    """Triton body of ``hatac::hash_encode``: (B, H, S, D) x (Hkv, D, R) -> (B, H, S, R/32) int32."""
    b, h, s, d = x.shape
    hkv, nw = _check(x, w)
    if out is None:
        out = torch.empty((b, h, s, nw), dtype=torch.int32, device=x.device)
    if out.numel() == 0:
        return out
    mode = _mode(hw_flag(x), [x.dtype], w.dtype)
    block_d = max(16, next_pow2(d))
    block_s = 16 if s <= 16 else (32 if block_d > 128 else 64)
    grid = (triton.cdiv(s, block_s), b * h)
    _encode_kernel[grid](
        x, w, out, s, h, h // hkv, d,
        *x.stride(), *w.stride(), *out.stride(),
        NW=nw, BLOCK_S=block_s, BLOCK_D=block_d,
        MODE=mode, num_warps=8 if mode in (1, 2) or block_d > 128 else 4, **pdl_args(x),
    )
    return out


def hash_encode_step(
    q: torch.Tensor, k: torch.Tensor, w: torch.Tensor, k_codes: torch.Tensor, write_pos: torch.Tensor,
    out: torch.Tensor | None = None, v: torch.Tensor | None = None, k_cache: torch.Tensor | None = None,
    v_cache: torch.Tensor | None = None, cos: torch.Tensor | None = None, sin: torch.Tensor | None = None,
    q_rot: torch.Tensor | None = None,
) -> torch.Tensor:
    """Triton body of ``hatac::hash_encode_step``: one launch encodes the query heads and the new keys,
    writing the keys' codes into ``k_codes`` at ``write_pos``; returns the query codes. With ``v``,
    ``k_cache`` and ``v_cache`` it also writes the new key and value rows into those caches (the body of
    ``hatac::hash_encode_step_kv``); with ``cos``, ``sin`` ((B, S, R), R even and at most D) and ``q_rot`` too, it first rotates
    q and k (rotary embedding), stores the rotated q in ``q_rot`` and writes the rotated key (the body of
    ``hatac::rope_hash_encode_step_kv``)."""
    b, hq, s, d = q.shape
    hkv, nw = _check(q, w)
    if k.shape != (b, hkv, s, d) or k_codes.shape[3] != nw or write_pos.shape != (b, s):
        raise ValueError("hash_encode_step: shapes of q, k, k_codes and write_pos do not agree")
    write_kv = v is not None
    if write_kv and (v.shape[:3] != (b, hkv, s) or k_cache.shape != (b, hkv, k_codes.shape[2], d)
                     or v_cache.shape != (b, hkv, k_codes.shape[2], v.shape[3])):
        raise ValueError("hash_encode_step: shapes of v, k_cache and v_cache do not agree with k and k_codes")
    g = hq // hkv
    if out is None:
        out = torch.empty((b, hq, s, nw), dtype=torch.int32, device=q.device)
    if out.numel() == 0:
        return out
    rope = cos is not None
    rot = cos.shape[-1] if rope else 0
    if rope and (not write_kv or rot % 2 or not 0 < rot <= d or cos.shape != (b, s, rot) or sin.shape != cos.shape
                 or q_rot is None or q_rot.shape != q.shape or q_rot.dtype != q.dtype or k.dtype != q.dtype
                 or k_cache.dtype != q.dtype):
        raise ValueError("hash_encode_step: rotary embedding needs the K/V writes, cos and sin of (B, S, R) for an "
                         "even R up to the head dim, and q, k, q_rot and k_cache of one dtype")
    if not write_kv:  # unused pointer arguments: the kernel reads none of them
        v, k_cache, v_cache = k, k, k
    if not rope:
        cos, sin, q_rot = k[:, 0], k[:, 0], k
    dv = v.shape[3]
    _encode_step_kernel[(b * hkv * s, nw)](
        q, k, w, out, k_codes, write_pos, v, k_cache, v_cache, cos, sin, q_rot,
        s, hkv, g, d, k_codes.shape[2], dv, rot,
        *q.stride(), *k.stride(), *w.stride(), *out.stride(), *k_codes.stride(), *write_pos.stride(),
        *v.stride(), *k_cache.stride(), *v_cache.stride(), *cos.stride(), *sin.stride(), *q_rot.stride(),
        ROWS=max(16, next_pow2(g + 1)), BLOCK_D=max(16, next_pow2(d)), BLOCK_DV=max(16, next_pow2(dv)),
        WRITE_KV=write_kv, ROPE=rope,
        MODE=_mode(hw_flag(q), [q.dtype, k.dtype], w.dtype, native_ok=False), num_warps=4 if d <= 128 else 8,
        **pdl_args(q),
    )
    return out


def hash_encode_step_kv(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, w: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
    k_codes: torch.Tensor, write_pos: torch.Tensor,
) -> torch.Tensor:
    """Triton body of ``hatac::hash_encode_step_kv``: :func:`hash_encode_step` that also writes the new key
    and value rows into ``k_cache`` and ``v_cache`` at ``write_pos``, in the same launch."""
    return hash_encode_step(q, k, w, k_codes, write_pos, v=v, k_cache=k_cache, v_cache=v_cache)


def rope_hash_encode_step_kv(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, w: torch.Tensor,
    k_cache: torch.Tensor, v_cache: torch.Tensor, k_codes: torch.Tensor, write_pos: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Triton body of ``hatac::rope_hash_encode_step_kv``: the rotary embedding of q and k, the hashing and
    the three cache writes in one launch; returns (query codes, rotated q)."""
    q_rot = torch.empty(q.shape, dtype=q.dtype, device=q.device)
    b, _, s, _ = q.shape
    rot = cos.shape[-1]
    codes = hash_encode_step(q, k, w, k_codes, write_pos, v=v, k_cache=k_cache, v_cache=v_cache,
                             cos=cos.expand(b, s, rot), sin=sin.expand(b, s, rot), q_rot=q_rot)
    return codes, q_rot
