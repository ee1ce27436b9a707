"""Per-layer op counts of the captured graph and of the rewritten variants, for ``hatac inspect --graph``."""

from __future__ import annotations

from collections import Counter

import torch.fx as fx

from hatac.passes.rewrite.find_attention import module_path


def op_label(node: fx.Node) -> str | None:
    if node.op != "call_function":
        return None
    name = str(node.target)
    for prefix in ("aten.", "hatac."):
        if name.startswith(prefix):
            name = name[len(prefix):]
    return name.removesuffix(".default")


def layer_of(node: fx.Node, layer_paths: dict[str, int]) -> int | None:
    path = module_path(node)
    for prefix, layer in layer_paths.items():
        if path == prefix or path.startswith(prefix + "."):
            return layer
    return node.meta.get("hatac_layer")


def per_layer_counts(gm: fx.GraphModule, layer_paths: dict[str, int]) -> dict[int | None, Counter]:
    counts: dict[int | None, Counter] = {}
    for node in gm.graph.nodes:
        label = op_label(node)
        if label is None:
            continue
        counts.setdefault(layer_of(node, layer_paths), Counter())[label] += 1
    return counts


ATTENTION_OPS = ("scaled_dot_product_attention", "hash_encode", "hamming_topk", "sparse_attention", "cache_attention", "cache_write", "hash_encode_step", "hash_encode_step_kv")


def op_count_lines(model) -> list[str]:
    """Per layer, the attention ops before (captured) and after the passes (prefill and decode graphs)."""
    layer_paths = {s.module_path.rsplit(".", 1)[0]: s.layer for s in model.layers.values()}
    graphs = {"captured": model.captured_graph, "prefill": model.prefill_graph, "decode": model.decode_graph}
    counts = {name: per_layer_counts(gm, layer_paths) for name, gm in graphs.items()}
    lines = ["attention ops per layer, before -> after the passes (all ops in the layer: captured -> decode)"]
    for layer, spec in model.layers.items():
        parts = []
        for name in graphs:
            c = counts[name].get(layer, Counter())
            parts.append(f"{name}: " + (", ".join(f"{op} x{n}" for op, n in sorted(c.items()) if op in ATTENTION_OPS) or "-"))
        total = f"{sum(counts['captured'].get(layer, Counter()).values())} -> {sum(counts['decode'].get(layer, Counter()).values())}"
        lines.append(f"layer {layer} ({'hashed' if spec.hashed else 'dense'}, {total} ops)")
        lines += [f"    {p}" for p in parts]
    return lines
