"""Dense-only check of the RULER-style tasks on the bundled SmolLM2-135M-Instruct: can the model do them?

    python examples/tasks_dense_check.py --lengths 1024 --trials 5

Runs each task's samples (seeds ``0-0``, ``0-1``, ...; the same ones ``hatac eval --task`` draws with seed 0)
through the evaluation's cache protocol with dense attention only, and prints every answer and the mean
score per task and length (RULER string match). See docs/ACCURACY.md, "Long-context tasks".
"""

from __future__ import annotations

import argparse
import json
import time

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from hatac.data.assets import smollm2_dir
from hatac.evaluation.session import EvalModel
from hatac.evaluation.task_eval import run_sample
from hatac.evaluation.tasks import TASKS, TaskBuilder, eval_haystack


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--lengths", default="1024", help="comma-separated prompt lengths in tokens")
    ap.add_argument("--trials", type=int, default=5)
    ap.add_argument("--tasks", default=",".join(TASKS))
    args = ap.parse_args()
    folder = smollm2_dir()
    tok = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    em = EvalModel(model, dense_layers=2)
    builder = TaskBuilder(tok, eval_haystack())
    out = {}
    for length in (int(x) for x in args.lengths.split(",")):
        for task in args.tasks.split(","):
            scores = []
            for t in range(args.trials):
                s = builder.build(task, length, f"0-{t}")
                t0 = time.time()
                score, text = run_sample(em, tok, s, {}, [])["dense"]
                scores.append(score)
                print(f"{length} {task} #{t}: {s.length} tokens, score {score:.2f}, expected {s.answers}, answer {text!r} ({time.time() - t0:.0f}s)", flush=True)
            out[f"{task}@{length}"] = round(sum(scores) / len(scores), 3)
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
