"""``--format pt2``: ``torch.export`` programs of the rewritten graphs (``decode.pt2``, ``prefill.pt2``).

Each program is the graph as it runs: same inputs (dynamic batch, cache length, prefill chunk length
and kept logits, ``topk_width`` a symbolic int), hatac ops as ``torch.ops.hatac.*`` calls, the cache
updates recorded as input mutations (``ep.module()`` writes the caches in place, as the graph does).

    import hatac, torch                    # hatac registers the ops the program calls
    ep = torch.export.load("out/decode.pt2")
    logits = ep.module()(input_ids, position_ids, ...)
"""

from __future__ import annotations

from pathlib import Path

import torch

from hatac.errors import HatacError
from hatac.export.common import SIZES, atomic_dir, dynamic_shapes, example_inputs, graph_of, input_names


def export_program(model, variant: str) -> torch.export.ExportedProgram:
    gm = graph_of(model, variant)
    inputs = example_inputs(model, variant)
    args = tuple(inputs[n] for n in input_names(gm))
    try:
        return torch.export.export(gm, args, dynamic_shapes=dynamic_shapes(gm, variant), strict=False)
    except Exception as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise HatacError(f"could not export the {variant} graph with torch.export: {first}") from exc


def export_pt2(model, out: Path, variants=("decode", "prefill"), overwrite: bool = False, progress=None) -> list[Path]:
    written = []
    with atomic_dir(out, overwrite) as tmp:
        for variant in variants:
            if progress:
                progress(f"exporting the {variant} graph with torch.export (batch {SIZES.batch} example, dynamic shapes)")
            ep = export_program(model, variant)
            torch.export.save(ep, str(tmp / f"{variant}.pt2"))
            written.append(Path(out) / f"{variant}.pt2")
    return written
