"""Token-selection policies: which cached keys each query attends to, scored per method, selected alike.

Every policy turns (queries, cached keys, query positions) into a score per (batch row, KV head, query,
slot), smaller is better, and hands the scores to :func:`hatac.reference.select_topk` with the same
budget. So all methods keep exactly the same number of tokens per KV head at every position
(:func:`hatac.reference.keep_counts`), break ties the same way (to the lower slot), and differ only in
how they rank keys. A GQA group (the G query heads of a KV head) shares one selection, scored by the
sum over its heads, as in the decode path (``hamming_topk``).

Shapes: q (B, Hq, S, D) post-RoPE queries of one chunk of rows; k (B, Hkv, T, D) the K cache, post-RoPE;
q_pos (B, S) the position of each query (it may attend to slots 0..q_pos). Scores (B, Hkv, S, T).

Policies:

- :class:`Oracle`: exact top-k by q.k (summed over the group): the accuracy ceiling of top-k attention.
- :class:`HashPolicy`: hatac's selection, Hamming distance between ``sign(x @ W)`` codes summed over the
  group (random W = sign random projection; learned W from calibration). Computed from the +-1 signs
  as a matmul; equal to ``hamming_scores`` of the packed codes (tests check it).
- :class:`Quest`: 16-token pages; per page and channel the min and max key; a page's score is the upper
  bound ``sum_d max(q_d min_d, q_d max_d)`` of q.k over its keys; a token's score is its page's, so
  selection takes whole pages best first (the last one cut at the budget, lower slots first). The page
  holding the query is always kept and counts inside the budget, as in Quest's kernels (adaptations:
  :class:`Quest`'s docstring).
- :class:`Loki`: keys and queries rotated into a per-(layer, KV head) PCA basis of post-RoPE keys fitted
  on calibration text (:mod:`hatac.evaluation.loki`); score q.k over the first r dims (adaptations:
  :class:`Loki`'s docstring).
- :class:`StreamingLLM`: the first ``sink`` tokens, then the most recent ones, up to the budget.
"""

from __future__ import annotations

import torch

from hatac import reference

# Query rows scored and selected at once: bounds the (rows x T) score tiles.
ROW_CHUNK = 256


class Policy:
    """Base class: override :meth:`key_state` (per layer, once per call) and :meth:`chunk_scores`."""

    name = "policy"
    # Slots forced into the selection (first ``force_sink`` and last ``force_recent`` valid ones), counted
    # inside the budget by select_topk, like hatac's own --sink / --recent.
    force_sink = 0
    force_recent = 0

    def key_state(self, k: torch.Tensor, layer: int):
        """Whatever the policy derives from the cached keys (B, Hkv, T, D), computed once per call."""
        return k

    def chunk_scores(self, q: torch.Tensor, state, q_pos: torch.Tensor, t: int, layer: int) -> torch.Tensor:
        """(B, Hkv, S, t) scores of the first ``t`` slots, smaller is better."""
        raise NotImplementedError

    def describe(self) -> dict:
        return {"name": self.name}


