"""``--format fx``: the rewritten graphs as readable Python code and node tables.

Writes, per graph (decode, prefill):

- ``<graph>.py``: ``GraphModule.code`` under a header naming the inputs, the layers and the hatac ops;
  the hatac ops appear by name (``torch.ops.hatac.hamming_topk.default(...)``). For reading: ``self``
  is the graph module, whose parameters sit under the model's own module paths.
- ``<graph>_nodes.tsv``: one row per node: ``name``, ``op``, ``target`` (hatac ops as ``hatac.<op>``),
  ``layer`` (empty outside the decoder layers) and ``shape`` (``dtype[dims]`` for the example sizes in
  the header, computed with fake tensors; empty when unknown).
"""

from __future__ import annotations

from pathlib import Path

from hatac.version import __version__
from hatac.export.common import SIZES, atomic_dir, graph_of, layer_paths, node_layer, op_counts, shapes_for, target_label

COLUMNS = ("name", "op", "target", "layer", "shape")


def node_rows(model, variant: str) -> list[dict[str, str]]:
    gm = graph_of(model, variant)
    shapes = shapes_for(model, variant)
    paths = layer_paths(model)
    rows = []
    for node in gm.graph.nodes:
        layer = node_layer(node, paths)
        rows.append({
            "name": node.name,
            "op": node.op,
            "target": target_label(node),
            "layer": "" if layer is None else str(layer),
            "shape": shapes.get(node.name, ""),
        })
    return rows


def _header(model, variant: str) -> str:
    gm = graph_of(model, variant)
    hatac_counts = {k: v for k, v in sorted(op_counts(gm.graph.nodes).items()) if k.startswith("hatac.")}
    lines = [
        f"# hatac {variant} graph of {type(model.hf_model).__name__} (hatac {__version__}), written by `hatac export --format fx`.",
        "# For reading: `self` is the graph module; parameters keep the model's module paths, hash projections are hatac_w_<layer>.",
        f"# Shapes in {variant}_nodes.tsv are for batch {SIZES.batch}, {SIZES.seq(variant)} new token(s), {SIZES.past(variant)} cached, {SIZES.capacity} cache slots.",
        "# Inputs: " + ", ".join(n.name for n in gm.graph.nodes if n.op == "placeholder"),
        "# Layers:",
    ]
    for spec in model.layers.values():
        how = f"hashed, r={spec.rbits}, budget={spec.budget:g}, sink={spec.sink}, recent={spec.recent}" if spec.hashed else "dense"
        lines.append(f"#   {spec.layer} ({spec.module_path}): {how}")
    lines.append("# hatac ops: " + (", ".join(f"{k} x{v}" for k, v in hatac_counts.items()) or "none"))
    return "\n".join(lines) + "\n"


def graph_code(model, variant: str) -> str:
    return _header(model, variant) + graph_of(model, variant).code.lstrip("\n")


def tsv(rows: list[dict[str, str]]) -> str:
    clean = lambda v: str(v).replace("\t", " ").replace("\n", " ")  # noqa: E731
    return "\n".join(["\t".join(COLUMNS)] + ["\t".join(clean(r[c]) for c in COLUMNS) for r in rows]) + "\n"


def export_fx(model, out: Path, variants=("decode", "prefill"), overwrite: bool = False, progress=None) -> list[Path]:
    written = []
    with atomic_dir(out, overwrite) as tmp:
        for variant in variants:
            if progress:
                progress(f"writing the {variant} graph's code and node table")
            (tmp / f"{variant}.py").write_text(graph_code(model, variant))
            (tmp / f"{variant}_nodes.tsv").write_text(tsv(node_rows(model, variant)))
            written += [Path(out) / f"{variant}.py", Path(out) / f"{variant}_nodes.tsv"]
    return written


__all__ = ["COLUMNS", "export_fx", "graph_code", "node_rows", "tsv"]
