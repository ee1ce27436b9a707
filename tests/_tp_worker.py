"""Worker processes of tests/distributed/test_tp.py: one gloo process group of ``world`` CPU processes.

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


def run_artifact(folder: str, tp: bool, allreduce_mode: str = "auto") -> dict:
    """Prefill logits, whole-text decode-mode logits and greedy tokens of an artifact, and (tensor parallel)
    which all-reduces ran and how many the graphs hold."""
    import hatac
    from hatac.distributed import allreduce

    model = hatac.load(folder, device="cpu", tp=tp)
    ids, mask = prompts()
    allreduce.reset_counts()
    with torch.no_grad(), allreduce.use(allreduce_mode):
        prefill = model(ids, attention_mask=mask).logits
        decode = model(ids, attention_mask=mask, hata_mode="decode").logits
        tokens = model.generate(ids, attention_mask=mask, max_new_tokens=6, do_sample=False, pad_token_id=0)
    nodes = {name: sum(1 for n in getattr(model, name).graph.nodes if n.target is torch.ops.hatac.all_reduce.default)
             for name in ("prefill_graph", "decode_graph")}
    return {"prefill": prefill, "decode": decode, "tokens": tokens, "kv_heads": {i: s.n_kv_heads for i, s in model.layers.items()},
            "cache_heads": model.new_cache().specs[max(model.layers)].n_kv_heads, "allreduce_nodes": nodes,
            "allreduce": allreduce.report(), "layers": model.hf_model.config.num_hidden_layers}


def allreduce_ops(world: int) -> dict:
    """hatac::all_reduce under every mode on this (gloo) group: the sum, and the variant that ran; then the
    symmetric-memory setup failing on one rank only (rank 1 at its local checks, rank 0 later, at the
    check) must leave every rank on the fallback, not hang."""
    import torch.distributed as dist

    from hatac.distributed import allreduce

    rank, name = dist.get_rank(), dist.group.WORLD.group_name
    x = torch.arange(24, dtype=torch.float32).view(2, 1, 12) * (rank + 1)
    out = {}
    for m in allreduce.MODES:
        allreduce.reset_counts()
        with allreduce.use(m):
            out[m] = (torch.ops.hatac.all_reduce(x, name), allreduce.report()["used"])
    real = allreduce._local_alloc
    if rank == 0:  # pretend this rank got a buffer: only rank 1 fails locally
        allreduce._local_alloc = lambda device, dtype, world: torch.zeros(64, dtype=dtype)
    import torch.distributed._symmetric_memory as symm_mem

    real_rdv = symm_mem.rendezvous
    try:
        one_fails = allreduce._symm_setup(name, torch.device("cpu"), torch.float32 if rank == 0 else torch.float16)
        allreduce._local_alloc = lambda device, dtype, world: torch.zeros(64, dtype=dtype)
        symm_mem.rendezvous = lambda buf, group: None
        check_fails = allreduce._symm_setup(name, torch.device("cpu"), torch.float32)  # the CPU tensors fail the one-shot check
    finally:
        allreduce._local_alloc, symm_mem.rendezvous = real, real_rdv
    return {"modes": out, "one_fails": (one_fails.ready, one_fails.error), "check_fails": (check_fails.ready, check_fails.error)}


def calibrate_learned(seed: int = 0) -> dict:
    import hatac
    from models import tiny_model

    cfg = hatac.HataConfig(hash="learned", budget=0.25, rbits=64, dense_layers=2, seed=seed, calib_effort="fast")
    model = hatac.convert(tiny_model("llama"), cfg, samples=_samples())
    return {"weights": model.hash_weights, "calibration": model.manifest["calibration"]}


def gpu_allreduce() -> dict:
    """On NCCL GPUs: the symmetric-memory variants against NCCL's all-reduce, eagerly, replayed from a CUDA
    graph and compiled with torch.compile inside one; and the same bits on every rank."""
    import torch.distributed as dist

    from hatac.distributed import allreduce

    rank, name = dist.get_rank(), dist.group.WORLD.group_name
    dev = torch.device("cuda", torch.cuda.current_device())
    res = {"eager": {}, "ranks_equal": {}}
    for dtype in (torch.bfloat16, torch.float32):
        for shape in ((8, 1, 4096), (1, 1, 4096), (3, 1, 40), (32, 1, 4096)):
            g = torch.Generator(device=dev).manual_seed(rank)
            x = torch.randn(*shape, generator=g, device=dev).to(dtype)
            with allreduce.use("nccl"):
                ref = torch.ops.hatac.all_reduce(x, name)
            for m in ("one_shot", "two_shot", "auto"):
                with allreduce.use(m):
                    got = torch.ops.hatac.all_reduce(x, name)
                res["eager"][(m, str(dtype), shape)] = (got.cpu(), ref.cpu())
                both = [torch.empty_like(got) for _ in range(dist.get_world_size())]
                dist.all_gather(both, got)
                res["ranks_equal"][(m, str(dtype), shape)] = all(torch.equal(b, got) for b in both)

    def chain(y):
        for _ in range(8):
            y = torch.ops.hatac.all_reduce(y, name) * 0.5
        return y

    compiled = torch.compile(lambda y: torch.ops.hatac.all_reduce(y * 2.0, name) + 1.0, fullgraph=True)
    x = torch.randn(8, 1, 4096, generator=torch.Generator(device=dev).manual_seed(10 + rank), device=dev).to(torch.bfloat16)
    with allreduce.use("nccl"):
        want_chain, want_compiled = chain(x), compiled(x)
    out = {}
    for m in ("one_shot", "two_shot"):
        allreduce.reset_counts()
        with allreduce.use(m):
            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):
                chain(x), compiled(x)
            torch.cuda.current_stream().wait_stream(side)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                got_chain, got_compiled = chain(x), compiled(x)
        graph.replay()
        torch.cuda.synchronize()
        out[m] = {"chain": (got_chain.cpu(), want_chain.cpu()), "compiled": (got_compiled.cpu(), want_compiled.cpu()),
                  "used": allreduce.report()["used"]}
    res["graph"] = out
    res["report"] = allreduce.report()
    return res


def _task(name: str, args: tuple):
    if name == "artifact":
        return run_artifact(*args)
    if name == "calibrate":
        return calibrate_learned(*args)
    if name == "allreduce":
        return allreduce_ops(*args)
    if name == "gpu_allreduce":
        return gpu_allreduce()
    raise ValueError(name)


def main(rank: int, world: int, port: int, tasks: list, out: str, device: str = "cpu") -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank))
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    sys.path.insert(0, str(Path(__file__).parent))
    torch.set_num_threads(1)
    import torch.distributed as dist

    from hatac.distributed import groups as distributed

    distributed.setup(device)
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
