"""Collect what hash training needs from captured post-RoPE queries and keys, under a memory bound.

Why this shape: a (query, key) training pair is one query vector against one of the keys before it. Copying
the query once per key (as pair lists do) costs O(queries x length x D). Instead each prompt keeps one key
block (keys 0..last sampled position) and the few sampled query vectors; a query's pairs are the index range
``keys[:, :pos + 1]`` of its own prompt's block. Labels are computed lazily from these (``labels.py``).

Sampling, per prompt: ``queries_per_prompt`` positions stratified over [min_pos, S - 1] (one uniform draw
per equal-width stratum, so positions spread over the whole prompt; the first ``min_pos`` tokens, with too
few keys to rank, are skipped). A deterministic share of the sampled queries (``heldout_fraction``, by
randomized rounding, then a random subset) is held out for validation. Everything is drawn from a
``torch.Generator`` seeded by (seed, prompt id), so the same prompt gets the same positions, split and
priority in every layer and every run.

Memory bound, per layer: at most ``max_keys_per_layer`` stored key tokens (summed over prompts, each token
being Hkv x D values) and ``max_queries_per_layer`` stored query positions (each Hq x D values). When a new
prompt would exceed either cap, prompts are evicted by priority, largest first (bottom-k priority sampling,
the reservoir scheme for variable-size items: the kept prompts are a seeded random sample of all seen).
Priorities depend only on the prompt id, so every layer keeps the same prompts. A single prompt longer
than ``max_keys_per_layer`` only samples positions below that cap. Stored bytes per layer are therefore at
most ``max_keys * Hkv * D * itemsize + max_queries * Hq * D * itemsize``; see :meth:`PairCollector.nbytes`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from .labels import hata_labels

SPLITS = ("train", "heldout", "all")


@dataclass
class PromptBlock:
    """One prompt's stored data for one layer. Query i attends keys[:, :pos[i] + 1]."""

    prompt_id: int
    priority: float
    keys: torch.Tensor  # (Hkv, L, D), L = pos[-1] + 1
    queries: torch.Tensor  # (Hq, n, D)
    pos: torch.Tensor  # (n,) int64, ascending, on cpu
    heldout: torch.Tensor  # (n,) bool, on cpu

    def select(self, split: str) -> torch.Tensor:
        """Boolean mask over this block's queries for a split."""
        if split == "all":
            return torch.ones_like(self.heldout)
        return self.heldout if split == "heldout" else ~self.heldout


