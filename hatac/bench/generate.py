"""``hatac bench generate``: whole-model decoding, hatac against dense, on one GPU, in one run.

A model of Llama-3-8B's shape (32 layers, hidden 4096, 32 query heads, 8 KV heads, head_dim 128) gets
random bf16 weights directly on the GPU (no download) and is captured once. From that capture it is
converted twice: dense (every layer keeps dense attention: ``cache_attention`` over the same static
cache) and hatac (random hashing, layers 0-1 dense). Both run the same runtime: chunked prefill, a
preallocated cache, the decode step compiled with ``torch.compile`` (optional) and replayed as a CUDA
graph. Per (batch, context, budget) it reports prefill time, the median decode-step latency, decode
tokens per second, peak memory, the speedup over dense, and the step's floor (weight bytes plus the
attention bytes each must read, over the copy bandwidth measured in the same run).
"""

from __future__ import annotations

import dataclasses
import gc
import json
import math
import time
from pathlib import Path

import torch

LLAMA3_8B = dict(
    vocab_size=128256, hidden_size=4096, intermediate_size=14336, num_hidden_layers=32, num_attention_heads=32,
    num_key_value_heads=8, head_dim=128, max_position_embeddings=131072 + 4096, rope_theta=500000.0, tie_word_embeddings=False,
)


def build_model(layers: int, device: str = "cuda", dtype=torch.bfloat16):
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(**{**LLAMA3_8B, "num_hidden_layers": layers})
    cfg._attn_implementation = "sdpa"
    with torch.device(device):
        torch.manual_seed(0)
        model = LlamaForCausalLM(cfg).to(dtype).eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model


def copy_bandwidth(device: str = "cuda") -> float:
    """Bytes read + written per second of a large device-to-device copy."""
    import triton.testing

    src = torch.empty(1 << 30, dtype=torch.uint8, device=device).random_(0, 255)
    dst = torch.empty_like(src)
    ms = triton.testing.do_bench(lambda: dst.copy_(src), warmup=50, rep=200, return_mode="median")
    return 2 * src.numel() / (ms * 1e-3)


def _kv_bytes(cfg, batch: int, tokens: int, dtype_bytes: int = 2) -> int:
    return 2 * cfg.num_hidden_layers * batch * tokens * cfg.num_key_value_heads * cfg.head_dim * dtype_bytes


def attention_floor_bytes(hm, batch: int, ctx: int) -> int:
    """Bytes one decode step's attention must read: dense layers all K/V; hashed layers the key codes plus the
    selected K/V rows."""
    total = 0
    for s in hm.layers.values():
        row = s.n_kv_heads * s.head_dim * 2
        if s.hashed:
            k = min(ctx, int(s.budget) if s.budget >= 1 else math.ceil(s.budget * ctx))
            total += batch * ctx * s.n_kv_heads * s.rbits // 8 + 2 * batch * k * row
        else:
            total += 2 * batch * ctx * row
    return total


def profile_step(step, reps: int = 3, top: int = 24) -> list[dict]:
    """GPU time per kernel of one decode step (the compiled step launched without its CUDA graph: the
    kernels are the same, the profiler attributes them reliably), largest first."""
    from torch.profiler import ProfilerActivity, profile

    saved = step.cache.lengths.clone()
    with torch.no_grad(), profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(reps):
            step._step()
            step.cache.lengths.copy_(saved)
        torch.cuda.synchronize()
    rows = []
    for e in prof.key_averages():
        us = getattr(e, "device_time_total", None) or getattr(e, "cuda_time_total", 0)
        if us > 0:
            rows.append({"kernel": e.key[:90], "us_per_step": us / reps, "calls_per_step": e.count / reps})
    rows.sort(key=lambda r: -r["us_per_step"])
    total = sum(r["us_per_step"] for r in rows)
    return [{"kernel": "(all kernels)", "us_per_step": total, "calls_per_step": sum(r["calls_per_step"] for r in rows)}] + rows[:top]


