"""Export a converted model's rewritten graphs from Python: readable fx code, an HTML picture, and ONNX.

    python examples/quickstart.py --hash random --out smollm2-hata      # any artifact will do
    python examples/export_graphs.py smollm2-hata --out smollm2-export [--onnx]

CPU. Writes ``OUT/fx/`` (``decode.py``, ``prefill.py`` and their node tables), ``OUT/graphs.html`` (one
self-contained page) and, with ``--onnx``, ``OUT/onnx/`` (needs ``pip install 'hatac[onnx]'``), then counts
the hatac ops in the decode graph. The same as ``hatac export ARTIFACT --format fx|html|onnx -o PATH``;
docs/EXPORT.md describes the graphs' inputs and outputs.
"""

from __future__ import annotations

import argparse
from collections import Counter
from pathlib import Path

import hatac
from hatac.export import export


def hatac_ops(graph_module) -> Counter:
    """How many times each ``hatac::`` op is called in a graph."""
    return Counter(str(n.target).removeprefix("hatac.").removesuffix(".default")
                   for n in graph_module.graph.nodes if n.op == "call_function" and str(n.target).startswith("hatac."))


def main(argv: list[str] | None = None) -> list[Path]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("artifact", type=Path, help="a folder written by hatac convert or hatac.save")
    ap.add_argument("--out", type=Path, default=Path("hatac-export"))
    ap.add_argument("--onnx", action="store_true", help="also write ONNX (hatac ops in the custom domain 'hatac')")
    args = ap.parse_args(argv)

    model = hatac.load(args.artifact, device="cpu")  # user passes in the manifest are replayed first
    written = export(model, "fx", args.out / "fx", graph="both", overwrite=True, progress=print)
    written += export(model, "html", args.out / "graphs.html", overwrite=True, progress=print)
    if args.onnx:
        written += export(model, "onnx", args.out / "onnx", graph="decode", overwrite=True, progress=print)
    for path in written:
        print(f"wrote {path}")
    print("hatac ops in the decode graph:", dict(sorted(hatac_ops(model.decode_graph).items())))
    return written


if __name__ == "__main__":
    main()
