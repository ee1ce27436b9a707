"""``hatac bench kernels``: one HATA decode step on the GPU against dense SDPA decode.

For each batch size, context length and budget it times (triton.testing.do_bench, median, L2 flushed
between repetitions) dense ``scaled_dot_product_attention(enable_gqa=True)`` over the full cache and
hatac's three decode stages (hash_encode_step, hamming_topk, sparse_attention), alone and together. Every
timed region is replayed from a CUDA graph, as a decode step runs in production, so the numbers are GPU
time; plain eager launches are timed too (``*_plain_ms``), which on a slow host measure Python launch
overhead more than the GPU. It reports the speedup over dense, the memory floor of the step
(the bytes it must read over the copy bandwidth measured in the same run) and the fraction of that floor
reached, the time a plain gather of the selected K and V rows takes (``gather_ms``: random 256-byte rows
do not stream at copy bandwidth), the step's reads alone (``reads_ms``: a plain stream of every key code,
then that gather, in one graph; ``reads_speedup`` is dense over it, the most a step that reads both could
gain), and the context where hatac starts to beat dense. The kernels are first checked against the
references. Results go to ``out_dir`` as JSON and a PNG plot.
"""

from __future__ import annotations

import functools
import json
import math
import platform
import sys
import time
from pathlib import Path
from dataclasses import asdict

import torch

from hatac import reference as ref
from hatac.kernels import options

DEFAULT_CONTEXTS = (1024, 2048, 4096, 8192, 16384, 32768, 65536, 131072)
DEFAULT_BUDGETS = (1 / 64, 1 / 32)  # 1.56% and 3.13%: 512 / 1024 tokens at 32K, 2048 / 4096 at 128K
DEVICE = "cuda"  # tests of this module's logic swap in "cpu" (with Triton's interpreter)


def _kernels():
    import hatac.kernels.registry  # noqa: F401  (registers the CUDA bodies)

    mods = sys.modules
    return (
        mods["hatac.kernels.hash_encode"],
        mods["hatac.kernels.hamming_topk"],
        mods["hatac.kernels.sparse_attention"],
    )


def _bench(fn) -> float:
    """Median milliseconds of fn, events around each call, L2 flushed in between."""
    from triton.testing import do_bench

    return float(do_bench(fn, warmup=25, rep=200, return_mode="median"))


def _graph_bench(fn) -> float:
    """Median milliseconds of fn replayed from a CUDA graph (launch overhead removed)."""
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        fn()
    torch.cuda.current_stream().wait_stream(s)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        fn()
    return _bench(graph.replay)


def _pdl_on() -> bool:
    """Whether hatac's kernels launched with programmatic dependent launch in this run."""
    from hatac.kernels._common import pdl_flag

    return pdl_flag(torch.empty(0, device=DEVICE))


