"""One converted model that runs every selection policy: the graphs, the observe graph, and cache helpers.

- ``dense``: the prefill graph (``cache_attention`` on every layer).
- ``sparse``: the decode graph on a chunk (top-k attention at every position of it, equal to feeding the
  tokens one at a time), with the hashed layers' selection made by the policy set on the selector and
  the selection width computed for the policy's budget, as a conversion with that budget would.
- ``observe``: the captured graph with each hashed layer's post-RoPE (q, k) as outputs (dense attention),
  for recall, Loki's PCA and learned-hash calibration.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from hatac import reference
from hatac.runtime.cache import HataCache
from hatac.capture import CapturedGraph
from hatac.config import HataConfig
from hatac.evaluation.policies import Policy
from hatac.evaluation.policy_pass import Selector, UseSelectionPolicy
from hatac.graphs import analyze
from hatac.passes.rewrite.cache_inputs import TOPK_WIDTH

DENSE, SPARSE = "prefill", "decode"


@dataclass
class ModelShape:
    n_layers: int
    n_heads: int
    n_kv_heads: int
    head_dim: int
    hashed_layers: list[int]


class EvalModel:
    """A model converted once (graph W unused: each policy brings its own), run under any policy."""

    def __init__(self, model: torch.nn.Module, dense_layers: int = 2, device: torch.device | str | None = None):
        import hatac

        self.model = model.eval()
        self.device = torch.device(device) if device is not None else next(model.parameters()).device
        self.selector = Selector()
        # rbits 32 and random W: the graph's own codes are dropped by the pass; nothing is calibrated here.
        self.config = HataConfig(rbits=32, budget=512, dense_layers=dense_layers, hash="random")
        with torch.no_grad():
            self.hm = hatac.convert(model, self.config, passes=[UseSelectionPolicy(self.selector)])
        captured = CapturedGraph(self.hm.captured_graph, model, self.hm.has_logits_to_keep)
        self.observe_graph, self.specs, self.observed_layers = analyze(captured, self.config)
        s = next(sp for sp in self.specs.values())
        self.shape = ModelShape(
            n_layers=len(self.specs), n_heads=s.n_heads, n_kv_heads=s.n_kv_heads, head_dim=s.head_dim,
            hashed_layers=[layer for layer, sp in sorted(self.specs.items()) if sp.hashed],
        )

    # -- caches ----------------------------------------------------------------------------------------
    def new_cache(self, capacity: int = 0) -> HataCache:
        return self.hm.new_cache(capacity=capacity)

    @staticmethod
    def truncate(cache: HataCache, length: int) -> None:
        """Forget every slot from ``length`` on (they are overwritten by the next step)."""
        cache.host_lengths = [length] * cache.batch_size
        cache.lengths = torch.full_like(cache.lengths, length)

    # -- runs --------------------------------------------------------------------------------------------
    def _keep(self, s: int, logits_from: int | None) -> int:
        """logits_to_keep as a count of last rows (0: all), the form chunked prefill (long or batched) takes."""
        if logits_from is None:
            return 0
        return s - logits_from

    @torch.no_grad()
    def dense(self, cache: HataCache, ids: torch.Tensor, logits_from: int | None = None) -> torch.Tensor:
        """Dense chunk; logits of chunk rows ``logits_from..`` (all rows when None)."""
        return self.hm.step(cache, ids.to(self.device), None, DENSE, self._keep(ids.shape[1], logits_from))

    @torch.no_grad()
    def sparse(self, cache: HataCache, ids: torch.Tensor, policy: Policy, budget: float, logits_from: int | None = None) -> torch.Tensor:
        """Top-k chunk under ``policy`` at ``budget`` (every row selects, causally)."""
        hm = self.hm
        ids = ids.to(self.device)
        self.selector.set(policy, budget)
        inputs, n_host, n_dev = hm.step_inputs(cache, ids, None, SPARSE, self._keep(ids.shape[1], logits_from))
        max_len = max(a + n for a, n in zip(cache.host_lengths, n_host))
        inputs[TOPK_WIDTH] = reference.topk_width(max_len, budget, policy.force_sink, policy.force_recent)
        logits = hm.decode_graph(**inputs)
        cache.advance(n_host, n_dev)
        return logits

    @torch.no_grad()
    def observe(self, ids: torch.Tensor) -> dict[int, tuple[torch.Tensor, torch.Tensor]]:
        """Dense forward of one row; {hashed layer: (q (1, Hq, S, D), k (1, Hkv, S, D))} post-RoPE."""
        ids = ids.to(self.device)
        feed = {"input_ids": ids, "position_ids": torch.arange(ids.shape[1], device=self.device).unsqueeze(0)}
        if self.hm.has_logits_to_keep:
            feed["logits_to_keep"] = torch.tensor([ids.shape[1] - 1], device=self.device)
        outs = self.observe_graph(**feed)
        qk = outs[1:]
        return {layer: (qk[2 * i], qk[2 * i + 1]) for i, layer in enumerate(self.observed_layers)}
