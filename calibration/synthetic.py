"""Synthetic post-RoPE queries and keys with the structure that makes learned hashes beat random ones.

Real attention logits live in a small subspace of each head while keys carry large components that no
query reads (a shared key bias / "massive" channels, head-specific noise) and queries carry components no
key matches. Sign-random-projection hashing spends its bits on all of it; a learned W can spend them on the
subspace that decides q.k. Per KV head, the rotary pairs are split at random into a signal block (q and k
both live there: clustered keys, each query head attends near some clusters), a key-only block (a large
constant bias plus noise) and a query-only block (noise). RoPE is applied by position, so relative position
modulates q.k as in a real model. Deterministic from ``seed``.

``python -m hatac.calibration.synthetic`` prints learned-vs-random held-out recall on this data.
"""

from __future__ import annotations

import argparse
import time

import torch


def rope(x: torch.Tensor, base: float = 10000.0) -> torch.Tensor:
    """Rotate (H, S, D) by position (half-split pairs, as Llama does)."""
    _, s, d = x.shape
    inv = base ** (-torch.arange(0, d, 2, dtype=torch.float64) / d)
    ang = torch.arange(s, dtype=torch.float64).unsqueeze(-1) * inv  # (S, D/2)
    cos, sin = ang.cos().to(x.dtype), ang.sin().to(x.dtype)
    x1, x2 = x[..., : d // 2], x[..., d // 2 :]
    return torch.cat([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1)


class SyntheticHeads:
    """One layer's fixed head structure; :meth:`prompt` draws one prompt's q/k from it."""

    def __init__(
        self,
        n_q_heads: int,
        n_kv_heads: int,
        head_dim: int,
        *,
        signal_pairs: int | None = None,
        key_bias: float = 6.0,
        key_noise: float = 2.0,
        query_noise: float = 2.0,
        seed: int = 0,
    ):
        self.hq, self.hkv, self.d = n_q_heads, n_kv_heads, head_dim
        half = head_dim // 2
        self.sp = signal_pairs or max(2, half // 4)
        self.key_noise, self.query_noise = key_noise, query_noise
        g = torch.Generator().manual_seed(seed)
        # Per KV head: which rotary pairs are signal / key-only / query-only.
        perms = torch.stack([torch.randperm(half, generator=g) for _ in range(n_kv_heads)])  # (Hkv, half)
        rest = half - self.sp
        self.sig = perms[:, : self.sp]
        self.konly = perms[:, self.sp : self.sp + rest // 2]
        self.qonly = perms[:, self.sp + rest // 2 :]
        self.bias = torch.zeros(n_kv_heads, head_dim)
        kb = torch.randn(n_kv_heads, self.konly.shape[1] * 2, generator=g) * key_bias
        self.bias.scatter_(1, torch.cat([self.konly, self.konly + half], 1), kb)
        self.seed = seed

    def _embed(self, coords: torch.Tensor, pairs: torch.Tensor) -> torch.Tensor:
        """Place (H, S, 2p) coordinates into the rotary pairs ``pairs`` (H, p) of a (H, S, D) tensor."""
        h, s, _ = coords.shape
        half = self.d // 2
        idx = torch.cat([pairs, pairs + half], 1).unsqueeze(1).expand(h, s, -1)
        return torch.zeros(h, s, self.d).scatter(2, idx, coords)

    def prompt(self, length: int, prompt_seed: int, n_clusters: int = 12) -> tuple[torch.Tensor, torch.Tensor]:
        """(q (Hq, S, D), k (Hkv, S, D)) float32, post-RoPE."""
        g = torch.Generator().manual_seed(self.seed * 100_003 + prompt_seed)
        hkv, hq, s, ds = self.hkv, self.hq, length, 2 * self.sp
        grp = hq // hkv
        centers = torch.randn(hkv, n_clusters, ds, generator=g) * 1.5
        z = torch.randint(n_clusters, (hkv, s), generator=g)
        k_sig = centers.gather(1, z.unsqueeze(-1).expand(hkv, s, ds)) + 0.5 * torch.randn(hkv, s, ds, generator=g)
        # Each query head prefers one cluster per stretch of the prompt.
        zq = torch.randint(n_clusters, (hq, s // 64 + 1), generator=g).repeat_interleave(64, 1)[:, :s]
        c_q = centers.repeat_interleave(grp, 0)
        q_sig = c_q.gather(1, zq.unsqueeze(-1).expand(hq, s, ds)) + 0.7 * torch.randn(hq, s, ds, generator=g)
        k_pairs, q_pairs = self.sig, self.sig.repeat_interleave(grp, 0)
        k = self._embed(k_sig, k_pairs)
        k = k + self._embed(self.key_noise * torch.randn(hkv, s, self.konly.shape[1] * 2, generator=g), self.konly)
        k = k + self.bias.unsqueeze(1)
        q = self._embed(q_sig, q_pairs)
        qn = self.query_noise * torch.randn(hq, s, self.qonly.shape[1] * 2, generator=g)
        q = q + self._embed(qn, self.qonly.repeat_interleave(grp, 0))
        return rope(q), rope(k)


def build_collector(
    n_layers: int = 2,
    n_prompts: int = 12,
    length: int = 384,
    hq: int = 4,
    hkv: int = 2,
    d: int = 64,
    seed: int = 0,
    **collector_kw,
):
    """A PairCollector filled with synthetic prompts for ``n_layers`` layers (layer i uses seed + i)."""
    from .collect import PairCollector

    col = PairCollector(hq, hkv, d, seed=seed, **collector_kw)
    for layer in range(n_layers):
        heads = SyntheticHeads(hq, hkv, d, seed=seed + layer)
        for p in range(n_prompts):
            q, k = heads.prompt(length, p)
            col.add(layer, q, k)
    return col


def main(argv: list[str] | None = None) -> None:
    from .calibrate import calibrate
    from .train import TrainConfig

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--prompts", type=int, default=16)
    ap.add_argument("--length", type=int, default=512)
    ap.add_argument("--hq", type=int, default=8)
    ap.add_argument("--hkv", type=int, default=2)
    ap.add_argument("--head-dim", type=int, default=64)
    ap.add_argument("--rbits", type=int, default=32)
    ap.add_argument("--budget", type=float, default=0.1)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--configs", default="hatac,paper", help="hatac (rescaled inputs) and/or paper (literal)")
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: leave as is)")
    ap.add_argument("--steps", type=int, default=300)
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    col = build_collector(args.layers, args.prompts, args.length, args.hq, args.hkv, args.head_dim, args.seed)
    print(f"collected {args.layers} layers x {col.n_queries(0)} queries, {col.n_keys(0)} keys "
          f"({time.perf_counter() - t0:.1f}s)")
    for name in args.configs.split(","):
        cfg = TrainConfig(max_steps=args.steps) if name == "hatac" else TrainConfig.paper(max_steps=args.steps)
        res = calibrate(
            col, list(range(args.layers)), args.head_dim, args.hkv, args.hq, args.rbits, args.budget,
            seed=args.seed, device="cpu", config=cfg, progress=print,
        )
        mean_l = sum(s["recall_learned"] for s in res.stats.values()) / len(res.stats)
        mean_r = sum(s["recall_random"] for s in res.stats.values()) / len(res.stats)
        print(f"{name}: held-out recall@{args.budget} learned {mean_l:.3f} vs random {mean_r:.3f}")


if __name__ == "__main__":
    main()
