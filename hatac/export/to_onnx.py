"""``--format onnx``: one ONNX model per graph (``decode.onnx``, ``prefill.onnx``).

Each is the step function of the converted model, functional (see :mod:`hatac.export.functional`):

    inputs:  input_ids, position_ids, [logits_to_keep], write_pos, [topk_width],
             k_cache_L, v_cache_L, [key_codes_L] for every layer L
    outputs: logits, then <input>_out for every cache the step updates, in input order

with dynamic batch, cache length, and (prefill) chunk length and kept logits; ``topk_width`` is an int64
scalar input. hatac's hash ops are nodes of the custom domain ``hatac`` (see
:mod:`hatac.export.onnx_ops` and docs/EXPORT.md); cache writes are ``ScatterElements`` and the dense
attention (prefill, dense layers) is standard ONNX. The weights are initializers (external data past
2 GB). Exported with ``torch.onnx.export(..., dynamo=True)`` from a torch.export program; every model
passes ``onnx.checker.check_model(full_check=True)``.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import torch

from hatac.version import __version__
from hatac.errors import HatacError
from hatac.export.common import SIZES, atomic_dir, dynamic_shapes, example_inputs, graph_of, input_names

OPSET = 18


def _quiet_exporter_logs():
    import logging

    for name in ("torch.onnx", "torch.onnx._internal.exporter._registration", "torch.export", "torch._export"):
        logging.getLogger(name).setLevel(logging.ERROR)


def export_program(model, variant: str):
    """The functional graph's torch.export program, its input and output names."""
    from hatac.export.functional import functionalize

    gm = graph_of(model, variant)
    fgm, updated = functionalize(gm)
    names = input_names(gm)
    inputs = example_inputs(model, variant)
    args = tuple(inputs[n] for n in names)
    try:
        ep = torch.export.export(fgm, args, dynamic_shapes=dynamic_shapes(gm, variant), strict=False)
    except Exception as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise HatacError(f"could not export the {variant} graph with torch.export: {first}") from exc
    return ep, names, ["logits"] + [f"{n}_out" for n in updated]


def to_onnx_model(model, variant: str):
    """The ``onnx.ModelProto`` of one graph (checked)."""
    import onnx

    from hatac.export.onnx_ops import translation_table

    _quiet_exporter_logs()
    ep, names, outputs = export_program(model, variant)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            program = torch.onnx.export(
                ep, dynamo=True, custom_translation_table=translation_table(), input_names=names, output_names=outputs,
                opset_version=OPSET, optimize=True, verbose=False,
            )
        except Exception as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise HatacError(f"could not convert the {variant} graph to ONNX: {first}") from exc
    proto = program.model_proto
    _name_dims(proto, graph_of(model, variant), variant)
    meta = {
        "hatac.version": __version__,
        "hatac.graph": variant,
        "hatac.layers": json.dumps([s.to_dict() for s in model.layers.values()]),
        "hatac.recipe": json.dumps(model.recipe.to_dict()),
        "hatac.outputs": "logits, then each updated cache input as <name>_out",
    }
    for key, value in meta.items():
        proto.metadata_props.append(onnx.StringStringEntryProto(key=key, value=value))
    proto.doc_string = f"hatac {variant} step of {type(model.hf_model).__name__}; hatac ops in domain 'hatac' (docs/EXPORT.md)"
    return proto


def _name_dims(proto, gm, variant: str) -> None:
    """Give the symbolic dimensions torch.export numbered (s27, s34, ...) the names of
    :func:`~hatac.export.common.dynamic_shapes` (batch, seq, keep, cache_len) everywhere in the model."""
    names = {}
    for value, spec in zip(proto.graph.input, dynamic_shapes(gm, variant)):
        if not isinstance(spec, dict):
            continue
        dims = value.type.tensor_type.shape.dim
        for axis, dim in spec.items():
            if axis < len(dims) and dims[axis].dim_param:
                names[dims[axis].dim_param] = dim.__name__
    if not names:
        return
    for value in [*proto.graph.input, *proto.graph.output, *proto.graph.value_info]:
        for d in value.type.tensor_type.shape.dim:
            if d.dim_param in names:
                d.dim_param = names[d.dim_param]


def save_checked(proto, path: Path) -> None:
    import onnx

    if proto.ByteSize() < (1 << 31) - (1 << 20):
        onnx.save_model(proto, str(path))
    else:
        onnx.save_model(proto, str(path), save_as_external_data=True, all_tensors_to_one_file=True, location=path.name + ".data")
    onnx.checker.check_model(str(path), full_check=True)


def export_onnx(model, out: Path, variants=("decode", "prefill"), overwrite: bool = False, progress=None) -> list[Path]:
    written = []
    with atomic_dir(out, overwrite) as tmp:
        for variant in variants:
            if progress:
                progress(f"exporting the {variant} graph to ONNX (batch {SIZES.batch} example, dynamic shapes)")
            proto = to_onnx_model(model, variant)
            try:
                save_checked(proto, tmp / f"{variant}.onnx")
            except Exception as exc:
                raise HatacError(f"the exported {variant} ONNX model does not check: {str(exc).splitlines()[0]}") from exc
            written.append(Path(out) / f"{variant}.onnx")
    return written
