"""Does weighting Hamming scores by the key's norm (HATA's older "norm-weighted" variant) or estimating q.k
from the codes' angle (sign random projection: q.k ~ |q| |k| cos(pi * ham / r)) select the exact top-k
better than plain summed Hamming distance? SmolLM2-135M-Instruct, two 2,048-token evaluation documents,
48 query positions from 1,024 on, layers 2-29, r = 128, budgets 1/32 and 1/16.

    python examples/score_variants_probe.py [learned-W.safetensors ...]   # random W always; learned W optional

(learned W files are what `hatac eval` caches under ~/.cache/hatac/eval, keys layer_<i>). CPU, ~1 min.
The answer recorded in docs/ACCURACY.md: no; both variants are at or below plain Hamming.
"""
from __future__ import annotations

import math
import sys
import time

import torch
from safetensors.torch import load_file

from hatac.data.assets import smollm2_dir
from hatac import artifact
from hatac.evaluation.session import EvalModel
from hatac.evaluation.policies import HashPolicy, Oracle, group_sum
from hatac.evaluation.recall import layer_recall, query_positions
from hatac.texts import eval_documents
from hatac.calibration.calibrate import random_weights


class NormWeighted(HashPolicy):
    """Largest sum over the group of (1 - 2 ham / r) * |k| wins."""

    def key_state(self, k, layer):
        return self.signs(k, self._w(layer, k.device)), k.float().norm(dim=-1)

    def chunk_scores(self, q, state, q_pos, t, layer):
        ks, kn = state
        qs = group_sum(self.signs(q, self._w(layer, q.device)), ks.shape[1])
        return -torch.matmul(qs, ks[:, :, :t].transpose(-1, -2)) * kn[:, :, None, :t]


class AngleEstimate(HashPolicy):
    """Largest estimate of sum over the group of q_j . k = |q_j| |k| cos(pi * ham_j / r) wins."""

    def key_state(self, k, layer):
        return self.signs(k, self._w(layer, k.device)), k.float().norm(dim=-1)

    def chunk_scores(self, q, state, q_pos, t, layer):
        ks, kn = state
        b, hq, s, d = q.shape
        hkv, r = ks.shape[1], ks.shape[-1]
        sq = self.signs(q, self._w(layer, q.device)).reshape(b, hkv, hq // hkv, s, r)
        dot = torch.matmul(sq, ks[:, :, None, :t].transpose(-1, -2))  # (b, hkv, g, s, t) = r - 2 ham
        qn = q.float().norm(dim=-1).reshape(b, hkv, hq // hkv, s, 1)
        est = (qn * torch.cos(math.pi * (r - dot) / (2 * r))).sum(2)
        return -est * kn[:, :, None, :t]


def main(paths: list[str]) -> None:
    m, tok = artifact.load_source_model(str(smollm2_dir()), torch.device("cpu"), torch.float32)
    em = EvalModel(m)
    layers = list(range(2, 30))
    ws = {"random": random_weights(layers, 3, 64, 128, 0)}
    for name in paths:
        sd = load_file(name)
        ws["learned:" + name.split("-")[-1][:6]] = {l: sd[f"layer_{l}"] for l in layers}
    policies = {"oracle": Oracle()}
    for wn, w in ws.items():
        policies[f"{wn} hamming"] = HashPolicy(w, "h")
        policies[f"{wn} norm-weighted"] = NormWeighted(w, "n")
        policies[f"{wn} angle-estimate"] = AngleEstimate(w, "a")
    docs = [d.ids for d in eval_documents(tok, 2048, 2048, n=2)]
    acc = {}
    t0 = time.time()
    for ids in docs:
        x = torch.tensor([ids[:2048]])
        obs = em.observe(x)
        pos = query_positions(x.shape[1], 1024, 48)
        for l in layers:
            q, k = obs[l]
            res = layer_recall(q, k, pos, policies, [1 / 32, 1 / 16], l)
            for p, by_b in res.items():
                for bud, (rs, ms, n) in by_b.items():
                    a = acc.setdefault((p, bud), [0.0, 0.0, 0])
                    a[0] += rs
                    a[1] += ms
                    a[2] += n
    print(f"{time.time() - t0:.0f}s")
    for (p, bud), (rs, ms, n) in sorted(acc.items(), key=lambda kv: (kv[0][1], kv[0][0])):
        print(f"{p:<32} {bud:.4f}  recall {rs / n:.3f}  mass {ms / n:.3f}")


if __name__ == "__main__":
    main(sys.argv[1:])
