"""Held-out recall@k of learned vs random hash W on a real model (SmolLM2-135M demo asset).

Captures post-RoPE q/k through a registered attention function (no model copy), feeds them to
hatac.calibration.PairCollector, and calibrates with hatac's default (rescaled inputs) and the paper's
literal training. Slow on CPU (capture of 24 x 1024 tokens: a few minutes); ``--device cuda`` trains there.

    python examples/calibration_recall.py --docs 24 --tokens 1024 --rbits 128 --budget 0.1
"""

from __future__ import annotations

import argparse

import torch
from transformers import AttentionInterface, AutoModelForCausalLM, AutoTokenizer
from transformers.integrations.sdpa_attention import sdpa_attention_forward

from hatac.data.assets import smollm2_dir
from hatac.calibration import PairCollector, TrainConfig, calibrate
from hatac.texts import stdlib_sources


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--docs", type=int, default=24)
    ap.add_argument("--tokens", type=int, default=1024)
    ap.add_argument("--layers", default="2,10,20,28")
    ap.add_argument("--rbits", type=int, default=128)
    ap.add_argument("--budget", type=float, default=0.1)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    path = smollm2_dir()
    tok = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).to(args.device)
    cfg = model.config
    hq, hkv = cfg.num_attention_heads, cfg.num_key_value_heads
    d = getattr(cfg, "head_dim", None) or cfg.hidden_size // hq
    layers = [int(x) for x in args.layers.split(",")]
    col = PairCollector(hq, hkv, d, seed=args.seed)

    def capture(module, q, k, v, mask, **kw):
        if module.layer_idx in layers:
            col.add(module.layer_idx, q[0], k[0])
        return sdpa_attention_forward(module, q, k, v, mask, **kw)

    AttentionInterface.register("hatac_capture", capture)
    model.set_attn_implementation("hatac_capture")
    with torch.no_grad():
        for text in stdlib_sources(n=args.docs).values():
            model(tok(text, return_tensors="pt").input_ids[:, : args.tokens].to(args.device))
    print(f"{col.n_queries(layers[0])} queries, {col.n_keys(layers[0])} keys per layer")
    for name, tc in (("hatac", TrainConfig()), ("paper", TrainConfig.paper())):
        res = calibrate(col, layers, d, hkv, hq, args.rbits, args.budget, seed=args.seed, progress=print, config=tc)
        mean = lambda key: sum(s[key] for s in res.stats.values()) / len(res.stats)  # noqa: E731
        print(f"{name}: recall@{args.budget:g} random {mean('recall_random'):.3f} -> learned {mean('recall_learned'):.3f}")


if __name__ == "__main__":
    main()