def time_steps(step, tok: torch.Tensor, steps: int) -> tuple[float, torch.Tensor]:
    """Median GPU latency (ms, CUDA events) of ``steps`` greedy decode steps of ``step``, and the last token."""
    start = [torch.cuda.Event(enable_timing=True) for _ in range(steps)]
    end = [torch.cuda.Event(enable_timing=True) for _ in range(steps)]
    with torch.no_grad():
        for i in range(steps):
            start[i].record()
            out = step(tok)
            end[i].record()
            tok = out[:, -1:].argmax(-1)
    torch.cuda.synchronize()
    times = sorted(s.elapsed_time(e) for s, e in zip(start, end))
    return times[len(times) // 2], tok


def _hint_stats(reset: bool) -> dict:
    import hatac.kernels.registry  # noqa: F401  (the CUDA bodies)
    from hatac.kernels.selection_hint import hint_stats

    return hint_stats("cuda", reset=reset)


def prefill(hm, batch: int, ctx: int, capacity: int, vocab: int) -> tuple[object, torch.Tensor, float]:
    """A static cache of ``capacity`` slots prefilled with ``batch`` random prompts of ``ctx`` tokens (fixed
    seed; peak-memory counter reset first): (cache, last-position logits, prefill seconds)."""
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    gen = torch.Generator(device="cuda").manual_seed(0)
    ids = torch.randint(0, vocab, (batch, ctx), device="cuda", generator=gen)
    cache = hm.new_cache(capacity=capacity, static=True)
    t0 = time.perf_counter()
    with torch.no_grad():
        logits = hm(ids, cache=cache, logits_to_keep=1).logits
    torch.cuda.synchronize()
    return cache, logits, time.perf_counter() - t0


def measure(hm, batch: int, ctx: int, steps: int, compile: bool, vocab: int, profile: bool = False) -> dict:
    from hatac.runtime.decode_step import StaticDecodeStep

    cache, logits, prefill_s = prefill(hm, batch, ctx, ctx + steps + 8, vocab)
    t0 = time.perf_counter()
    # The compiled step is kept on hm: after a second shape it is dynamic and serves the rest of the sweep.
    step = StaticDecodeStep(hm, cache, compile=compile, cuda_graph=True)
    torch.cuda.synchronize()
    build_s = time.perf_counter() - t0
    _hint_stats(reset=True)  # count the timed steps only
    step_ms, _ = time_steps(step, logits[:, -1:].argmax(-1), steps)
    hints = _hint_stats(reset=True)
    prof = profile_step(step) if profile else None
    res = {
        "prefill_s": prefill_s,
        "step_build_s": build_s,  # compile (first use only) + warm-up + CUDA-graph capture
        "step_ms": step_ms,
        "tokens_per_s": batch / (step_ms * 1e-3),
        "peak_gb": torch.cuda.max_memory_allocated() / 2**30,
    }
    if hints["calls"]:  # hashed layers: how often the selection hint let the fine pass skip its scan
        res["select_hint"] = hints
    if prof is not None:
        res["profile"] = prof
    if step.graph is not None:
        step.graph.reset()  # release the graph's private memory pool
    step.graph = step.out = step.cache = None
    del cache, step, logits
    gc.collect()
    torch.cuda.empty_cache()
    return res


def run(out_dir: str | Path = "bench-generate", batches=(1, 4, 8), contexts=(8192, 32768, 65536, 131072), budgets=(0.0156, 0.0313),
        steps: int = 32, layers: int = 32, compile: bool = True, say=print, profile: bool = False, fuse_linears: bool = True,
        options=None) -> dict:
    """``options``: the :class:`hatac.DecodeOptions` every variant decodes with (default: the defaults; its
    ``kernels`` default to the current kernel options); ``hatac bench generate`` sets them from its flags."""
    import hatac
    from hatac.kernels import options as kernel_options
    from hatac.runtime.options import check

    options = check(options)
    from hatac.capture import capture

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    bw = copy_bandwidth()
    say(f"copy bandwidth {bw / 1e12:.2f} TB/s")
    model = build_model(layers)
    cfg = model.config
    weight_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    t0 = time.perf_counter()
    captured = capture(model)
    say(f"captured {layers}-layer model in {time.perf_counter() - t0:.1f}s; weights {weight_bytes / 2**30:.1f} GiB")
    variants = {"dense": hatac.convert(model, hatac.HataConfig(hash="random", dense_layers=layers, fuse_linears=fuse_linears), captured=captured,
                                          options=options)}
    for b in budgets:
        variants[f"hatac@{b:g}"] = hatac.convert(model, hatac.HataConfig(hash="random", budget=b, fuse_linears=fuse_linears), captured=captured,
                                                     options=options)
    kv_heads = {s.n_kv_heads for hm in variants.values() for s in hm.layers.values()}
    if kv_heads != {cfg.num_key_value_heads}:
        say(f"warning: caches hold {sorted(kv_heads)} KV heads per layer, the config {cfg.num_key_value_heads}")
    free = torch.cuda.mem_get_info()[1] - weight_bytes
    rows = []
    for batch in batches:
        for ctx in contexts:
            need = _kv_bytes(cfg, batch, ctx + steps + 8) * 1.15 + 4 * 2**30
            if need > free:
                say(f"skip batch {batch} x {ctx}: needs ~{need / 2**30:.0f} GiB of KV cache, {free / 2**30:.0f} GiB free")
                continue
            dense = None
            for name, hm in variants.items():
                say(f"b={batch} ctx={ctx} {name}: {torch.cuda.memory_allocated() / 2**30:.1f} GiB allocated before")
                try:
                    r = measure(hm, batch, ctx, steps, compile, cfg.vocab_size, profile)
                except torch.OutOfMemoryError as exc:
                    say(f"b={batch} ctx={ctx} {name}: out of memory ({str(exc).splitlines()[0]})")
                    gc.collect()
                    torch.cuda.empty_cache()
                    break
                floor_s = (weight_bytes + attention_floor_bytes(hm, batch, ctx)) / bw
                r.update(variant=name, batch=batch, context=ctx, floor_ms=floor_s * 1e3, of_floor=r["step_ms"] / (floor_s * 1e3))
                if name == "dense":
                    dense = r
                r["speedup"] = dense["step_ms"] / r["step_ms"]
                rows.append(r)
                (out / "bench_generate.json").write_text(json.dumps({"partial": True, "rows": rows}, indent=2))
                say(f"b={batch:<2} ctx={ctx:<6} {name:<12} step {r['step_ms']:7.3f} ms  {r['tokens_per_s']:8.1f} tok/s  x{r['speedup']:.2f}  "
                    f"prefill {r['prefill_s']:.2f}s  peak {r['peak_gb']:.1f} GiB  floor {r['floor_ms']:.3f} ms ({r['of_floor']:.2f}x)"
                    + (f"  select hint hits {r['select_hint']['hit_rate']:.0%}" if "select_hint" in r else ""))
                for p in r.get("profile", []):
                    say(f"    {p['us_per_step']:9.1f} us  x{p['calls_per_step']:<5g} {p['kernel']}")
    from hatac.bench.kernels import _pdl_on

    kernels = options.kernels or kernel_options.get()
    with kernel_options.override(kernels):
        pdl = _pdl_on()
    decode = {k: v for k, v in dataclasses.asdict(options).items() if k != "kernels"}
    result = {"device": torch.cuda.get_device_name(), "copy_bandwidth_Bps": bw, "layers": layers, "compile": compile, "steps": steps,
              "programmatic_dependent_launch": pdl, "select_hint": kernels.hamming_topk.hint,
              "kv_prefetch": kernels.hamming_topk.kv_prefetch, "decode_options": decode, "fuse_linears": fuse_linears, "rows": rows}
    (out / "bench_generate.json").write_text(json.dumps(result, indent=2))
    _plot(rows, out / "bench_generate.png")
    say("\n" + table(rows))
    return result


def table(rows: list[dict]) -> str:
    """One line per (batch, context): dense step, each hatac variant's step and speedup over dense."""
    variants = [v for v in dict.fromkeys(r["variant"] for r in rows) if v != "dense"]
    head = f"{'batch':>5} {'context':>7} {'dense ms':>9}" + "".join(f" {v + ' ms':>16} {'x':>6}" for v in variants)
    lines = [head, "-" * len(head)]
    for batch, ctx in sorted({(r["batch"], r["context"]) for r in rows}):
        at = {r["variant"]: r for r in rows if r["batch"] == batch and r["context"] == ctx}
        dense = at.get("dense")
        line = f"{batch:>5} {ctx:>7} " + (f"{dense['step_ms']:>9.3f}" if dense else f"{'-':>9}")
        for v in variants:
            r = at.get(v)
            line += f" {r['step_ms']:>16.3f} {r['speedup']:>5.2f}x" if r else f" {'-':>16} {'-':>6}"
        lines.append(line)
    return "\n".join(lines)


def merge(paths: list[str | Path], out_dir: str | Path, say=print) -> dict:
    """Join the rows of several runs' bench_generate.json (one sweep split over several calls, e.g. one per
    batch size to stay under a time limit) into one JSON, table and plot. The runs must come from the same
    device, layer count, compile setting and kernel and graph settings (programmatic dependent launch, the
    select's hint and K/V prefetch, the decode options, stacked sibling linears), and no (variant, batch, context) may appear twice."""
    from hatac.errors import HatacError

    runs = []
    for p in paths:
        f = Path(p) / "bench_generate.json" if Path(p).is_dir() else Path(p)
        if not f.is_file():
            raise HatacError(f"no bench_generate.json at {p}")
        runs.append((f, json.loads(f.read_text())))
    keys = ("device", "layers", "compile", "programmatic_dependent_launch", "select_hint", "kv_prefetch", "decode_options", "fuse_linears")
    for f, run in runs:
        if run.get("partial"):
            raise HatacError(f"{f} is a partial run (it stopped before the end); rerun it or leave it out")
        for k in keys:
            if run.get(k) != runs[0][1].get(k):
                raise HatacError(f"{f}: {k} is {run.get(k)!r}, {runs[0][0]} has {runs[0][1].get(k)!r}: runs to merge must match")
    rows, seen = [], {}
    for f, run in runs:
        for r in run["rows"]:
            key = (r["variant"], r["batch"], r["context"])
            if key in seen:
                raise HatacError(f"{key} is in both {seen[key]} and {f}")
            seen[key] = f
            rows.append(dict(r, source=str(f)))
    first = runs[0][1]
    result = {**{k: first.get(k) for k in keys}, "merged_from": [str(f) for f, _ in runs], "rows": rows}
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "bench_generate.json").write_text(json.dumps(result, indent=2))
    _plot(rows, out / "bench_generate.png")
    say(table(rows))
    return result


def _plot(rows: list[dict], path: Path) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return
    fig, ax = plt.subplots(figsize=(7, 4))
    for batch in sorted({r["batch"] for r in rows}):
        for variant in sorted({r["variant"] for r in rows}):
            pts = sorted((r["context"], r["tokens_per_s"]) for r in rows if r["batch"] == batch and r["variant"] == variant)
            if pts:
                ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=f"{variant}, batch {batch}", linestyle="-" if variant != "dense" else "--")
    ax.set_xscale("log", base=2)
    ax.set_xlabel("context (tokens)")
    ax.set_ylabel("decode tokens / s")
    ax.set_title("Llama-3-8B-shaped model, decode throughput")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
