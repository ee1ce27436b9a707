"""Loki's offline step: a PCA basis of post-RoPE keys per layer and KV head, from calibration text only.

Keys come from the dense model's observe graph (post-RoPE, exactly what the cache holds). The basis is
the eigenvectors of the keys' covariance, by decreasing eigenvalue; Loki then scores q.k over the first
r coordinates of query and key in that basis (:class:`hatac.evaluation.policies.Loki`). With r = head_dim
the basis is a rotation and the score is exact q.k.

Against Loki's paper and code (github.com/hpcgroup/loki, methods/pca_topk): the same fit, per layer and
per KV head (components (H_kv, D, D), repeated over each group's query heads), from keys of calibration
text, the covariance centred on the mean as a PCA is, the mean not subtracted when scoring. Loki offers
pre- and post-rotary bases (both applied to post-RoPE keys); hatac fits post-RoPE keys only, Loki's Llama
setting, since the observe graph gives post-RoPE keys. Differences: the calibration text (hatac's
calibration plays, not WikiText), and the selection per KV head (see the policy's docstring).
"""

from __future__ import annotations

from typing import Callable

import torch


class KeyMoments:
    """Running count, sum and second moment of keys per (layer, KV head), in float64."""

    def __init__(self):
        self.n: dict[int, int] = {}
        self.s1: dict[int, torch.Tensor] = {}
        self.s2: dict[int, torch.Tensor] = {}

    def add(self, layer: int, k: torch.Tensor) -> None:
        """k: (B, Hkv, S, D)."""
        x = k.detach().to(torch.float64).transpose(0, 1).reshape(k.shape[1], -1, k.shape[-1])  # (Hkv, N, D)
        self.n[layer] = self.n.get(layer, 0) + x.shape[1]
        s1, s2 = x.sum(1).cpu(), torch.matmul(x.transpose(1, 2), x).cpu()
        self.s1[layer] = self.s1[layer] + s1 if layer in self.s1 else s1
        self.s2[layer] = self.s2[layer] + s2 if layer in self.s2 else s2

    def basis(self) -> dict[int, torch.Tensor]:
        """{layer: (Hkv, D, D) float32}: principal directions of the keys as columns, most variance first."""
        out = {}
        for layer, n in self.n.items():
            mu = self.s1[layer] / n
            cov = self.s2[layer] / n - mu.unsqueeze(-1) * mu.unsqueeze(-2)
            _, vecs = torch.linalg.eigh(cov)  # ascending eigenvalues
            out[layer] = vecs.flip(-1).to(torch.float32).contiguous()
        return out


def fit_pca(observe: Callable[[torch.Tensor], dict], samples: list[list[int]], progress: Callable[[str], None] | None = None) -> dict[int, torch.Tensor]:
    """PCA bases from ``samples`` (token-id lists) run through ``observe`` ({layer: (q, k)} of one row)."""
    moments = KeyMoments()
    for i, ids in enumerate(samples):
        for layer, (_, k) in observe(torch.tensor([ids])).items():
            moments.add(layer, k)
        if progress:
            progress(f"Loki PCA: calibration sample {i + 1}/{len(samples)} ({len(ids)} tokens)")
    return moments.basis()
