"""Does a decode step gain from running the batch in two halves on two CUDA streams? (GPU probe)

Each pass of hatac's step (scoring, fine, write, attention) is one launch over every row, so a row's gather
waits for every row's scoring: the step's reads come one after the other (``hatac bench kernels``' `reads`
column). Split the batch in two and give each half its own stream, and one half's select can run while the
other half gathers its rows: latency-bound passes beside bandwidth-bound ones, as "two-batch overlap" does for
communication in serving engines. This probe times, in CUDA graphs (one replay = one step, as in
``hatac bench kernels``):

- ``one``: the step as it runs today (encode, select, attention, one stream);
- ``halves``: the same ops on each half of the batch, one after the other on one stream (what halving costs);
- ``two``: encode, then each half's select and attention on its own stream, side by side;
- ``skew``: as ``two``, but the second half's select starts when the first half's select is done, so it
  overlaps the first half's attention;
- ``reads1`` / ``reads2``: the bench's reads probe (stream every code, then gather the selected rows), on one
  stream, and in two halves on two skewed streams: how far overlap moves the reads bound itself.

The outputs are checked against ``one`` (selection equal, attention within bf16 tolerance) before timing.

    python examples/two_stream_probe.py --batch 8 --contexts 32768 131072 --budgets 0.03125 0.015625
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path
from unittest import mock

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from hatac import reference as ref  # noqa: E402
from hatac import bench_kernels as bk  # noqa: E402


def _attention_counters(att, tag: str):
    """The attention's self-resetting counters are one buffer per kernel and device (one stream at a time):
    give each stream's launches their own."""
    orig = att.self_reset_counters
    return mock.patch.object(att, "self_reset_counters", lambda owner, dev, n: orig(owner + tag, dev, n))


def run(batch: int, contexts, budgets, out: Path | None) -> list[dict]:
    enc, sel, att = bk._kernels()
    rows = []
    for t in contexts:
        q, kn, kc, vc, w, codes, pos = bk.decode_problem(batch, t, seed=t + batch)
        scale = 1 / math.sqrt(q.shape[-1])
        dense_ms = bk._graph_bench(lambda: torch.nn.functional.scaled_dot_product_attention(q, kc, vc, scale=scale, enable_gqa=True))
        stream_launches_full = bk.stream_launches(codes.contiguous().view(torch.int32))
        h = batch // 2
        halves = [(slice(0, h), "a"), (slice(h, batch), "b")]
        side = torch.cuda.Stream()
        for budget in budgets:
            k = ref.topk_width(t, budget)

            def part(sl, tag, qc):
                with _attention_counters(att, tag):
                    idx = sel.hamming_topk(qc[sl], codes[sl], pos[sl], k, budget, k_cache=kc[sl], v_cache=vc[sl])
                    return idx, att.sparse_attention(q[sl], kc[sl], vc[sl], idx, scale)

            def one():
                qc = enc.hash_encode_step(q, kn, w, codes, pos)
                idx = sel.hamming_topk(qc, codes, pos, k, budget, k_cache=kc, v_cache=vc)
                return idx, att.sparse_attention(q, kc, vc, idx, scale)

            def halves_one_stream():
                qc = enc.hash_encode_step(q, kn, w, codes, pos)
                return [part(sl, tag, qc) for sl, tag in halves]

            def two(skew: bool):
                def fn():  # fork after the encode (skewed: after the first half's select too)
                    main = torch.cuda.current_stream()
                    qc = enc.hash_encode_step(q, kn, w, codes, pos)
                    (sa, ta), (sb, tb) = halves
                    if skew:
                        with _attention_counters(att, ta):
                            idx_a = sel.hamming_topk(qc[sa], codes[sa], pos[sa], k, budget, k_cache=kc[sa], v_cache=vc[sa])
                    side.wait_stream(main)
                    with torch.cuda.stream(side):
                        res_b = part(sb, tb, qc)
                    if skew:
                        with _attention_counters(att, ta):
                            res_a = idx_a, att.sparse_attention(q[sa], kc[sa], vc[sa], idx_a, scale)
                    else:
                        res_a = part(sa, ta, qc)
                    main.wait_stream(side)
                    return [res_a, res_b]

                return fn

            # correctness against the one-stream step (each variant from the same codes: the encode rewrites
            # the new key's code at the same position, so every call sees the same cache)
            idx_ref, out_ref = one()
            torch.cuda.synchronize()
            for name, fn in (("halves", halves_one_stream), ("two", two(False)), ("skew", two(True))):
                res = fn()
                torch.cuda.synchronize()
                idx = torch.cat([r[0] for r in res])
                o = torch.cat([r[1] for r in res])
                if not torch.equal(idx, idx_ref):
                    raise SystemExit(f"{name}: selection differs from the one-stream step at T={t}, k={k}")
                err = float((o.float() - out_ref.float()).norm() / out_ref.float().norm())
                if err > 1e-2:
                    raise SystemExit(f"{name}: attention rel. error {err:.2e} at T={t}, k={k}")

            # the reads probes, whole batch and in skewed halves
            _, stream_full = bk._fastest(stream_launches_full)
            d = kc.shape[3]

            def gather_for(sl, idx_part):
                return bk._fastest(bk.gather_launches(kc[sl], vc[sl], bk.selected_rows(idx_part, t), d, d))[1]

            reads1 = bk.step_reads(stream_full, kc, vc, idx_ref)["reads_ms"]
            streams_h = [bk._fastest(bk.stream_launches(codes[sl].contiguous().view(torch.int32)))[1] for sl, _ in halves]
            gathers_h = [gather_for(sl, idx_ref[sl]) for sl, _ in halves]

            def reads2():
                main = torch.cuda.current_stream()
                streams_h[0]()
                side.wait_stream(main)
                with torch.cuda.stream(side):
                    streams_h[1]()
                    gathers_h[1]()
                gathers_h[0]()
                main.wait_stream(side)

            times = {
                "one": bk._graph_bench(one),
                "halves": bk._graph_bench(halves_one_stream),
                "two": bk._graph_bench(two(False)),
                "skew": bk._graph_bench(two(True)),
                "reads1": reads1,
                "reads2": bk._graph_bench(reads2),
            }
            with mock.patch.dict(sel.CONFIG, {"kv_prefetch": False}):
                times["skew_no_kv_prefetch"] = bk._graph_bench(two(True))
                times["one_no_kv_prefetch"] = bk._graph_bench(one)
            row = {"batch": batch, "context": t, "budget": budget, "k": k, "dense_ms": dense_ms,
                   **{f"{n}_ms": v for n, v in times.items()}}
            row.update({f"{n}_speedup": dense_ms / v for n, v in times.items()})
            rows.append(row)
            print(f"B{batch} T{t} k{k}: dense {dense_ms*1e3:.1f} us | " + " | ".join(
                f"{n} {v*1e3:.1f} ({dense_ms / v:.2f}x)" for n, v in times.items()), flush=True)
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        (out / "two_stream_probe.json").write_text(json.dumps({"device": torch.cuda.get_device_name(), "rows": rows}, indent=1))
    return rows


def main(argv=None):
    a = bk.probe_args(__doc__, argv)
    if a.batch < 2 or a.batch % 2:
        raise SystemExit("--batch must be even and at least 2")
    run(a.batch, a.contexts, a.budgets, a.out)


if __name__ == "__main__":
    main()
