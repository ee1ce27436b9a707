"""Learn one layer's hash projections W (Hkv, D, r) from collected (query, key) pairs.

Relaxed code h(x) = 2 * sigmoid(sigma * x @ W) - 1 (sigma = 0.1), W of the query's KV head for both the
query and its keys. The paper's loss, generalized from its one query per prompt to many (the per-query loss
below is averaged over the sampled query positions of a batch):

    similarity    0.01 / N * sum_{j, i} s_ji ||h(q_j) - h(k_i)||^2   (N = causal keys of the query, j over the
                  layer's query heads, s the labels of labels.py: +20..1 on the top 10%, -1 elsewhere)
    balance       1.0 * sum_j || mean_i (h(q_j) + h(k_i)) / r ||^2
    decorrelation 2.0 * || W^T W - I ||_F   (one Frobenius norm over all KV heads of the layer)

The similarity sum is expanded as |h(q)|^2 sum_i s_i + sum_i s_i |h(k_i)|^2 - 2 h(q) . (s @ h(K)), so no
(pairs x r) tensor is formed: the largest tensor is the label matrix itself.

An optional change (``normalize=True``; off by default, as in the paper, see below): before the
relaxed code, every query and key is rescaled to norm ``code_scale * sqrt(D) / sigma``. sign(x @ W) ignores
a vector's scale, so the learned hash means the same thing; but the relaxed code does not: with the paper's
fixed sigma, how saturated h is (how close the surrogate is to the real sign bits) depends on the model's
q/k norms. The rescale fixes the pre-activation spread at about ``code_scale`` (for the unit-norm columns
that the decorrelation term drives W to), whatever the model. Held-out recall, random W -> paper (raw
inputs) -> hatac (rescaled), mean over layers:

    SmolLM2-135M (D 64, 9/3 heads), 24 documents x 1024 tokens, layers 2/10/20/28:
        r 128, budget 10%: 0.491 -> 0.531 -> 0.567      r 128, budget 64: 0.551 -> 0.596 -> 0.618
        r  64, budget 10%: 0.367 -> 0.436 -> 0.611      r  64, budget 64: 0.448 -> 0.504 -> 0.652
    synthetic.py (D 64, r 32, budget 10%): 0.152 -> 0.193 -> 0.387

code_scale 2 and 10 were within +-0.03 of 5 on the real model. A listwise cross-entropy on the relaxed
group Hamming ranking scored below the rescaled paper loss on the synthetic data and is not kept; a lower
decorrelation weight (0.2) helped on synthetic data with r = D but lost 0.05 on the real model, so the
paper's 2.0 stays.

(Real-model numbers: q/k of SmolLM2's layers captured on standard-library sources, ``hatac.data.texts.stdlib_sources``.)

``group_labels`` (off): label every query head by its KV group's summed q.k, the score the selection and
the recall oracle rank by, instead of by its own q.k. Screened on SmolLM2 r 128, full effort, layers
2/11/20/29, two 4,096-token evaluation documents (``python -m hatac.evaluation.screen``, docs/ACCURACY.md):
recall@1/32 0.462 either way (random 0.394). Likely why: the 3 query heads of a group largely agree on
their top keys, and the heaviest labels (20 down) sit on the keys they share.

Why it is off by default anyway: those held-out numbers use other positions of the calibration prompts.
On evaluation text (docs/ACCURACY.md, ``hatac eval``, SmolLM2, r 128) the rescaled W *lost* to random W
(recall@1/32 0.388 vs 0.416, attention mass 0.637 vs 0.726), while the paper's raw-q/k loss wins on both
(0.434 and 0.736); at r 64 raw q/k gives more attention mass (0.686 vs 0.671) at lower recall (0.367 vs
0.420). The rescale makes the codes blind to key norms, and the heavy keys of a small model (sinks, BOS)
are heavy partly through their norm.

Start: the random-normal W of the sign-random-projection baseline, its columns scaled to unit norm
(``unit_init``; the paper starts from the standard-normal W itself). sign(x @ W) ignores the scale, so the
start is the same hash, but with columns of norm sqrt(D) the relaxed code is saturated and the first
steps only shrink W towards the decorrelation term's W^T W = I, while the held-out recall wobbles. At the
CPU ("fast") effort, whose patience is two evaluations 25 steps apart, that ended training on the start in
most layers. Screened on SmolLM2 (``python -m hatac.evaluation.screen smollm2 --layers ... --rbits 128
--effort fast|full --variant base:unit_init=false --variant unit:``, 2026-12-07, 2-core CPU, recall and
attention mass at 1/32 of the context on two 4,096-token evaluation documents):
    fast, layers 2/6/10/14/18/22/26/29: standard-normal start 7 of 8 layers never beat it, recall 0.420,
        mass 0.733 (random W 0.412 / 0.729); unit start every layer trains, recall 0.481, mass 0.772
    full, layers 2/10/18/26: 0.480 / 0.774 against 0.482 / 0.775 (random 0.416 / 0.733), 100 s -> 74 s
A patience that only counts after 100 steps did as well as the unit start at the fast effort (0.476) and
is not kept.

Optimizer: SGD (lr 0.1, momentum 0.9, weight decay 1e-6), one step per mini-batch
(full batch when one batch holds the layer). Every ``eval_every`` steps, held-out recall@k (metrics.py) is
measured; training stops after ``patience`` evaluations without improvement and returns the best W seen,
the initial W included, so the result never scores below its own initialization on the held-out queries.
The same held-out queries pick the best W and report its recall: a slight optimistic bias (a handful of
evaluations), accepted to keep every collected query usable.
On CPU the run is deterministic (seeded batch order, deterministic algorithms on during training).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import torch

from .collect import PairBatch
from .metrics import oracle_topk, recall_at_k



@dataclass
class TrainConfig:
    """Hyper-parameters of one layer's training; the defaults are the paper's."""

    max_steps: int = 300
    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 1e-6
    sigma: float = 0.1  # slope of the relaxed code
    sim_weight: float = 0.01
    balance_weight: float = 1.0
    decorr_weight: float = 2.0
    normalize: bool = False  # rescale q/k before the relaxed code (see module doc: off by default)
    code_scale: float = 5.0  # pre-activation spread targeted by the rescale
    eval_every: int = 20
    patience: int = 5
    # Start from w_init's columns scaled to unit norm: the same hash (sign ignores scale), but the relaxed
    # code is not saturated and the decorrelation term has nothing to shrink (module doc: why it is on).
    unit_init: bool = True
    max_batch_pairs: int = 1 << 24  # pair entries per padded mini-batch (bounds memory, see collect.py)
    sink: int = 0
    recent: int = 0
    # Label query heads by their KV group's summed q.k (what selection and recall rank by), not their own.
    group_labels: bool = False

    @classmethod
    def paper(cls, **kw) -> "TrainConfig":
        """The paper's training exactly (raw q/k in the relaxed code, standard-normal start)."""
        return cls(**{"normalize": False, "unit_init": False, **kw})


