"""Worker processes of tests/test_tp.py: one gloo process group of ``world`` CPU processes.

Each task runs in every process; rank 0's return value is saved for the test to compare with a
one-process run.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import torch


def _samples(n=2, length=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(3, 300, (length,), generator=g).tolist() for _ in range(n)]


def prompts():
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(3, 300, (2, 40), generator=g)
    mask = torch.ones_like(ids)
    mask[1, :5] = 0  # a left-padded row
    return ids, mask


def run_artifact(folder: str, tp: bool) -> dict:
    """Prefill logits, whole-text decode-mode logits and greedy tokens of an artifact."""
    import hatac

    model = hatac.load(folder, device="cpu", tp=tp)
    ids, mask = prompts()
    with torch.no_grad():
        prefill = model(ids, attention_mask=mask).logits
        decode = model(ids, attention_mask=mask, hata_mode="decode").logits
        tokens = model.generate(ids, attention_mask=mask, max_new_tokens=6, do_sample=False, pad_token_id=0)
    return {"prefill": prefill, "decode": decode, "tokens": tokens, "kv_heads": {i: s.n_kv_heads for i, s in model.layers.items()},
            "cache_heads": model.new_cache().specs[max(model.layers)].n_kv_heads}


def calibrate_learned(seed: int = 0) -> dict:
    import hatac
    from models import tiny_model

    cfg = hatac.HataConfig(hash="learned", budget=0.25, rbits=64, dense_layers=2, seed=seed, calib_effort="fast")
    model = hatac.convert(tiny_model("llama"), cfg, samples=_samples())
    return {"weights": model.hash_weights, "calibration": model.manifest["calibration"]}


def _task(name: str, args: tuple):
    if name == "artifact":
        return run_artifact(*args)
    if name == "calibrate":
        return calibrate_learned(*args)
    raise ValueError(name)


def main(rank: int, world: int, port: int, tasks: list, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank))
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    sys.path.insert(0, str(Path(__file__).parent))
    torch.set_num_threads(1)
    import torch.distributed as dist

    from hatac import distributed

    distributed.setup("cpu")
    results = {}
    for key, name, args in tasks:
        try:
            results[key] = _task(name, args)
        except Exception as exc:
            raise RuntimeError(f"task {key} failed on rank {rank}") from exc
    if rank == 0:
        torch.save(results, out)
    dist.barrier()
    dist.destroy_process_group()
