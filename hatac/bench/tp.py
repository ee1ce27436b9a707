"""``hatac bench tp`` (under ``torchrun --nproc-per-node N``): tensor-parallel decoding on N GPUs against one.

1. **Correctness** (``--check``): rank 0 converts a small fp32 Llama (8 query / 4 KV heads, random hashing
   with a 16-token budget, so top-k selection decides) and saves it; every rank loads it with
   ``hatac.load(..., tp=True)`` and runs prefill logits, whole-text decode-mode logits and greedy
   ``generate`` (static cache, compiled step, CUDA graph with NCCL inside); rank 0 then runs the same on
   one GPU and compares: tokens equal, logits within tolerance.
2. **All-reduce micro-benchmark**: one decode-sized all-reduce ((batch, 1, 4096) bf16) with each variant of
   ``hatac/distributed/allreduce.py`` (NCCL, symmetric-memory one-shot and two-shot): eager latency, latency inside a
   CUDA graph, and the difference from NCCL's result. The fastest variant that matches NCCL is timed below.
3. **Speed**: the Llama-3-8B-shaped random model of ``hatac bench generate`` (its ``build_model`` and
   ``measure``), hatac variant (random hashing, layers 0-1 dense), at one batch and context: first on
   rank 0 alone (one GPU; the other ranks wait), then sharded over all ranks, prefilled once and decoded
   with each all-reduce in turn (NCCL, then the best; a CUDA graph per variant over the same cache).
   Decode tokens/s of each, their ratio and which all-reduce ran are printed and written to ``bench_tp.json``.
"""

from __future__ import annotations

import gc
import json
import time
from pathlib import Path

import torch

CHECK_CONFIG = dict(vocab_size=1024, hidden_size=512, intermediate_size=1024, num_hidden_layers=4, num_attention_heads=8,
                    num_key_value_heads=4, head_dim=64, max_position_embeddings=4096, tie_word_embeddings=False)  # fmt: skip


def _free() -> None:
    torch._dynamo.reset()  # compiled steps hold their model's weights
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def _check_outputs(model, ids, mask, new_tokens: int) -> dict:
    with torch.no_grad():
        prefill = model(ids, attention_mask=mask).logits.float()
        decode = model(ids, attention_mask=mask, hata_mode="decode").logits.float()
        tokens = model.generate(ids, attention_mask=mask, max_new_tokens=new_tokens, do_sample=False, pad_token_id=0)
    return {"prefill": prefill.cpu(), "decode": decode.cpu(), "tokens": tokens.cpu()}