def group_sum(q: torch.Tensor, n_kv: int) -> torch.Tensor:
    """(B, Hq, S, X) -> (B, Hkv, S, X): the sum over each KV head's G query heads."""
    b, hq, s, x = q.shape
    return q.reshape(b, n_kv, hq // n_kv, s, x).sum(2)


def select(
    policy: Policy,
    q: torch.Tensor,
    k_cache: torch.Tensor,
    q_pos: torch.Tensor,
    width: int,
    budget: float,
    layer: int,
    window: int = 0,
    row_chunk: int = ROW_CHUNK,
) -> torch.Tensor:
    """(B, Hkv, S, width) int32 slots chosen by ``policy``, -1 padded, via ``reference.select_topk``.

    Scores are computed only for slots a query of the chunk can see (up to its largest position), which
    changes nothing (the others are invalid for select_topk) and halves the work of a causal one-pass.
    """
    s = q.shape[2]
    t_all = k_cache.shape[2]
    t_max = min(t_all, int(q_pos.max()) + 1)
    state = policy.key_state(k_cache[:, :, :t_max], layer)
    out = []
    for c in range(0, s, row_chunk):
        pos = q_pos[:, c : c + row_chunk]
        t = min(t_max, int(pos.max()) + 1)
        scores = policy.chunk_scores(q[:, :, c : c + row_chunk], state, pos, t, layer)
        out.append(reference.select_topk(scores, pos, width, budget, policy.force_sink, policy.force_recent, window))
    return torch.cat(out, dim=2)


class Oracle(Policy):
    """Exact top-k of ``sum over the group of q.k``."""

    name = "oracle"

    def chunk_scores(self, q, k, q_pos, t, layer):
        qs = group_sum(q.float(), k.shape[1])
        return -torch.matmul(qs, k[:, :, :t].float().transpose(-1, -2))


class HashPolicy(Policy):
    """hatac's hash selection with projections ``weights[layer]`` (Hkv, D, r)."""

    def __init__(self, weights: dict[int, torch.Tensor], name: str = "hatac", sink: int = 0, recent: int = 0):
        self.weights = weights
        self.name = name
        self.force_sink, self.force_recent = sink, recent
        self._dev: dict = {}

    def _w(self, layer: int, device) -> torch.Tensor:
        key = (layer, str(device))
        if key not in self._dev:
            self._dev[key] = self.weights[layer].to(device=device, dtype=torch.float32)
        return self._dev[key]

    @staticmethod
    def signs(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        """+1 where ``x @ W > 0`` (bit 1 of hash_encode), else -1. x (B, H, S, D), w (Hkv, D, R): (B, H, S, R)."""
        b, h, s, d = x.shape
        hkv, _, r = w.shape
        proj = torch.matmul(x.float().reshape(b, hkv, (h // hkv) * s, d), w.unsqueeze(0))  # as hash_encode
        return torch.where(proj > 0, 1.0, -1.0).reshape(b, h, s, r)

    def key_state(self, k, layer):
        return self.signs(k, self._w(layer, k.device))

    def chunk_scores(self, q, k_signs, q_pos, t, layer):
        w = self._w(layer, q.device)
        hkv, r = k_signs.shape[1], k_signs.shape[-1]
        g = q.shape[1] // hkv
        qs = group_sum(self.signs(q, w), hkv)  # (B, Hkv, S, R)
        dot = torch.matmul(qs, k_signs[:, :, :t].transpose(-1, -2))
        # sum_j popcount(q_j xor k) = sum_j (r - s_qj . s_k) / 2: whole numbers, exact in float32.
        return (g * r - dot) * 0.5

    def describe(self) -> dict:
        w = next(iter(self.weights.values()), None)
        return {"name": self.name, "rbits": None if w is None else int(w.shape[-1]), "sink": self.force_sink, "recent": self.force_recent}


class Quest(Policy):
    """Quest (Tang et al., ICML'24): page top-k by an upper bound of q.k from per-page min/max keys.

    What Quest does and this keeps: pages of ``page`` tokens; per page and channel the min and max of the
    (post-RoPE) keys; a page's criticality is ``sum_d max(q_d min_d, q_d max_d)``, an upper bound of q.k
    over its keys; the best pages are attended. The page holding the current query (the last page, being
    filled) is always attended, whatever its bound: Quest's decode kernels leave it out of the estimate
    and top-k and always append it, and its page budget includes it ("real page budget including the last
    page"). Here likewise the current page's tokens (those up to the query) come first and count inside
    the budget; the other pages follow by decreasing bound.

    Adaptations (also in :meth:`describe`, so in the report JSON):

    - GQA: one selection per KV head, by the sum over the group's G query heads of each head's bound
      (an upper bound of the group-summed q.k); Quest selects per query head (it ran on MHA models).
    - Budget in tokens, equal for every method (:func:`hatac.reference.keep_counts`): the last page
      taken is cut to fit (lower slots first), where Quest counts whole pages (and its evaluation script
      keeps at least 3). If the budget is below the current page's token count, only the newest tokens
      of that page (the query's own first) are kept.
    - One-pass perplexity: every position selects over its causal prefix; the pages before the query's
      own page are complete, so their bounds are what decoding would see.
    """

    name = "quest"

    def __init__(self, page: int = 16):
        self.page = page

    def key_state(self, k, layer):
        b, hkv, t, d = k.shape
        p = self.page
        n_pages = -(-t // p)
        kf = k.float()
        pad = n_pages * p - t
        hi = torch.nn.functional.pad(kf, (0, 0, 0, pad), value=float("-inf")).reshape(b, hkv, n_pages, p, d)
        lo = torch.nn.functional.pad(kf, (0, 0, 0, pad), value=float("inf")).reshape(b, hkv, n_pages, p, d)
        return hi.amax(3), lo.amin(3)

    def chunk_scores(self, q, state, q_pos, t, layer):
        page_hi, page_lo = state
        hkv = page_hi.shape[1]
        p = self.page
        n = -(-t // p)
        qf = q.float()
        qp = group_sum(qf.clamp_min(0), hkv)  # (B, Hkv, S, D): sum over the group of max(q, 0)
        qn = group_sum(qf.clamp_max(0), hkv)
        # sum_j sum_d max(q_jd hi_d, q_jd lo_d) = (sum_j q_j^+) . hi + (sum_j q_j^-) . lo
        bound = torch.matmul(qp, page_hi[:, :, :n].transpose(-1, -2)) + torch.matmul(qn, page_lo[:, :, :n].transpose(-1, -2))
        scores = -bound.repeat_interleave(p, dim=-1)[..., :t]
        # The query's own page: always kept, newest token first. Its scores sit below every finite bound
        # (all < -fmax / p), distinct and decreasing with the slot; slots after the query are invalid anyway.
        slot = torch.arange(t, device=q.device).view(1, 1, 1, t)
        start = (q_pos.to(torch.int64) // p * p).view(q_pos.shape[0], 1, -1, 1)  # (B, 1, S, 1)
        own = slot >= start
        fmax = torch.finfo(torch.float32).max
        forced = -(slot - start + 1).clamp(1, p).float() * (fmax / p)
        return torch.where(own, forced, scores)

    def describe(self) -> dict:
        return {
            "name": self.name,
            "page": self.page,
            "current_page": "always kept, inside the budget (as Quest's kernels: page budget includes the last page)",
            "adaptations": [
                "one selection per KV head: bounds summed over the KV group's query heads (Quest selects per query head)",
                "budget counted in tokens like every method: the last page taken is cut to fit (Quest counts whole pages)",
                "one-pass perplexity: each position selects over its causal prefix, as decoding would",
            ],
        }


class Loki(Policy):
    """Loki (Singhania et al., NeurIPS'24): q.k in the first ``rank`` dims of a PCA basis of keys.

    basis[layer]: (Hkv, D, D), columns by decreasing variance (:func:`hatac.evaluation.loki.fit_pca`).
    As Loki fits it: offline, per layer and per KV head, on post-RoPE keys of calibration text (Loki's
    code offers pre- or post-rotary bases and applies either to post-RoPE keys; post-RoPE is its Llama
    setting); keys and queries are projected without subtracting the mean, as Loki's code does.

    Adaptations (also in :meth:`describe`): one selection per KV head by q.k summed over the group's
    query heads (Loki takes a top-k per query head, the KV head's basis repeated over its group); a fixed
    rank (Loki can also pick the rank from an explained-variance threshold); calibration text is hatac's
    (the calibration plays), not Loki's WikiText/C4.
    """

    name = "loki"

    def __init__(self, basis: dict[int, torch.Tensor], rank: int):
        self.basis = basis
        self.rank = rank
        self._dev: dict = {}

    def _p(self, layer, device):
        key = (layer, str(device))
        if key not in self._dev:
            self._dev[key] = self.basis[layer][:, :, : self.rank].to(device=device, dtype=torch.float32).contiguous()
        return self._dev[key]

    def key_state(self, k, layer):
        return torch.matmul(k.float(), self._p(layer, k.device).unsqueeze(0))  # (B, Hkv, T, r)

    def chunk_scores(self, q, k_r, q_pos, t, layer):
        hkv = k_r.shape[1]
        q_r = torch.matmul(group_sum(q.float(), hkv), self._p(layer, q.device).unsqueeze(0))
        return -torch.matmul(q_r, k_r[:, :, :t].transpose(-1, -2))

    def describe(self) -> dict:
        return {
            "name": self.name,
            "rank": self.rank,
            "basis": "PCA of post-RoPE calibration keys, per layer and KV head, no mean subtracted when scoring",
            "adaptations": [
                "one selection per KV head: q.k summed over the KV group's query heads (Loki selects per query head)",
                "fixed rank (Loki can also set it by explained variance); hatac's calibration text, not WikiText/C4",
            ],
        }


class StreamingLLM(Policy):
    """Attention sinks (the first ``sink`` tokens) plus the most recent tokens, up to the budget."""

    name = "streaming"

    def __init__(self, sink: int = 4):
        self.sink = sink

    def chunk_scores(self, q, k, q_pos, t, layer):
        b, hkv = q.shape[0], k.shape[1]
        slot = torch.arange(t, device=q.device, dtype=torch.float32)
        score = torch.where(slot < self.sink, slot - 2 * t, -slot)  # sinks first, then newest first
        return score.view(1, 1, 1, t).expand(b, hkv, q.shape[2], t)

    def describe(self) -> dict:
        return {"name": self.name, "sink": self.sink}
