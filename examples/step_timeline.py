"""Probe (GPU): the timeline of one CUDA-graph-replayed decode step of the Llama-3-8B-shaped bench model:
where the GPU is idle between kernels, and what one hashed layer's kernels cost in sequence.

    PYTHONPATH=. python examples/step_timeline.py [--batch 8] [--context 32768] [--budget 0.0156] [--out DIR]

Why: ``hatac bench generate --profile`` sums GPU time per kernel, which says nothing about the gaps between
kernels, and under programmatic dependent launch a kernel's time includes its wait for the one in front.
This traces graph replays (CUPTI records the kernels a graph launches) and prints, for one step: its span,
the time no kernel runs, the idle and overlapped time at each kind of boundary (previous kernel -> next
kernel), and one hashed layer kernel by kernel. Writes ``timeline.json`` (and the Chrome trace) to --out.
"""
from __future__ import annotations

import argparse
import collections
import json
import re
from pathlib import Path

import torch


def short(name: str) -> str:
    """A kernel's family: hatac's kernels by name, inductor's by what they fuse, cuBLAS as gemm."""
    if name.startswith("triton_"):
        parts = name.split("_")
        if "rsqrt" in parts:  # an RMSNorm, whatever else it fuses (its consumer's name may say silu)
            return "inductor:rmsnorm" + ("+embedding" if "embedding" in parts else "")
        tags = [t for t in ("silu", "cos", "index") if t in parts]
        return "inductor:" + ("+".join(tags) or parts[1])
    if "nvjet" in name or "gemm" in name or "cutlass" in name:
        return "cublas"
    m = re.match(r"_?(\w+?)_kernel", name)
    return m.group(1) if m else name[:30]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--context", type=int, default=32768)
    ap.add_argument("--budget", type=float, default=0.0156)
    ap.add_argument("--layers", type=int, default=32)
    ap.add_argument("--replays", type=int, default=3)
    ap.add_argument("--out", default="step-timeline")
    args = ap.parse_args()
    import hatac
    from hatac.bench_generate import build_model, prefill, time_steps
    from hatac.capture import capture
    from hatac.static_decode import StaticDecodeStep
    from torch.profiler import ProfilerActivity, profile

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    model = build_model(args.layers)
    hm = hatac.convert(model, hatac.HataConfig(hash="random", budget=args.budget), captured=capture(model))
    cache, logits, _ = prefill(hm, args.batch, args.context, args.context + 64, model.config.vocab_size)
    step = StaticDecodeStep(hm, cache, compile=True, cuda_graph=True)
    tok = logits[:, -1:].argmax(-1)
    ms, tok = time_steps(step, tok, 16)
    print(f"step {ms:.3f} ms (median of 16, CUDA events)")
    with torch.no_grad(), profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(args.replays):
            tok = step(tok)[:, -1:].argmax(-1)
        torch.cuda.synchronize()
    trace = out / "trace.json"
    prof.export_chrome_trace(str(trace))
    ev = [e for e in json.loads(trace.read_text())["traceEvents"] if e.get("ph") == "X" and e.get("cat") == "kernel"]
    ev.sort(key=lambda e: e["ts"])
    print(f"{len(ev)} kernels traced over {args.replays} replays")
    # one step: the replay's kernels, split at the argmax/embedding boundary by count
    per = len(ev) // args.replays
    one = ev[per:2 * per] if args.replays > 1 else ev
    t0 = one[0]["ts"]
    span = one[-1]["ts"] + one[-1]["dur"] - t0
    busy, end = 0.0, t0
    for e in one:
        s, f = e["ts"], e["ts"] + e["dur"]
        if f > end:
            busy += f - max(s, end)
            end = f
    print(f"one step: {len(one)} kernels, span {span:.1f} us, no kernel running {span - busy:.1f} us")
    pairs = collections.defaultdict(lambda: [0, 0.0, 0.0])
    fams = collections.defaultdict(lambda: [0, 0.0])
    for a, b in zip(one, one[1:]):
        gap = b["ts"] - (a["ts"] + a["dur"])
        p = pairs[(short(a["name"]), short(b["name"]))]
        p[0] += 1
        p[1] += max(gap, 0.0)
        p[2] += max(-gap, 0.0)
    for e in one:
        f = fams[short(e["name"])]
        f[0] += 1
        f[1] += e["dur"]
    print(f"\n{'kernel':<28} {'calls':>5} {'us':>8}")
    for k, (n, us) in sorted(fams.items(), key=lambda kv: -kv[1][1]):
        print(f"{k:<28} {n:>5} {us:>8.1f}")
    print(f"\n{'boundary':<56} {'count':>5} {'idle us':>8} {'overlap us':>10}")
    for (a, b), (n, idle, ov) in sorted(pairs.items(), key=lambda kv: -kv[1][1]):
        print(f"{a + ' -> ' + b:<56} {n:>5} {idle:>8.1f} {ov:>10.1f}")
    # one hashed layer: from the 16th layer's first norm to the next layer's
    # two RMSNorms a layer: inductor's, or hatac::add_rms_norm's kernel (FuseAddRMSNorm; the first layer's stays inductor's)
    starts = [i for i, e in enumerate(one) if short(e["name"]) == "add_rms_norm" or short(e["name"]).startswith("inductor:rmsnorm")]
    rows = []
    if len(starts) > 20:
        lo, hi = starts[2 * 15], starts[2 * 16]
        base = one[lo]["ts"]
        print(f"\none hashed layer (kernels {lo}-{hi - 1}): {one[hi]['ts'] - base:.1f} us")
        print(f"{'kernel':<40} {'start':>7} {'dur':>6} {'gap before':>10}")
        prev_end = None
        for e in one[lo:hi]:
            gap = (e["ts"] - prev_end) if prev_end is not None else 0.0
            rows.append({"kernel": e["name"][:80], "start_us": e["ts"] - base, "dur_us": e["dur"], "gap_before_us": gap})
            print(f"{short(e['name']):<40} {e['ts'] - base:>7.1f} {e['dur']:>6.1f} {gap:>10.1f}")
            prev_end = e["ts"] + e["dur"]
    (out / "timeline.json").write_text(json.dumps({
        "batch": args.batch, "context": args.context, "budget": args.budget, "step_ms": ms, "span_us": span,
        "idle_us": span - busy, "kernels": len(one),
        "families": {k: {"calls": n, "us": us} for k, (n, us) in fams.items()},
        "boundaries": [{"from": a, "to": b, "count": n, "idle_us": i, "overlap_us": o} for (a, b), (n, i, o) in pairs.items()],
        "layer": rows}, indent=2))


if __name__ == "__main__":
    main()
