"""``--format html``: one self-contained page (inline CSS, no network) to look at the rewritten graphs.

For each graph (decode, prefill): the inputs, what comes before the decoder layers, each layer and
what comes after, each a collapsible ``<details>`` whose summary gives the node count and the hatac ops
in it; hashed layers' sections start open. Every node is a row (name, op, target, arguments, example
shape), hatac ops highlighted. A table of the layer specs (hashed or dense, bits, budget) leads.
"""

from __future__ import annotations

import html
from collections import Counter
from pathlib import Path

import torch.fx as fx

from hatac.version import __version__
from hatac.export.common import SIZES, atomic_file, graph_of, hatac_op, layer_paths, node_layer, shapes_for, target_label

CSS = """
body{font:14px/1.45 system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:24px auto;max-width:1200px;padding:0 16px;color:#1d232a;background:#fafbfc}
h1{font-size:22px;margin:0 0 4px} h2{font-size:18px;margin:28px 0 8px;border-bottom:1px solid #d8dee4;padding-bottom:4px}
.meta{color:#57606a;margin:0 0 12px} code,td.mono,.mono{font-family:ui-monospace,SFMono-Regular,Menlo,Consolas,monospace;font-size:12.5px}
table{border-collapse:collapse;width:100%;margin:6px 0 10px;background:#fff} th,td{border:1px solid #e1e4e8;padding:3px 7px;text-align:left;vertical-align:top}
th{background:#f3f5f7;font-weight:600} details{margin:5px 0;border:1px solid #d8dee4;border-radius:6px;background:#fff}
details>summary{cursor:pointer;padding:6px 10px;list-style-position:inside} details[open]>summary{border-bottom:1px solid #e1e4e8}
details>table{margin:0;border:none} .tag{display:inline-block;padding:0 7px;border-radius:10px;font-size:12px;margin-left:6px}
.hashed{background:#fff1d6;color:#7a4b00} .dense{background:#e6f0ff;color:#0b3d91} .count{color:#57606a;margin-left:6px}
tr.hatac td{background:#fff6df} tr.hatac td.target{font-weight:700;color:#9a4d00} span.hatacop{font-family:ui-monospace,Menlo,monospace;color:#9a4d00;font-weight:600}
tr.placeholder td{background:#f0f6ff} td.args{color:#444;max-width:520px;overflow-wrap:anywhere} .legend span{margin-right:14px}
td.shape{white-space:nowrap} p.flow{margin:6px 10px;font-family:ui-monospace,Menlo,monospace;font-size:12.5px;color:#444;line-height:1.9}
p.flow span.step{background:#fff6df;border:1px solid #f0d9a8;border-radius:4px;padding:1px 6px;white-space:nowrap}
button{font:inherit;margin-right:6px;padding:2px 10px;border:1px solid #c9d1d9;border-radius:5px;background:#f6f8fa;cursor:pointer}
"""

SCRIPT = """function setAll(open){document.querySelectorAll('details.group').forEach(d=>d.open=open)}"""


def _e(x) -> str:
    return html.escape(str(x), quote=True)


def _arg(a) -> str:
    if isinstance(a, fx.Node):
        return a.name
    if isinstance(a, (tuple, list)):
        inner = ", ".join(_arg(x) for x in a)
        return f"({inner})" if isinstance(a, tuple) else f"[{inner}]"
    if isinstance(a, dict):
        return "{" + ", ".join(f"{k}: {_arg(v)}" for k, v in a.items()) + "}"
    if isinstance(a, float):
        return f"{a:g}"
    return repr(a)


def _args(node: fx.Node) -> str:
    parts = [_arg(a) for a in node.args] + [f"{k}={_arg(v)}" for k, v in node.kwargs.items()]
    text = ", ".join(parts)
    return text if len(text) <= 400 else text[:400] + " ..."


def group_nodes(gm: fx.GraphModule, paths: dict[str, int]) -> list[tuple[object, list[fx.Node]]]:
    """[(key, nodes)] in graph order: "inputs", "before", each layer index, "after". Nodes outside any
    layer that sit between two layers stay with the layer before them."""
    nodes = list(gm.graph.nodes)
    layers = [node_layer(n, paths) for n in nodes]
    last_layer_at = max((i for i, l in enumerate(layers) if l is not None and nodes[i].op != "get_attr"), default=-1)
    groups: dict[object, list[fx.Node]] = {}
    current: object = "before"
    for i, (node, layer) in enumerate(zip(nodes, layers)):
        if node.op == "placeholder":
            key = "inputs"
        elif layer is not None:
            key = layer
            if node.op != "get_attr":
                current = layer
        elif i > last_layer_at:
            key = "after"
        else:
            key = current
        groups.setdefault(key, []).append(node)
    order = ["inputs", "before", *sorted(k for k in groups if isinstance(k, int)), "after"]
    return [(k, groups[k]) for k in order if k in groups]


def _hatac_summary(nodes) -> str:
    counts = Counter(hatac_op(n) for n in nodes if hatac_op(n))
    return " ".join(f'<span class="hatacop">{_e(k)}</span>&nbsp;&times;{v}' for k, v in sorted(counts.items()))


def _flow(nodes) -> str:
    """The layer's hatac ops in graph order, with their arguments: the attention path at a glance."""
    steps = [f'<span class="step">{_e(n.name)} = {_e(hatac_op(n))}({_e(_args(n))})</span>' for n in nodes if hatac_op(n)]
    return f'<p class="flow">{" &rarr; ".join(steps)}</p>' if steps else ""