def correctness(group, out: Path, say, batch: int = 4, length: int = 384, new_tokens: int = 32, device: str = "cuda") -> dict:
    """TP outputs of a saved artifact against the same artifact on one GPU (rank 0 compares)."""
    import hatac
    from transformers import LlamaConfig, LlamaForCausalLM

    # Two artifacts of one model: a 16-token budget (top-k selection decides) and one covering the whole
    # text. Sharding changes the GEMM shapes, so q/k differ from one GPU's in the last bits; a hash bit of a
    # projection that close to zero can flip and swap a selected key. So the selective model is held to equal
    # greedy tokens, while logits are compared where no selection is made: prefill, and decode with the full budget.
    art, art_full = out / "tp-check-artifact", out / "tp-check-artifact-full"
    if group.is_main:
        torch.manual_seed(0)
        model = LlamaForCausalLM(LlamaConfig(**CHECK_CONFIG)).eval()
        with torch.no_grad():
            model.lm_head.weight.mul_(8.0)  # peaky logits: greedy is not decided by rounding noise
        for path, budget in ((art, 16), (art_full, 4096)):
            hm = hatac.convert(model, hatac.HataConfig(hash="random", budget=budget, sink=1, recent=4, dense_layers=1))
            hatac.save(hm, path, overwrite=True)
            del hm
        del model
    group.barrier()
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(3, CHECK_CONFIG["vocab_size"], (batch, length), generator=g)
    mask = torch.ones_like(ids)
    mask[-1, : length // 4] = 0  # a left-padded row
    t0 = time.perf_counter()
    tp_model = hatac.load(art, device=device, tp=True)
    dev = tp_model.device
    got = _check_outputs(tp_model, ids.to(dev), mask.to(dev), new_tokens)
    del tp_model
    _free()
    tp_full = hatac.load(art_full, device=device, tp=True)
    got_full = _check_outputs(tp_full, ids.to(dev), mask.to(dev), new_tokens)
    say(f"check: tensor parallel over {group.world} processes ran in {time.perf_counter() - t0:.1f}s")
    del tp_full
    _free()
    group.barrier()
    if not group.is_main:
        group.barrier()
        return {}
    one = hatac.load(art, device=dev)
    ref = _check_outputs(one, ids.to(dev), mask.to(dev), new_tokens)
    del one
    _free()
    one_full = hatac.load(art_full, device=dev)
    ref_full = _check_outputs(one_full, ids.to(dev), mask.to(dev), new_tokens)
    del one_full
    _free()
    valid = mask.bool()
    res = {
        "tokens_equal": bool(torch.equal(got["tokens"], ref["tokens"])),
        "tokens_equal_full_budget": bool(torch.equal(got_full["tokens"], ref_full["tokens"])),
        "new_tokens": new_tokens,
        "max_abs_logit_diff_prefill": float((got["prefill"] - ref["prefill"]).abs().max()),
        "max_abs_logit_diff_decode_full_budget": float((got_full["decode"] - ref_full["decode"])[valid].abs().max()),
        # with selection: how far apart, and how often the argmax still agrees (information, see above)
        "max_abs_logit_diff_decode_selective": float((got["decode"] - ref["decode"])[valid].abs().max()),
        "argmax_agreement_decode_selective": float((got["decode"].argmax(-1) == ref["decode"].argmax(-1))[valid].float().mean()),
        "logit_scale": float(ref["prefill"].abs().max()),
    }
    tol = 1e-3 * max(1.0, res["logit_scale"])
    res["ok"] = (res["tokens_equal"] and res["tokens_equal_full_budget"]
                 and max(res["max_abs_logit_diff_prefill"], res["max_abs_logit_diff_decode_full_budget"]) <= tol)
    say(f"check: greedy tokens {'equal' if res['tokens_equal'] else 'DIFFER'} (16-token budget), "
        f"{'equal' if res['tokens_equal_full_budget'] else 'DIFFER'} (full budget); max |logit diff| prefill "
        f"{res['max_abs_logit_diff_prefill']:.2e}, decode full budget {res['max_abs_logit_diff_decode_full_budget']:.2e} "
        f"(tolerance {tol:.1e}) -> {'OK' if res['ok'] else 'FAILED'}; selective decode: max diff "
        f"{res['max_abs_logit_diff_decode_selective']:.2e}, argmax agreement {res['argmax_agreement_decode_selective']:.4f}")
    group.barrier()
    return res


def _time_step(hm, cache, tok, steps: int, compile: bool) -> tuple[float, torch.Tensor]:
    """Median latency (ms) of ``steps`` replays of a freshly captured static decode step over ``cache``."""
    from hatac.bench.generate import time_steps
    from hatac.runtime.decode_step import StaticDecodeStep

    step = StaticDecodeStep(hm, cache, compile=compile, cuda_graph=True)
    ms, tok = time_steps(step, tok, steps)
    if step.graph is not None:
        step.graph.reset()
    return ms, tok


def measure_modes(hm, batch: int, ctx: int, steps: int, compile: bool, vocab: int, modes: tuple[str, ...]) -> dict:
    """One prefill, then the decode step timed with each all-reduce mode (one CUDA graph each; the cache
    grows by ``steps`` tokens per mode, a negligible change at long contexts)."""
    from hatac.distributed import allreduce
    from hatac.bench.generate import prefill

    cache, logits, prefill_s = prefill(hm, batch, ctx, ctx + steps * len(modes) + 8, vocab)
    res = {"prefill_s": prefill_s, "by_allreduce": {}}
    tok = logits[:, -1:].argmax(-1)
    for m in modes:
        allreduce.reset_counts()
        with allreduce.use(m):
            ms, tok = _time_step(hm, cache, tok, steps, compile)
        rep = allreduce.report()
        res["by_allreduce"][m] = {"step_ms": ms, "tokens_per_s": batch / (ms * 1e-3), "used": rep["used"]}
    res["peak_gb"] = torch.cuda.max_memory_allocated() / 2**30
    del cache, logits, tok
    gc.collect()
    torch.cuda.empty_cache()
    return res


def speed(group, tp: bool, batch: int, ctx: int, budget: float, steps: int, layers: int, compile: bool, say, modes=("nccl",)) -> dict:
    import hatac
    from hatac.distributed import tp as tensor_parallel
    from hatac.bench.generate import build_model, measure
    from hatac.capture import capture

    model = build_model(layers)
    if tp:
        tensor_parallel.shard(model, group)
        _free()
    weight_gb = sum(p.numel() * p.element_size() for p in model.parameters()) / 2**30
    t0 = time.perf_counter()
    hm = hatac.convert(model, hatac.HataConfig(hash="random", budget=budget), captured=capture(model))
    kv = {s.n_kv_heads for s in hm.layers.values()}
    say(f"{'tp' if tp else 'one GPU'}: weights {weight_gb:.1f} GiB/GPU, KV heads per layer {sorted(kv)}, converted in {time.perf_counter() - t0:.1f}s")
    if not tp:
        r = measure(hm, batch, ctx, steps, compile, model.config.vocab_size)
    else:
        r = measure_modes(hm, batch, ctx, steps, compile, model.config.vocab_size, modes)
        for m, row in r["by_allreduce"].items():
            say(f"tp x{group.world} all-reduce {m}: step {row['step_ms']:.3f} ms  {row['tokens_per_s']:.1f} tok/s  (ran: {row['used']})")
        fastest = min(r["by_allreduce"], key=lambda m: r["by_allreduce"][m]["step_ms"])
        r.update(allreduce=fastest, step_ms=r["by_allreduce"][fastest]["step_ms"], tokens_per_s=r["by_allreduce"][fastest]["tokens_per_s"])
    r.update(gpus=group.world if tp else 1, batch=batch, context=ctx, budget=budget, weights_gib_per_gpu=weight_gb)
    say(f"{'tp x' + str(group.world) if tp else 'one GPU'}: b={batch} ctx={ctx} step {r['step_ms']:.3f} ms  {r['tokens_per_s']:.1f} tok/s  "
        f"prefill {r['prefill_s']:.1f}s  peak {r['peak_gb']:.1f} GiB" + (f"  all-reduce {r['allreduce']}" if tp else ""))
    del hm, model
    _free()
    return r


def run(out_dir: str | Path = "bench-tp", batch: int = 8, context: int = 65536, budget: float = 0.0156, steps: int = 32, layers: int = 32,
        compile: bool = True, check: bool = True, baseline: bool = True, say=print, bench: bool = True, allreduce_modes: tuple[str, ...] = (),
        allreduce_max_bytes: int | None = None) -> dict:
    """``allreduce_modes``: the all-reduces to time the TP step with (``hatac bench tp --allreduce``; default:
    NCCL and the micro-benchmark's fastest). ``allreduce_max_bytes``: the fast all-reduces' message limit
    (:class:`hatac.distributed.allreduce.AllReduceOptions`; default: the process's)."""
    import dataclasses

    from hatac.distributed import allreduce

    for m in allreduce_modes:
        allreduce.AllReduceOptions(mode=m)  # an unknown mode is a one-line error before any work
    if allreduce_max_bytes is not None:
        allreduce.configure(dataclasses.replace(allreduce.options(), max_bytes=allreduce_max_bytes))

    from hatac.distributed import groups as distributed

    group, dev = distributed.setup("cuda")
    log = say if group.is_main else (lambda msg: None)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    log(f"{group.world} processes, {torch.cuda.get_device_name(dev)}")
    result: dict = {"device": torch.cuda.get_device_name(dev), "gpus": group.world, "layers": layers, "compile": compile, "steps": steps}
    log(f"all-reduce mode {allreduce.mode()} (fast path up to {allreduce.options().max_bytes} bytes)")
    if check:
        allreduce.reset_counts()
        result["check"] = correctness(group, out, log)
        result["check"]["allreduce"] = allreduce.report()
        log(f"check: all-reduces run {result['check']['allreduce']['used']}; symmetric memory {result['check']['allreduce']['symmetric_memory']}")
    modes = tuple(allreduce_modes)
    if group.world > 1 and bench:
        mb = allreduce.microbench(group.pg.group_name, (batch, 1, 4096))
        result["allreduce_microbench"] = mb
        for v, r in mb["variants"].items():
            log(f"all-reduce ({batch}, 1, 4096) bf16 {v:>8}: " + (f"error {r['error']}" if "error" in r else
                f"eager {r['eager_us']:.1f} us, in a CUDA graph {r['graph_us']:.1f} us, max |diff| vs NCCL {r['max_abs_diff_vs_nccl']:.1e}"))
        result["all_reduce_us"] = mb["variants"]["nccl"].get("eager_us")
        modes = modes or tuple(dict.fromkeys(("nccl", allreduce.best(mb))))
        result["allreduce_modes"] = list(modes)
    if baseline and bench:
        if group.is_main:
            result["one_gpu"] = speed(group, False, batch, context, budget, steps, layers, compile, log)
        group.barrier()
    if group.world > 1 and bench:
        result["tp"] = speed(group, True, batch, context, budget, steps, layers, compile, log, modes)
        if baseline and group.is_main:
            one = result["one_gpu"]["tokens_per_s"]
            result["ratio"] = result["tp"]["tokens_per_s"] / one
            result["ratio_by_allreduce"] = {m: r["tokens_per_s"] / one for m, r in result["tp"]["by_allreduce"].items()}
            for m, x in result["ratio_by_allreduce"].items():
                log(f"decode tokens/s on {group.world} GPUs vs 1 with all-reduce {m}: {result['tp']['by_allreduce'][m]['tokens_per_s']:.1f} / {one:.1f} = {x:.2f}x")
    result["allreduce"] = allreduce.report()
    if group.is_main:
        (out / "bench_tp.json").write_text(json.dumps(result, indent=2))
    group.barrier()
    return result


def allreduce_main(argv: list[str] | None = None) -> None:
    """``torchrun --nproc-per-node N -m hatac.bench.tp [out.json] [label]``: every all-reduce variant over
    decode message sizes (run once per NCCL setting: NCCL reads its environment once per process)."""
    import os
    import sys

    import torch.distributed as dist

    from hatac.distributed import groups as distributed
    from hatac.distributed.allreduce import microbench, report

    args = sys.argv[1:] if argv is None else argv
    group, _ = distributed.setup("cuda")
    label = args[1] if len(args) > 1 else "default"
    env = {k: v for k, v in os.environ.items() if k.startswith(("NCCL_", "TORCH_SYMM", "NVSHMEM_"))}
    res = {"label": label, "torch": torch.__version__, "nccl": str(torch.cuda.nccl.version()), "device": torch.cuda.get_device_name(),
           "world": group.world, "env": env, "sizes": []}
    for batch in (1, 8, 32, 64):
        r = microbench(group.pg.group_name, (batch, 1, 4096))
        res["sizes"].append(r)
        if group.is_main:
            line = "  ".join(f"{v} {x.get('graph_us', float('nan')):.1f}/{x.get('eager_us', float('nan')):.1f}us" + (f" ERR {x['error']}" if "error" in x else "")
                             for v, x in r["variants"].items())
            print(f"[{label}] all-reduce {r['bytes'] // 1024} KiB (graph/eager): {line}", flush=True)
    res["report"] = report()
    if group.is_main and args:
        with open(args[0], "w") as f:
            json.dump(res, f, indent=2)
    group.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    allreduce_main()
