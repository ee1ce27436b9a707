"""How often the select's hint would hit on a real model: the coarse bin holding the top-k threshold, at one
decode step against the next, per layer and KV head (SmolLM2-135M demo asset, real documents, CPU).

The select kernel keeps, per row, the coarse histogram bin (key >> SHIFT, ``hamming_topk.plan``) that held
the k-th smallest key at the previous call; when the new threshold's bin is that one (or, since session 13,
its neighbour on the side of the previous threshold) its fine pass skips its scan (docs/PERFORMANCE.md). This
probe computes the threshold exactly as the kernel does (key = summed Hamming distance + 1, budget as a
fraction of the query's length, no sink or recent) for every query position of each document from
``--start`` on, as consecutive decode steps, and reports the share of steps that hit, for one bin and for
the two-bin window.

    python examples/select_hint_rate.py --docs 2 --tokens 4096 [--weights learned.safetensors]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from transformers import AttentionInterface, AutoModelForCausalLM, AutoTokenizer
from transformers.integrations.sdpa_attention import sdpa_attention_forward

from hatac import reference as ref
from hatac.data.assets import smollm2_dir
from hatac.calibration import random_weights
from hatac.kernels.hamming_topk import plan
from hatac.texts import eval_documents


def threshold_keys(q: torch.Tensor, k: torch.Tensor, w: torch.Tensor, budget: float, start: int) -> torch.Tensor:
    """(Hkv, L - start) k-th smallest key for the queries at positions start..L-1.
    q (Hq, L, D), k (Hkv, L, D), w (Hkv, D, r)."""
    hq, length, _ = q.shape
    hkv = k.shape[0]
    g = hq // hkv
    qb = ref.unpack_bits(ref.hash_encode(q[None].float(), w))[0].float()  # (Hq, L, r)
    kb = ref.unpack_bits(ref.hash_encode(k[None].float(), w))[0].float()  # (Hkv, L, r)
    out = []
    for h in range(hkv):
        qg = qb[h * g : (h + 1) * g, start:]  # (G, S, r)
        # Hamming(q, k) = |q| + |k| - 2 q.k on bits, summed over the group's G query heads.
        dist = qg.sum(-1).sum(0)[:, None] + g * kb[h].sum(-1)[None, :] - 2 * qg.sum(0) @ kb[h].T  # (S, L)
        key = dist.round().long() + 1
        pos = torch.arange(start, length)
        key = key.masked_fill(torch.arange(length)[None, :] > pos[:, None], 1 << 30)
        n_sel = torch.clamp(torch.ceil((pos + 1).double() * budget).long(), min=1)
        theta = key.sort(-1).values.gather(-1, (n_sel - 1)[:, None])[:, 0]
        out.append(theta)
    return torch.stack(out)


def hits(theta: torch.Tensor, shift: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per row and step (the last axis), whether the hint hits, as one bin (the previous threshold's coarse
    bin) and as two bins (that bin and its neighbour on the side of the previous threshold's fine position,
    the window ``hamming_topk`` keeps since session 13)."""
    prev, cur = theta[..., :-1], theta[..., 1:] >> shift
    cb, fine = prev >> shift, prev & ((1 << shift) - 1)
    lo = torch.where(fine < (1 << shift) // 2, cb - 1, cb)
    return cur == cb, (cur >= lo) & (cur <= lo + 1)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--docs", type=int, default=2)
    ap.add_argument("--tokens", type=int, default=4096)
    ap.add_argument("--start", type=int, default=1024, help="first decode position counted")
    ap.add_argument("--rbits", type=int, default=128)
    ap.add_argument("--budgets", default="0.015625,0.03125")
    ap.add_argument("--weights", default=None, help="learned W (safetensors of {layer: W}); random W when absent")
    ap.add_argument("--dense-layers", type=int, default=2)
    args = ap.parse_args()
    path = smollm2_dir()
    tok = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    cfg = model.config
    hq, hkv = cfg.num_attention_heads, cfg.num_key_value_heads
    d = getattr(cfg, "head_dim", None) or cfg.hidden_size // hq
    layers = list(range(args.dense_layers, cfg.num_hidden_layers))
    if args.weights:
        from hatac.evaluation.learned import load_weights

        if not Path(args.weights).is_file():
            raise SystemExit(f"--weights {args.weights}: no such file")
        weights = load_weights(args.weights)
        if weights[layers[0]].shape[0] != hkv:
            raise SystemExit(f"{args.weights}: W has {weights[layers[0]].shape[0]} heads, the model {hkv} KV heads")
    else:
        weights = random_weights(layers, hkv, d, args.rbits, seed=0)
    shift = plan(hq // hkv, weights[layers[0]].shape[2])["SHIFT"]
    budgets = [float(b) for b in args.budgets.split(",")]
    captured: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}

    def capture(module, q, k, v, mask, **kw):
        captured[module.layer_idx] = (q[0], k[0])
        return sdpa_attention_forward(module, q, k, v, mask, **kw)

    AttentionInterface.register("hatac_hint_probe", capture)
    model.set_attn_implementation("hatac_hint_probe")
    same = {b: torch.zeros(len(layers)) for b in budgets}
    near = {b: torch.zeros(len(layers)) for b in budgets}
    steps = 0
    for doc in eval_documents(tok, args.tokens, args.tokens, n=args.docs):
        with torch.no_grad():
            model(torch.tensor([doc.ids]))
        for i, layer in enumerate(layers):
            q, k = captured[layer]
            for b in budgets:
                one, two = hits(threshold_keys(q, k, weights[layer], b, args.start), shift)
                same[b][i] += one.float().sum()
                near[b][i] += two.float().sum()
        steps += hkv * (len(doc.ids) - args.start - 1)
        print(f"{doc.name}: {len(doc.ids)} tokens", flush=True)
    kind = "learned" if args.weights else "random"
    for b in budgets:
        for name, count in (("one bin", same[b]), ("two bins", near[b])):
            rate = count / steps
            print(f"budget {b:.4f} ({kind} W, r {weights[layers[0]].shape[2]}, SHIFT {shift}), {name}: hint hit rate "
                  f"{float(rate.mean()):.3f} (layers: min {float(rate.min()):.3f}, max {float(rate.max()):.3f}); "
                  f"per layer " + " ".join(f"{x:.2f}" for x in rate.tolist()))


if __name__ == "__main__":
    main()