@dataclass
class PairBatch:
    """A padded group of prompts ready for training or evaluation (float32 on one device).

    q: (P, Hq, n, D); k: (P, Hkv, L, D); pos: (P, n) int64 with -1 on padded query rows. Query (p, s)
    attends keys k[p, :, :pos[p, s] + 1]; padded key slots lie beyond every real query's position.
    """

    q: torch.Tensor
    k: torch.Tensor
    pos: torch.Tensor
    label_frac: float = 0.1
    # Label each query head by its KV group's summed q.k (the score the selection and the recall oracle
    # rank by) instead of by its own q.k (the paper's labels). See TrainConfig.group_labels.
    group_labels: bool = False
    _labels: torch.Tensor | None = field(default=None, repr=False)

    @property
    def qmask(self) -> torch.Tensor:
        """(P, n) True on real query rows."""
        return self.pos >= 0

    @property
    def valid(self) -> torch.Tensor:
        """(P, n, L) True where key slot t is causal for query (p, s); all False on padded rows."""
        t = torch.arange(self.k.shape[2], device=self.k.device)
        return t.view(1, 1, -1) <= self.pos.unsqueeze(-1)

    @property
    def n_keys(self) -> torch.Tensor:
        """(P, n) number of causal keys per query row (0 on padding)."""
        return (self.pos + 1).clamp_min(0)

    def exact_scores(self) -> torch.Tensor:
        """(P, Hq, n, L) exact q.k; query head h uses KV head h // G."""
        p, hq, n, d = self.q.shape
        hkv, length = self.k.shape[1], self.k.shape[2]
        qg = self.q.reshape(p, hkv, (hq // hkv) * n, d)
        return torch.matmul(qg, self.k.transpose(-1, -2)).reshape(p, hq, n, length)

    def labels(self) -> torch.Tensor:
        """(P, Hq, n, L) HATA labels (see labels.py), computed on first use and cached. With
        ``group_labels`` every query head of a KV group gets the labels of the group's summed q.k."""
        if self._labels is None:
            scores = self.exact_scores()
            if self.group_labels:
                p, hq, n, length = scores.shape
                hkv = self.k.shape[1]
                grouped = scores.reshape(p, hkv, hq // hkv, n, length).sum(2, keepdim=True)
                scores = grouped.expand(p, hkv, hq // hkv, n, length).reshape(p, hq, n, length)
            self._labels = hata_labels(scores, self.valid.unsqueeze(1), self.label_frac)
        return self._labels

    def set_group_labels(self, on: bool) -> None:
        """Switch the label rule (drops cached labels when it changes)."""
        if on != self.group_labels:
            self.group_labels, self._labels = on, None

    @property
    def pairs(self) -> int:
        """Padded (query head, query, key) entries: the size of one pair tensor of this batch."""
        p, hq, n, _ = self.q.shape
        return p * hq * n * self.k.shape[2]


class PairCollector:
    """Receives post-RoPE q/k per prompt and layer, keeps a bounded sample for hash training."""

    def __init__(
        self,
        n_q_heads: int,
        n_kv_heads: int,
        head_dim: int,
        *,
        queries_per_prompt: int = 32,
        min_pos: int = 16,
        max_queries_per_layer: int = 2048,
        max_keys_per_layer: int = 65536,
        heldout_fraction: float = 0.2,
        heldout_prompts: bool = False,
        label_frac: float = 0.1,
        seed: int = 0,
        store_device: torch.device | str | None = None,
        store_dtype: torch.dtype | None = None,
    ):
        if n_q_heads % n_kv_heads:
            raise ValueError(f"n_q_heads {n_q_heads} is not a multiple of n_kv_heads {n_kv_heads}")
        if queries_per_prompt < 1 or max_queries_per_layer < 1 or max_keys_per_layer <= min_pos:
            raise ValueError("need queries_per_prompt >= 1, max_queries >= 1, max_keys > min_pos")
        self.n_q_heads, self.n_kv_heads, self.head_dim = n_q_heads, n_kv_heads, head_dim
        self.queries_per_prompt = min(queries_per_prompt, max_queries_per_layer)
        self.min_pos = min_pos
        self.max_queries_per_layer = max_queries_per_layer
        self.max_keys_per_layer = max_keys_per_layer
        self.heldout_fraction = heldout_fraction
        # Hold out whole prompts (every round(1/fraction)-th prompt id) instead of a share of each prompt's
        # queries: held-out queries then attend to keys no training query saw, so early stopping can see
        # overfitting to the calibration keys. Needs enough prompts; the caller decides.
        self.heldout_prompts = heldout_prompts
        self.label_frac = label_frac
        self.seed = seed
        self.store_device = torch.device(store_device) if store_device is not None else None
        self.store_dtype = store_dtype
        self._blocks: dict[int, list[PromptBlock]] = {}
        self._seen: dict[int, int] = {}

    # ----------------------------------------------------------------------------------- intake
    def _generator(self, prompt_id: int) -> torch.Generator:
        return torch.Generator().manual_seed((self.seed * 1_000_003 + prompt_id * 7_919 + 17) % (2**63))

    def sample(self, prompt_id: int, length: int) -> tuple[torch.Tensor, torch.Tensor, float]:
        """Positions (ascending int64), held-out mask and eviction priority for a prompt; deterministic."""
        g = self._generator(prompt_id)
        priority = float(torch.rand(1, generator=g))
        lo, hi = self.min_pos, min(length, self.max_keys_per_layer) - 1
        if hi < lo:
            return torch.zeros(0, dtype=torch.int64), torch.zeros(0, dtype=torch.bool), priority
        span = hi - lo + 1
        n = min(self.queries_per_prompt, span)
        edges = lo + torch.div(torch.arange(n + 1) * span, n, rounding_mode="floor")
        width = edges[1:] - edges[:-1]  # >= 1 since span >= n
        u = torch.rand(n, generator=g, dtype=torch.float64)
        pos = edges[:-1] + (u * width).floor().to(torch.int64).minimum(width - 1)
        if self.heldout_prompts:
            period = max(2, round(1 / self.heldout_fraction))
            return pos, torch.full((n,), prompt_id % period == period - 1, dtype=torch.bool), priority
        n_ho = int(torch.floor(n * self.heldout_fraction + torch.rand(1, generator=g, dtype=torch.float64)))
        heldout = torch.zeros(n, dtype=torch.bool)
        heldout[torch.randperm(n, generator=g)[:n_ho]] = True
        return pos, heldout, priority

    def add(self, layer_idx: int, q: torch.Tensor, k: torch.Tensor, prompt_id: int | None = None) -> int:
        """Store one prompt's sampled queries and key block for a layer; returns queries kept (0 if the
        prompt is too short or was evicted at once).

        q: (Hq, S, D) and k: (Hkv, S, D) post-RoPE, one prompt without padding (a leading batch dim of 1
        is accepted). ``prompt_id`` defaults to the count of prompts this layer has seen, so calling add
        once per prompt per layer in the same prompt order gives every layer the same sample.
        """
        if q.dim() == 4 and q.shape[0] == 1:
            q = q[0]
        if k.dim() == 4 and k.shape[0] == 1:
            k = k[0]
        if q.dim() != 3 or k.dim() != 3:
            raise ValueError(f"add expects q (Hq, S, D) and k (Hkv, S, D), got {tuple(q.shape)}, {tuple(k.shape)}")
        if (q.shape[0], q.shape[2]) != (self.n_q_heads, self.head_dim) or (k.shape[0], k.shape[2]) != (
            self.n_kv_heads,
            self.head_dim,
        ):
            raise ValueError(
                f"add: q {tuple(q.shape)} / k {tuple(k.shape)} do not match Hq={self.n_q_heads}, "
                f"Hkv={self.n_kv_heads}, D={self.head_dim}"
            )
        if q.shape[1] != k.shape[1]:
            raise ValueError(f"add: q has {q.shape[1]} positions but k has {k.shape[1]}")
        pid = self._seen.get(layer_idx, 0) if prompt_id is None else prompt_id
        self._seen[layer_idx] = self._seen.get(layer_idx, 0) + 1
        pos, heldout, priority = self.sample(pid, k.shape[1])
        if pos.numel() == 0:
            return 0
        device = self.store_device or k.device
        dtype = self.store_dtype or k.dtype
        length = int(pos[-1]) + 1
        block = PromptBlock(
            prompt_id=pid,
            priority=priority,
            keys=k[:, :length].to(device=device, dtype=dtype, copy=True),
            queries=q[:, pos.to(q.device)].to(device=device, dtype=dtype, copy=True),
            pos=pos,
            heldout=heldout,
        )
        blocks = self._blocks.setdefault(layer_idx, [])
        blocks.append(block)
        self._evict(blocks)
        return pos.numel() if any(b is block for b in blocks) else 0

    def _evict(self, blocks: list[PromptBlock]) -> None:
        """Drop the largest-priority prompts until both caps hold."""
        blocks.sort(key=lambda b: (b.priority, b.prompt_id))
        keys = sum(b.keys.shape[1] for b in blocks)
        queries = sum(b.pos.numel() for b in blocks)
        while blocks and (keys > self.max_keys_per_layer or queries > self.max_queries_per_layer):
            b = blocks.pop()
            keys -= b.keys.shape[1]
            queries -= b.pos.numel()

    # ----------------------------------------------------------------------------------- views
    @property
    def layers(self) -> list[int]:
        return sorted(i for i, b in self._blocks.items() if b)

    @property
    def device(self) -> torch.device:
        """Where stored tensors live (the first stored block's device; cpu when empty)."""
        for blocks in self._blocks.values():
            if blocks:
                return blocks[0].keys.device
        return self.store_device or torch.device("cpu")

    def blocks(self, layer_idx: int) -> list[PromptBlock]:
        return list(self._blocks.get(layer_idx, []))

    def prompts_seen(self, layer_idx: int) -> int:
        return self._seen.get(layer_idx, 0)

    def n_queries(self, layer_idx: int, split: str = "all") -> int:
        return sum(int(b.select(split).sum()) for b in self._blocks.get(layer_idx, []))

    def n_keys(self, layer_idx: int) -> int:
        """Stored key tokens of a layer (each Hkv x D values)."""
        return sum(b.keys.shape[1] for b in self._blocks.get(layer_idx, []))

    def n_pairs(self, layer_idx: int, split: str = "all") -> int:
        """(query head, query, causal key) training pairs represented, without materializing any."""
        hq = self.n_q_heads
        return sum(int((b.pos[b.select(split)] + 1).sum()) * hq for b in self._blocks.get(layer_idx, []))

    def nbytes(self, layer_idx: int | None = None) -> int:
        """Bytes held by stored keys and queries (one layer, or all when None)."""
        ids = self.layers if layer_idx is None else [layer_idx]
        return sum(
            b.keys.numel() * b.keys.element_size() + b.queries.numel() * b.queries.element_size()
            for i in ids
            for b in self._blocks.get(i, [])
        )

    def flat(self, layer_idx: int, split: str = "all") -> dict[str, torch.Tensor]:
        """Queries with index ranges into one concatenated key tensor (copies; for inspection/export).

        Returns queries (N, Hq, D), pos (N,), key_offset (N,) and keys (Hkv, K_total, D): query i's pairs
        are keys[:, key_offset[i] : key_offset[i] + pos[i] + 1].
        """
        blocks = [b for b in self._blocks.get(layer_idx, []) if b.select(split).any()]
        offsets = torch.tensor([0] + [b.keys.shape[1] for b in blocks], dtype=torch.int64).cumsum(0)
        sel = [b.select(split) for b in blocks]
        return {
            "queries": torch.cat([b.queries[:, m].transpose(0, 1) for b, m in zip(blocks, sel)]),
            "pos": torch.cat([b.pos[m] for b, m in zip(blocks, sel)]),
            "key_offset": torch.cat([offsets[i].repeat(int(m.sum())) for i, m in enumerate(sel)]),
            "keys": torch.cat([b.keys for b in blocks], dim=1),
        }

    def batches(
        self,
        layer_idx: int,
        split: str = "train",
        max_pairs: int = 1 << 24,
        device: torch.device | str | None = None,
    ) -> list[PairBatch]:
        """Group a layer's prompts into padded float32 batches of at most ``max_pairs`` pair entries.

        Prompts are sorted by key length so padding stays small; a prompt larger than ``max_pairs`` alone
        gets a batch of its own. Padded query rows have pos -1. Deterministic (no randomness).
        """
        if split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
        device = torch.device(device) if device is not None else self.device
        hq = self.n_q_heads
        items = []
        for b in self._blocks.get(layer_idx, []):
            m = b.select(split)
            if m.any():
                pos = b.pos[m]
                items.append((int(pos[-1]) + 1, b, m, pos))
        items.sort(key=lambda it: (it[0], it[1].prompt_id))
        groups: list[list] = []
        n_max = length_max = 0
        for it in items:
            n_new, len_new = max(n_max, it[3].numel()), max(length_max, it[0])
            if groups and (len(groups[-1]) + 1) * hq * n_new * len_new <= max_pairs:
                groups[-1].append(it)
                n_max, length_max = n_new, len_new
            else:
                groups.append([it])
                n_max, length_max = it[3].numel(), it[0]
        return [self._pad(g, device) for g in groups]

    def _pad(self, group: list, device: torch.device) -> PairBatch:
        p = len(group)
        n = max(it[3].numel() for it in group)
        length = max(it[0] for it in group)
        hq, hkv, d = self.n_q_heads, self.n_kv_heads, self.head_dim
        q = torch.zeros(p, hq, n, d, device=device, dtype=torch.float32)
        k = torch.zeros(p, hkv, length, d, device=device, dtype=torch.float32)
        pos = torch.full((p, n), -1, dtype=torch.int64)
        for i, (blen, b, m, bpos) in enumerate(group):
            q[i, :, : bpos.numel()] = b.queries[:, m.to(b.queries.device)].to(device, torch.float32)
            k[i, :, :blen] = b.keys[:, :blen].to(device, torch.float32)
            pos[i, : bpos.numel()] = bpos
        return PairBatch(q=q, k=k, pos=pos.to(device), label_frac=self.label_frac)
