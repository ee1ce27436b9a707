"""Calibrating at scale: learned hashing of a Llama-3-8B-shaped model on one GPU from 64K tokens of prompts.

    python examples/calibrate_at_scale.py --prompts 4 --tokens 16384 --out calib-at-scale

Needs a CUDA GPU with about 24 GiB free (15 GiB of bf16 weights, 9 GiB above them at the peak); on an
H200 the default run converts in about a minute (docs/PERFORMANCE.md, "Calibration at scale"). Prints and
writes ``OUT/calibrate_at_scale.json``: the time of each phase, the peak GPU memory above the weights, the
layer groups and the mean recall of random and learned projections on held-out calibration pairs.

The model has random bf16 weights built on the GPU (no download, the model ``hatac bench generate`` times),
so the prompts are random token ids: this measures the calibration's time and memory at this scale, not the
quality of the learned projections (docs/ACCURACY.md measures that on a real model). Collected query/key
pairs are bounded per layer and layers are calibrated in groups of at most
``hatac.calibration.learned.COLLECT_BYTES`` of collected data (one pass over the prompts per group), so no
step holds every layer's pairs at once. With a real model the call is the same::

    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.bfloat16).to("cuda")
    samples = calibration_samples(tokenizer, max_tokens=16384)   # hatac.data; or your own token-id lists
    hm = hatac.convert(model, hatac.HataConfig(hash="learned", calib_effort="full"), samples=samples, progress=print)

(``hatac convert MODEL --calib prompts.jsonl -o OUT`` from the shell, full effort on a GPU by default;
under ``torchrun --nproc-per-node N`` layer i is calibrated on GPU i % N.)
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

import hatac
from hatac.bench.generate import build_model  # the bench's random-weight Llama-3-8B shape
from hatac.calibration import learned as learned_mod


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--prompts", type=int, default=4)
    ap.add_argument("--tokens", type=int, default=16384, help="tokens per prompt")
    ap.add_argument("--layers", type=int, default=32, help="decoder layers (Llama-3-8B has 32; the first 2 stay dense)")
    ap.add_argument("--effort", default="full", choices=("fast", "full"), help="calibration work (HataConfig.calib_effort)")
    ap.add_argument("--out", type=Path, default=Path("calib-at-scale"))
    args = ap.parse_args(argv)
    if not torch.cuda.is_available():
        raise SystemExit("calibrate_at_scale.py needs a CUDA GPU")
    args.out.mkdir(parents=True, exist_ok=True)
    t_start = time.perf_counter()
    model = build_model(args.layers)
    g = torch.Generator().manual_seed(0)
    samples = [torch.randint(0, model.config.vocab_size, (args.tokens,), generator=g).tolist() for _ in range(args.prompts)]
    torch.cuda.synchronize()
    base = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()

    def say(msg: str) -> None:
        print(f"{time.perf_counter() - t0:7.1f}s  {msg}", flush=True)

    cfg = hatac.HataConfig(hash="learned", calib_effort=args.effort, budget=0.0156)
    hm = hatac.convert(model, cfg, samples=samples, progress=say)
    torch.cuda.synchronize()
    cal = hm.manifest["calibration"]
    res = {
        "device": torch.cuda.get_device_name(),
        "prompts": args.prompts,
        "tokens_per_prompt": args.tokens,
        "tokens_total": args.prompts * args.tokens,
        "layers": args.layers,
        "effort": cal["effort"],
        "layer_groups": cal["layer_groups"],
        "collect_bytes_bound": learned_mod.COLLECT_BYTES,
        "seconds_calibration": cal["seconds_total"],
        "seconds_collect": cal["seconds_collect"],
        "seconds_convert": time.perf_counter() - t0,
        "seconds_with_model_build": time.perf_counter() - t_start,
        "weights_gib": base / 2**30,
        "peak_gib": torch.cuda.max_memory_allocated() / 2**30,
        "peak_above_weights_gib": (torch.cuda.max_memory_allocated() - base) / 2**30,
        "mean_recall_random": cal["mean_recall_random"],
        "mean_recall_learned": cal["mean_recall_learned"],
    }
    (args.out / "calibrate_at_scale.json").write_text(json.dumps(res, indent=1))
    print(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