def _node_table(nodes, shapes: dict[str, str], paths) -> str:
    rows = ['<table><tr><th>node</th><th>op</th><th>target</th><th>arguments</th><th>shape</th></tr>']
    for n in nodes:
        cls = "hatac" if hatac_op(n) else ("placeholder" if n.op == "placeholder" else "")
        rows.append(
            f'<tr class="{cls}"><td class="mono">{_e(n.name)}</td><td>{_e(n.op)}</td><td class="mono target">{_e(target_label(n))}</td>'
            f'<td class="mono args">{_e(_args(n))}</td><td class="mono shape">{_e(shapes.get(n.name, ""))}</td></tr>'
        )
    rows.append("</table>")
    return "".join(rows)


def _graph_section(model, variant: str) -> str:
    gm = graph_of(model, variant)
    shapes = shapes_for(model, variant)
    paths = layer_paths(model)
    all_nodes = list(gm.graph.nodes)
    out = [f'<h2 id="{variant}">{variant} graph</h2>']
    out.append(
        f'<p class="meta">{len(all_nodes)} nodes; hatac ops: {_hatac_summary(all_nodes) or "none"}. '
        f"Shapes for batch {SIZES.batch}, {SIZES.seq(variant)} new token(s), {SIZES.past(variant)} cached, {SIZES.capacity} cache slots.</p>"
    )
    for key, nodes in group_nodes(gm, paths):
        opened = ""
        if isinstance(key, int):
            spec = model.layers.get(key)
            hashed = bool(spec and spec.hashed)
            title = f'<b>layer {key}</b><span class="tag {"hashed" if hashed else "dense"}">{"hashed" if hashed else "dense"}</span>'
            if spec is not None:
                title += f'<span class="count mono">{_e(spec.module_path)}</span>'
            opened = " open" if hashed else ""
        else:
            title = {"inputs": "<b>inputs</b>", "before": "<b>before the layers</b> (embeddings, rotary tables)", "after": "<b>after the layers</b> (final norm, LM head, output)"}[key]
        summary = f'{title}<span class="count">{len(nodes)} nodes</span> {_hatac_summary(nodes)}'
        out.append(f'<details class="group"{opened}><summary>{summary}</summary>{_flow(nodes)}{_node_table(nodes, shapes, paths)}</details>')
    return "\n".join(out)


def _layers_table(model) -> str:
    rows = ["<table><tr><th>layer</th><th>module</th><th>attention</th><th>q/kv heads</th><th>d</th><th>r</th><th>budget</th><th>sink</th><th>recent</th><th>window</th></tr>"]
    for s in model.layers.values():
        tag = f'<span class="tag {"hashed" if s.hashed else "dense"}">{"hashed" if s.hashed else "dense"}</span>'
        h = s.hashed
        rows.append(
            f"<tr><td>{s.layer}</td><td class=mono>{_e(s.module_path)}</td><td>{tag}</td><td>{s.n_heads}/{s.n_kv_heads}</td><td>{s.head_dim}</td>"
            f"<td>{s.rbits if h else '-'}</td><td>{f'{s.budget:g}' if h else '-'}</td><td>{s.sink if h else '-'}</td><td>{s.recent if h else '-'}</td><td>{s.window or '-'}</td></tr>"
        )
    rows.append("</table>")
    return "".join(rows)


def render(model, variants=("decode", "prefill")) -> str:
    name = type(model.hf_model).__name__
    recipe = ", ".join(f"{k}={v}" for k, v in model.recipe.to_dict().items())
    passes = ", ".join(model.manifest.get("passes", []) or []) if isinstance(model.manifest, dict) else ""
    parts = [
        "<!doctype html>",
        f'<html lang="en"><head><meta charset="utf-8"><title>hatac graphs: {_e(name)}</title><style>{CSS}</style><script>{SCRIPT}</script></head><body>',
        f"<h1>hatac graphs &mdash; {_e(name)}</h1>",
        f'<p class="meta">hatac {_e(__version__)} &middot; recipe: <span class="mono">{_e(recipe)}</span>'
        + (f' &middot; user passes: <span class="mono">{_e(passes)}</span>' if passes else "") + "</p>",
        '<p class="legend"><span><span class="hatacop">hatac op</span> rows are highlighted</span>'
        '<span><span class="tag hashed">hashed</span> hash-aware top-k attention</span><span><span class="tag dense">dense</span> exact attention over the cache</span></p>',
        "<p>" + " ".join(f'<a href="#{v}">{v} graph</a>' for v in variants)
        + ' &middot; <button onclick="setAll(true)">expand all</button><button onclick="setAll(false)">collapse all</button></p>',
        "<h2>layers</h2>",
        _layers_table(model),
    ]
    parts += [_graph_section(model, v) for v in variants]
    parts.append("</body></html>\n")
    return "\n".join(parts)


def export_html(model, out: Path, variants=("decode", "prefill"), overwrite: bool = False, progress=None) -> list[Path]:
    if progress:
        progress("rendering the graphs as one HTML page")
    page = render(model, variants)
    with atomic_file(out, overwrite) as tmp:
        tmp.write_text(page, encoding="utf-8")
    return [Path(out)]