@dataclass
class TrainResult:
    w: torch.Tensor  # best (Hkv, D, r) float32, on the training device
    recall_init: float
    recall_best: float
    steps: int  # optimizer steps taken
    best_step: int
    seconds: float
    history: list[tuple[int, float]] = field(default_factory=list)  # (step, held-out recall)


def relaxed_codes(
    w: torch.Tensor, batch: PairBatch, sigma: float, norm: float | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """h(q) as (P, Hkv, G * n, r) (group-major rows) and h(k) as (P, Hkv, L, r); ``norm`` rescales every
    q and k vector to that norm first (padding rows stay zero)."""
    p, hq, n, d = batch.q.shape
    hkv = batch.k.shape[1]
    q = batch.q.reshape(p, hkv, (hq // hkv) * n, d)
    k = batch.k
    if norm is not None:
        q = q * (norm / q.norm(dim=-1, keepdim=True).clamp_min(1e-12))
        k = k * (norm / k.norm(dim=-1, keepdim=True).clamp_min(1e-12))
    h_q = 2 * torch.sigmoid(sigma * torch.matmul(q, w)) - 1
    h_k = 2 * torch.sigmoid(sigma * torch.matmul(k, w)) - 1
    return h_q, h_k


def _query_mean(x: torch.Tensor, batch: PairBatch) -> torch.Tensor:
    """Mean over a batch's real query rows of x (P, n)."""
    m = batch.qmask
    return x[m].mean() if m.any() else x.sum() * 0


def balance_term(h_q: torch.Tensor, h_k: torch.Tensor, batch: PairBatch) -> torch.Tensor:
    """Per query: sum_j || (h(q_j) + mean over causal keys of h(k)) / r ||^2; mean over queries."""
    p, hkv, gn, r = h_q.shape
    n = batch.pos.shape[1]
    valid = batch.valid.to(h_k.dtype) / batch.n_keys.clamp_min(1).unsqueeze(-1).to(h_k.dtype)
    k_mean = torch.matmul(valid.unsqueeze(1), h_k)  # (P, Hkv, n, r)
    s = (h_q.reshape(p, hkv, gn // n, n, r) + k_mean.unsqueeze(2)) / r
    return _query_mean(s.pow(2).sum((-1, 2)).sum(1), batch)


def decorrelation_term(w: torch.Tensor) -> torch.Tensor:
    """|| W^T W - I ||_F over all KV heads of the layer (one norm)."""
    eye = torch.eye(w.shape[-1], device=w.device, dtype=w.dtype)
    return torch.linalg.vector_norm(torch.matmul(w.transpose(-1, -2), w) - eye)


def paper_similarity(h_q: torch.Tensor, h_k: torch.Tensor, batch: PairBatch) -> torch.Tensor:
    """Per query: 1/N * sum_{j, i} s_ji ||h(q_j) - h(k_i)||^2; mean over queries."""
    p, hkv, gn, r = h_q.shape
    n = batch.pos.shape[1]
    s = batch.labels().reshape(p, hkv, gn, -1)
    k_sq = h_k.pow(2).sum(-1, keepdim=True)  # (P, Hkv, L, 1)
    rows = (
        h_q.pow(2).sum(-1) * s.sum(-1)
        + torch.matmul(s, k_sq).squeeze(-1)
        - 2 * (h_q * torch.matmul(s, h_k)).sum(-1)
    )  # (P, Hkv, G * n)
    per_query = rows.reshape(p, hkv, gn // n, n).sum((1, 2)) / batch.n_keys.clamp_min(1)
    return _query_mean(per_query, batch)


def layer_loss(w: torch.Tensor, batch: PairBatch, cfg: TrainConfig) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Total loss of one mini-batch and its parts (detached, for logging)."""
    norm = cfg.code_scale * math.sqrt(w.shape[1]) / cfg.sigma if cfg.normalize else None
    h_q, h_k = relaxed_codes(w, batch, cfg.sigma, norm)
    sim = cfg.sim_weight * paper_similarity(h_q, h_k, batch)
    bal = cfg.balance_weight * balance_term(h_q, h_k, batch)
    dec = cfg.decorr_weight * decorrelation_term(w)
    total = sim + bal + dec
    return total, {"similarity": sim.detach(), "balance": bal.detach(), "decorrelation": dec.detach()}


class _Deterministic:
    """torch.use_deterministic_algorithms(True) for the duration of a CPU run, then restored."""

    def __init__(self, enabled: bool):
        self.enabled = enabled

    def __enter__(self):
        self.prev = (torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled())
        if self.enabled:
            torch.use_deterministic_algorithms(True, warn_only=True)

    def __exit__(self, *exc):
        torch.use_deterministic_algorithms(self.prev[0], warn_only=self.prev[1])


def train_layer(
    train_batches: list[PairBatch],
    val_batches: list[PairBatch],
    w_init: torch.Tensor,
    budget: float,
    cfg: TrainConfig | None = None,
    seed: int = 0,
) -> TrainResult:
    """Train W from ``w_init`` on ``train_batches``, early-stopping on recall@k over ``val_batches``.

    All batches must be on one device; training runs there. ``val_batches`` empty: training batches
    are used for validation (small data only).
    """
    cfg = cfg or TrainConfig()
    if not train_batches:
        raise ValueError("train_layer: no training batches")
    val_batches = val_batches or train_batches
    device = train_batches[0].q.device
    t0 = time.perf_counter()
    with _Deterministic(device.type == "cpu"), torch.no_grad():
        oracles = [oracle_topk(b, budget, cfg.sink, cfg.recent) for b in val_batches]

    def evaluate(w: torch.Tensor) -> float:
        with torch.no_grad():
            return recall_at_k(w.detach(), val_batches, budget, cfg.sink, cfg.recent, oracles)

    for b in train_batches:
        b.set_group_labels(cfg.group_labels)
    w = w_init.detach().to(device=device, dtype=torch.float32).clone()
    if cfg.normalize or cfg.unit_init:
        # Unit columns: the same hash as w_init (sign ignores scale), but starting where the decorrelation
        # term would take ~50 steps to shrink a standard-normal W to.
        w = w / w.norm(dim=1, keepdim=True).clamp_min(1e-12)
    w.requires_grad_(True)
    opt = torch.optim.SGD([w], lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    gen = torch.Generator().manual_seed(seed)
    with _Deterministic(device.type == "cpu"):
        best = init = evaluate(w)
        best_w, best_step, bad, step = w.detach().clone(), 0, 0, 0
        history = [(0, init)]
        order: list[int] = []
        while step < cfg.max_steps:
            if not order:
                order = torch.randperm(len(train_batches), generator=gen).tolist()
            batch = train_batches[order.pop()]
            with torch.enable_grad():
                loss, _ = layer_loss(w, batch, cfg)
                opt.zero_grad(set_to_none=True)
                loss.backward()
            if not math.isfinite(float(loss.detach())):
                break
            opt.step()
            step += 1
            if step % cfg.eval_every == 0 or step == cfg.max_steps:
                rec = evaluate(w)
                history.append((step, rec))
                if rec > best:
                    best, best_w, best_step, bad = rec, w.detach().clone(), step, 0
                else:
                    bad += 1
                    if bad >= cfg.patience:
                        break
    return TrainResult(best_w, init, best, step, best_step, time.perf_counter() - t0, history)
