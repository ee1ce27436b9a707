"""Time hatac's decode kernels against dense SDPA on the GPU (what ``hatac bench kernels`` runs).

    PYTHONPATH=. python examples/bench_kernels.py --out bench_out [--batches 1 8] [--contexts 8192 32768]

Writes bench_out/kernels_bench.json and kernels_bench.png and prints the table.
"""

from __future__ import annotations

import argparse

from hatac.bench_kernels import DEFAULT_BUDGETS, DEFAULT_CONTEXTS, run


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="bench_out")
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 8])
    ap.add_argument("--contexts", type=int, nargs="+", default=list(DEFAULT_CONTEXTS))
    ap.add_argument("--budgets", type=float, nargs="+", default=list(DEFAULT_BUDGETS))
    ap.add_argument("--no-torch-topk", action="store_true", help="skip timing the scores + torch.topk alternative")
    args = ap.parse_args()
    run(args.out, batches=args.batches, contexts=args.contexts, budgets=args.budgets, torch_topk=not args.no_torch_topk)


if __name__ == "__main__":
    main()