def copy_bandwidth(n_bytes: int = 2 << 30) -> float:
    """Device-to-device copy bandwidth in bytes/s, counting bytes read plus bytes written."""
    src = torch.empty(n_bytes // 2, dtype=torch.bfloat16, device=DEVICE).uniform_()
    dst = torch.empty_like(src)
    ms = _bench(lambda: dst.copy_(src))
    return 2 * n_bytes / (ms * 1e-3)


def check(seed: int = 0) -> dict:
    """Kernels against the references on one decode-shaped problem (and a short prefill encode)."""
    enc, sel, att = _kernels()
    gen = torch.Generator().manual_seed(seed)
    b, hq, hkv, d, r, t = 2, 32, 8, 128, 128, 6000
    dev, dt = DEVICE, torch.bfloat16
    q = torch.randn(b, hq, 1, d, generator=gen).to(dev, dt)
    kn = torch.randn(b, hkv, 1, d, generator=gen).to(dev, dt)
    w = torch.randn(hkv, d, r, generator=gen).to(dev)
    kc = torch.randn(b, hkv, t, d, generator=gen).to(dev, dt)
    vc = torch.randn(b, hkv, t, d, generator=gen).to(dev, dt)
    pos = torch.tensor([[t - 1], [t // 3]], device=dev)
    codes = enc.hash_encode(kc, w)
    codes_ref = ref.hash_encode(kc.cpu(), w.cpu())
    enc_bits = float((ref.unpack_bits(codes.cpu() ^ codes_ref)).float().mean())
    codes_ref = codes_ref.to(dev)
    cr = codes_ref.clone()
    qc = enc.hash_encode_step(q, kn, w, codes_ref, pos)
    qc_ref = ref.hash_encode_step(q.cpu(), kn.cpu(), w.cpu(), cr.cpu().clone(), pos.cpu())
    step_bits = float((ref.unpack_bits(qc.cpu() ^ qc_ref)).float().mean())
    res = {"encode_bit_mismatch": enc_bits, "encode_step_bit_mismatch": step_bits}
    for budget in DEFAULT_BUDGETS:
        k = ref.topk_width(t, budget)
        idx = sel.hamming_topk(qc_ref.to(dev), codes_ref, pos, k, budget, k_cache=kc, v_cache=vc)  # as decode calls it
        idx_ref = ref.hamming_topk(qc_ref, codes_ref.cpu(), pos.cpu(), k, budget)
        out = att.sparse_attention(q, kc, vc, idx, 1 / math.sqrt(d))
        out_ref = ref.sparse_attention(q.cpu().double(), kc.cpu().double(), vc.cpu().double(), idx_ref, 1 / math.sqrt(d))
        res[f"select_exact_budget_{budget:.4f}"] = bool(torch.equal(idx.cpu(), idx_ref))
        res[f"attention_rel_err_budget_{budget:.4f}"] = float((out.cpu().double() - out_ref).norm() / out_ref.norm())
    res["ok"] = (
        enc_bits < 1e-4
        and step_bits < 1e-4
        and all(v for key, v in res.items() if key.startswith("select_exact"))
        and all(v < 1e-2 for key, v in res.items() if key.startswith("attention_rel_err"))
    )
    return res


@functools.cache
def gather_kernel():
    """A Triton kernel that only reads gathered cache rows (sums them into one float a program): what a
    plain gather of the selected K and V rows costs on this GPU. K row ``r`` at ``k_ptr + r * ROW``, V row
    at ``v_ptr + r * ROW`` (``ROW`` = D for separate caches, 2 D for a layout with a token's K and V side by
    side)."""
    import triton
    import triton.language as tl

    @triton.jit
    def _gather_sum(k_ptr, v_ptr, rows_ptr, out_ptr, K, CHUNK, ROW, D: tl.constexpr, BLOCK_N: tl.constexpr):
        row = tl.program_id(0)
        piece = tl.program_id(1)
        d = tl.arange(0, D)
        acc = tl.zeros((BLOCK_N, D), tl.float32)
        hi = tl.minimum(piece * CHUNK + CHUNK, K)
        for n0 in range(piece * CHUNK, hi, BLOCK_N):
            n = n0 + tl.arange(0, BLOCK_N)
            r = tl.load(rows_ptr + row.to(tl.int64) * K + n, mask=n < hi, other=-1)
            m = (r >= 0)[:, None]
            acc += tl.load(k_ptr + r[:, None] * ROW + d[None, :], mask=m, other=0.0).to(tl.float32)
            acc += tl.load(v_ptr + r[:, None] * ROW + d[None, :], mask=m, other=0.0).to(tl.float32)
        tl.store(out_ptr + row * tl.num_programs(1) + piece, tl.sum(tl.sum(acc, axis=1), axis=0))

    return _gather_sum


def _fastest(launches) -> tuple[float, object]:
    """(graph-timed ms, launch) of the fastest of ``launches``."""
    return min(((_graph_bench(launch), launch) for launch in launches), key=lambda pair: pair[0])


def gather_launches(k_rows: torch.Tensor, v_rows: torch.Tensor, rows: torch.Tensor, row: int, d: int,
                    programs=(512, 2048), blocks=(64,)) -> list:
    """Launches of :func:`gather_kernel` reading the K and V rows numbered in ``rows`` ((n, k) int64, -1 =
    none; row r at ``k_rows`` / ``v_rows`` + r * ``row`` elements), one a launch geometry: about
    ``programs`` programs, each gathering ``blocks`` rows a step."""
    import triton

    gather = gather_kernel()
    n, k = rows.shape
    launches = []
    for target in programs:
        for block in blocks:
            pieces = max(1, min(k // block, triton.cdiv(target, n)))
            chunk = triton.cdiv(triton.cdiv(k, pieces), block) * block
            pieces = triton.cdiv(k, chunk)
            out = torch.empty(n * pieces, device=rows.device)
            launches.append(functools.partial(gather[(n, pieces)], k_rows, v_rows, rows, out, k, chunk, row, D=d, BLOCK_N=block))
    return launches


@functools.cache
def stream_kernel():
    """A Triton kernel that only streams a tensor (sums ``ITERS`` blocks of int32 words into one int a
    program): the key codes read once, at the speed a plain read reaches, with no scoring."""
    import triton
    import triton.language as tl

    @triton.jit
    def _stream_sum(x_ptr, out_ptr, N, BLOCK: tl.constexpr, ITERS: tl.constexpr):
        base = tl.program_id(0).to(tl.int64) * BLOCK * ITERS
        acc = tl.zeros((BLOCK,), tl.int32)
        for i in range(ITERS):
            o = base + i * BLOCK + tl.arange(0, BLOCK)
            acc += tl.load(x_ptr + o, mask=o < N, other=0)
        tl.store(out_ptr + tl.program_id(0), tl.sum(acc))

    return _stream_sum


def stream_launches(words: torch.Tensor, blocks=(1024, 4096), iters=(1, 4, 16), warps=(4,)) -> list:
    """Launches of :func:`stream_kernel` over ``words`` (a contiguous int32 tensor), one a geometry."""
    import triton

    stream = stream_kernel()
    n = words.numel()
    launches = []
    for block in blocks:
        for it in iters:
            grid = triton.cdiv(n, block * it)
            out = torch.empty(grid, device=words.device, dtype=torch.int32)
            for nw in warps:
                launches.append(functools.partial(stream[(grid,)], words, out, n, BLOCK=block, ITERS=it, num_warps=nw))
    return launches


def code_stream(codes: torch.Tensor) -> tuple[float, object]:
    """(graph-timed ms, launch) of the fastest plain stream of every key code: their read alone, no scoring."""
    return _fastest(stream_launches(codes.contiguous().view(torch.int32)))


def selected_rows(idx: torch.Tensor, t: int) -> torch.Tensor:
    """The cache rows a selection ``idx`` ((B, Hkv, 1, k) slots, -1 padded) reads, numbered across a
    (B, Hkv, t, D) cache: (B * Hkv, k) int64, -1 kept; what :func:`gather_launches` takes."""
    flat = idx.reshape(-1, idx.shape[-1]).to(torch.int64)
    base = torch.arange(flat.shape[0], device=idx.device, dtype=torch.int64)[:, None] * t
    return torch.where(flat >= 0, flat + base, -1).contiguous()


def step_reads(stream, kc: torch.Tensor, vc: torch.Tensor, idx: torch.Tensor) -> dict:
    """What the step's reads alone take: ``gather_ms``, a plain gather of the selected K and V rows (the part of
    the memory floor that copy bandwidth overstates: random 256-byte rows are not a stream), and ``reads_ms``,
    the code ``stream`` (a :func:`code_stream` launch) then that gather in one graph: the least any step takes
    that reads every code and then the rows its codes select, as an exact top-k must."""
    t, d = kc.shape[2], kc.shape[3]
    gather_ms, gather = _fastest(gather_launches(kc, vc, selected_rows(idx, t), d, d))

    def both():
        stream()
        gather()

    return {"gather_ms": gather_ms, "reads_ms": _graph_bench(both)}


def _fits(b: int, hkv: int, t: int, d: int, dt_bytes: int) -> bool:
    free, _ = torch.cuda.mem_get_info()
    need = 2 * b * hkv * t * d * dt_bytes * 1.2 + (256 << 20)
    return need < free


def _torch_topk_select(sel, qc, codes, pos, k):
    """The alternative: scores from the same scoring kernel, then torch.topk and a sort (no -1 padding)."""
    keys, *_ = sel.score_keys(qc, codes, pos)
    t = keys.shape[1]
    key = keys.to(torch.int32) * t + torch.arange(t, device=keys.device, dtype=torch.int32)
    idx = torch.topk(key, k, dim=-1, largest=False, sorted=False).indices
    return torch.sort(idx, dim=-1).values


def decode_problem(b: int, t: int, hq: int = 32, hkv: int = 8, d: int = 128, r: int = 128, dt=torch.bfloat16,
                   seed: int = 0) -> tuple[torch.Tensor, ...]:
    """One layer's decode step on random caches full to ``t`` slots, on ``DEVICE``: (q, new key, K cache,
    V cache, W, key codes, q_pos)."""
    enc, _, _ = _kernels()
    gen = torch.Generator(device=DEVICE).manual_seed(seed)
    kc = torch.randn(b, hkv, t, d, device=DEVICE, dtype=dt, generator=gen)
    vc = torch.randn(b, hkv, t, d, device=DEVICE, dtype=dt, generator=gen)
    q = torch.randn(b, hq, 1, d, device=DEVICE, dtype=dt, generator=gen)
    kn = torch.randn(b, hkv, 1, d, device=DEVICE, dtype=dt, generator=gen)
    w = torch.randn(hkv, d, r, device=DEVICE, generator=gen)
    pos = torch.full((b, 1), t - 1, device=DEVICE, dtype=torch.int64)
    return q, kn, kc, vc, w, enc.hash_encode(kc, w), pos


def _one(b, t, budgets, hq, hkv, d, r, dt, bw, enc, sel, att, dense_ms, alt) -> tuple[list[dict], float]:
    q, kn, kc, vc, w, codes, pos = decode_problem(b, t, hq, hkv, d, r, dt, seed=t + b)
    scale = 1 / math.sqrt(d)
    dense = lambda: torch.nn.functional.scaled_dot_product_attention(q, kc, vc, scale=scale, enable_gqa=True)  # noqa: E731
    if dense_ms is None:
        dense_ms = _graph_bench(dense)
    dense_plain = _bench(dense)
    # hatac's own dense decode (what dense layers and the dense baseline of `hatac bench generate` run).
    from hatac.kernels.cache_attention import cache_attention as own_dense

    own = lambda: own_dense(q, kc, vc, pos, scale)  # noqa: E731
    own_err = ((own().float() - dense().float()).norm() / dense().float().norm()).item()
    if own_err > 1e-2:
        raise RuntimeError(f"hatac dense decode disagrees with SDPA at B={b}, T={t}: rel. error {own_err:.2e}")
    own_dense_ms = _graph_bench(own)
    stream_ms, stream = code_stream(codes)  # the same for every budget
    rows = []
    for budget in budgets:
        k = ref.topk_width(t, budget)
        qc = enc.hash_encode_step(q, kn, w, codes, pos)
        idx = sel.hamming_topk(qc, codes, pos, k, budget)

        def step():  # as a decode graph calls them: the select is given the caches (it prefetches the rows)
            qc_ = enc.hash_encode_step(q, kn, w, codes, pos)
            idx_ = sel.hamming_topk(qc_, codes, pos, k, budget, k_cache=kc, v_cache=vc)
            return att.sparse_attention(q, kc, vc, idx_, scale)

        stage = {
            "encode": _graph_bench(lambda: enc.hash_encode_step(q, kn, w, codes, pos)),
            "select": _graph_bench(lambda: sel.hamming_topk(qc, codes, pos, k, budget, k_cache=kc, v_cache=vc)),
            "attention": _graph_bench(lambda: att.sparse_attention(q, kc, vc, idx, scale)),
        }
        total = _graph_bench(step)
        # A graph replays one query, so with the select's hint on every replay finds the threshold's bin where
        # the last left it (the fine pass skips its scan): the best case. Off, every step runs the full fine
        # pass: the worst case, short of the hint's extra scoring work on a miss.
        with options.override(hamming_topk={"hint": False}):
            total_no_hint = _graph_bench(step)
        total_plain = _bench(step)
        nw = r // 32
        floor_bytes = (
            b * hkv * t * nw * 4  # every key code
            + 2 * b * hkv * k * d * kc.element_size()  # the selected K and V rows
            + hkv * d * r * 4 + 2 * q.numel() * q.element_size() + kn.numel() * kn.element_size()
        )
        dense_bytes = 2 * b * hkv * t * d * kc.element_size() + 2 * q.numel() * q.element_size()
        row = {
            "batch": b, "context": t, "budget": budget, "k": k,
            "dense_ms": dense_ms, "dense_plain_ms": dense_plain, "hatac_dense_decode_ms": own_dense_ms,
            **{f"{n}_ms": v for n, v in stage.items()},
            "total_ms": total, "total_no_hint_ms": total_no_hint, "total_plain_ms": total_plain,
            "speedup": dense_ms / total, "speedup_plain": dense_plain / total_plain,
            "floor_ms": floor_bytes / bw * 1e3, "floor_bytes": floor_bytes,
            "dense_floor_ms": dense_bytes / bw * 1e3,
        }
        row["floor_fraction"] = row["floor_ms"] / total
        # the step's reads alone: what the attention stage, and the step, could approach
        row.update(code_stream_ms=stream_ms, **step_reads(stream, kc, vc, idx))
        row["attention_over_gather"] = stage["attention"] / row["gather_ms"]
        row["reads_speedup"] = dense_ms / row["reads_ms"]
        if alt:
            row["select_torch_topk_ms"] = _graph_bench(lambda: _torch_topk_select(sel, qc, codes, pos, k))
        rows.append(row)
    kc = vc = codes = None  # free the caches before the next shape (closures above hold these cells)
    torch.cuda.empty_cache()
    return rows, dense_ms


def crossover(rows: list[dict], key: str = "speedup") -> dict:
    """Per (batch, budget): the smallest measured context from which hatac beats dense at every longer one."""
    out = {}
    for b in sorted({r["batch"] for r in rows}):
        for budget in sorted({r["budget"] for r in rows}):
            sel = sorted((r for r in rows if r["batch"] == b and r["budget"] == budget), key=lambda r: r["context"])
            at = None
            for i in range(len(sel)):
                if all(r[key] > 1 for r in sel[i:]):
                    at = sel[i]["context"]
                    break
            out[f"batch{b}_budget{budget:.4f}"] = at
    return out


def table(rows: list[dict]) -> str:
    head = (
        f"{'B':>2} {'ctx':>7} {'budget':>7} {'k':>5} {'dense':>8} {'encode':>7} {'select':>7} {'attn':>7} "
        f"{'total':>7} {'no hint':>7} {'speedup':>7} {'floor':>7} {'%floor':>6} {'gather':>7} {'reads':>7} {'bound':>6} {'eager':>7}"
    )
    lines = [head, "-" * len(head)]
    for r in rows:
        lines.append(
            f"{r['batch']:>2} {r['context']:>7} {r['budget'] * 100:>6.2f}% {r['k']:>5} {r['dense_ms'] * 1e3:>7.1f}u "
            f"{r['encode_ms'] * 1e3:>6.1f}u {r['select_ms'] * 1e3:>6.1f}u {r['attention_ms'] * 1e3:>6.1f}u "
            f"{r['total_ms'] * 1e3:>6.1f}u {r['total_no_hint_ms'] * 1e3:>6.1f}u {r['speedup']:>6.1f}x "
            f"{r['floor_ms'] * 1e3:>6.1f}u {r['floor_fraction'] * 100:>5.0f}% "
            f"{r.get('gather_ms', float('nan')) * 1e3:>6.1f}u {r.get('reads_ms', float('nan')) * 1e3:>6.1f}u "
            f"{r.get('reads_speedup', float('nan')):>5.1f}x {r['total_plain_ms'] * 1e3:>6.1f}u"
        )
    return "\n".join(lines)


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(17, 5))
    for b in sorted({r["batch"] for r in rows}):
        dense = sorted({(r["context"], r["dense_ms"]) for r in rows if r["batch"] == b})
        axes[0].plot([c for c, _ in dense], [m * 1e3 for _, m in dense], "k--" if b > 1 else "k:", label=f"dense SDPA, B={b}")
        for budget in sorted({r["budget"] for r in rows}):
            sel = sorted((r for r in rows if r["batch"] == b and r["budget"] == budget), key=lambda r: r["context"])
            ctx = [r["context"] for r in sel]
            label = f"B={b}, budget {budget * 100:.2f}%"
            axes[0].plot(ctx, [r["total_ms"] * 1e3 for r in sel], "o-", label=f"hatac {label}")
            line, = axes[1].plot(ctx, [r["speedup"] for r in sel], "o-", label=label)
            if all("reads_speedup" in r for r in sel):  # the most a step that reads the codes, then the rows, gains
                axes[1].plot(ctx, [r["reads_speedup"] for r in sel], ":", color=line.get_color(), label=f"{label}: reads alone")
            axes[2].plot(ctx, [r["floor_fraction"] * 100 for r in sel], "o-", label=label)
    axes[0].set(xscale="log", yscale="log", xlabel="context (tokens)", ylabel="decode attention step (us)", title="latency")
    axes[1].set(xscale="log", xlabel="context (tokens)", ylabel="x over dense",
                title="speedup over dense SDPA (dotted: the step's reads alone)")
    axes[1].axhline(1, color="gray", lw=0.8)
    axes[2].set(xscale="log", xlabel="context (tokens)", ylabel="% of memory floor", title="memory floor / measured", ylim=(0, 100))
    for ax in axes:
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle("hatac decode step (encode + select + sparse attention) vs dense, 32 q heads / 8 KV heads, d=128, r=128")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def run(
    out_dir: str | Path,
    batches=(1, 8),
    contexts=DEFAULT_CONTEXTS,
    budgets=DEFAULT_BUDGETS,
    hq: int = 32,
    hkv: int = 8,
    head_dim: int = 128,
    rbits: int = 128,
    dtype: torch.dtype = torch.bfloat16,
    torch_topk: bool = True,
    log=print,
    kernels: options.KernelOptions | None = None,
) -> dict:
    """Check, then time every (batch, context, budget); write kernels_bench.json / .png to out_dir. ``kernels``:
    the kernel options to time (default: the current ones; ``hatac bench kernels --no-pdl`` etc.)."""
    with options.override(kernels):
        return _run(out_dir, batches, contexts, budgets, hq, hkv, head_dim, rbits, dtype, torch_topk, log)


def _run(out_dir, batches, contexts, budgets, hq, hkv, head_dim, rbits, dtype, torch_topk, log) -> dict:
    if not torch.cuda.is_available():
        raise RuntimeError("hatac bench kernels needs a CUDA device")
    import triton

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    enc, sel, att = _kernels()
    t0 = time.time()
    checked = check()
    log(f"correctness vs reference: {json.dumps(checked)}")
    if not checked["ok"]:
        raise RuntimeError(f"kernels disagree with the references: {checked}")
    bw = copy_bandwidth()
    log(f"copy bandwidth {bw / 1e12:.2f} TB/s (read + write)")
    rows, skipped = [], []
    for b in batches:
        for t in contexts:
            if not _fits(b, hkv, t, head_dim, torch.finfo(dtype).bits // 8):
                skipped.append({"batch": b, "context": t})
                continue
            new, _ = _one(b, t, budgets, hq, hkv, head_dim, rbits, dtype, bw, enc, sel, att, None, torch_topk)
            rows += new
            for r in new:
                log(
                    f"B={b} ctx={t} k={r['k']}: dense {r['dense_ms'] * 1e3:.1f} us, hatac {r['total_ms'] * 1e3:.1f} us "
                    f"(eager launches {r['total_plain_ms'] * 1e3:.1f}), {r['speedup']:.1f}x; "
                    f"hatac dense decode {r['hatac_dense_decode_ms'] * 1e3:.1f} us"
                )
    result = {
        "device": torch.cuda.get_device_name(),
        "torch": torch.__version__,
        "triton": triton.__version__,
        "python": platform.python_version(),
        "shape": {"q_heads": hq, "kv_heads": hkv, "head_dim": head_dim, "rbits": rbits, "dtype": str(dtype)},
        "copy_bandwidth_Bps": bw,
        "config": {"hamming_topk": asdict(options.get().hamming_topk),  # "hint": see total_no_hint_ms
                   "sparse_attention": asdict(options.get().sparse_attention), "programmatic_dependent_launch": _pdl_on()},
        "check": checked,
        "rows": rows,
        "skipped": skipped,
        "crossover_context": crossover(rows),
        "crossover_context_eager": crossover(rows, "speedup_plain"),
        "seconds": time.time() - t0,
    }
    (out_dir / "kernels_bench.json").write_text(json.dumps(result, indent=1))
    try:
        plot(rows, out_dir / "kernels_bench.png")
    except ImportError:  # matplotlib is an optional extra
        log("matplotlib missing: no plot")
    log(table(rows))
    log(f"hatac beats dense from (CUDA graphs):    {result['crossover_context']}")
    log(f"hatac beats dense from (eager launches): {result['crossover_context_eager']}")
    return result
