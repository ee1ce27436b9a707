"""The ``hatac`` ONNX domain: an ``onnx.defs.OpSchema`` per hatac op, and the onnxscript translations
``torch.onnx.export`` uses to emit them.

The schemas are declarations (names, inputs, outputs, attributes, types): they make ``onnx.checker``
and onnxscript accept the nodes; no ONNX runtime implementation ships with hatac. docs/EXPORT.md
describes each op; :data:`SCHEMAS` is the source of truth and a test keeps the two in step.

Tensor layouts (B batch, Hq query heads, Hkv KV heads, S new tokens, T cache slots, D head dim, R hash
bits, K selection width) are those of :mod:`hatac.reference`, whose functions define each op's values.
"""

from __future__ import annotations

import onnx
import onnxscript
import torch
from onnx.defs import OpSchema

DOMAIN = "hatac"
VERSION = 1
FLOATS = ["tensor(float)", "tensor(float16)", "tensor(bfloat16)"]

_A = OpSchema.AttrType


def _in(name: str, type_str: str, doc: str) -> OpSchema.FormalParameter:
    return OpSchema.FormalParameter(name, type_str, doc)


def _int_attr(name: str, doc: str) -> OpSchema.Attribute:
    return OpSchema.Attribute(name, onnx.helper.make_attribute(name, 0), doc)


_T = ("T", FLOATS, "Activation and cache float type.")

SCHEMAS: dict[str, OpSchema] = {
    "HashEncode": OpSchema(
        "HashEncode", DOMAIN, VERSION,
        "sign(x @ W) bit-packed, head h using W[h // (H / Hkv)]: bit j of word c is 1 where projection "
        "c*32+j is > 0 (hatac.reference.hash_encode).",
        inputs=[_in("x", "T", "(B, H, S, D) queries or keys"), _in("w", "tensor(float)", "(Hkv, D, R) hash projections")],
        outputs=[OpSchema.FormalParameter("codes", "tensor(int32)", "(B, H, S, R/32) packed codes")],
        type_constraints=[_T],
    ),
    "HammingTopK": OpSchema(
        "HammingTopK", DOMAIN, VERSION,
        "Per (batch, KV head, query): the cache slots with the smallest Hamming distance to the query "
        "codes summed over the KV head's G query heads; sink/recent slots forced, ties to the lower slot, "
        "sorted ascending, -1 padded to k (hatac.reference.hamming_topk).",
        inputs=[
            _in("q_codes", "tensor(int32)", "(B, Hq, S, R/32) query codes"),
            _in("k_codes", "tensor(int32)", "(B, Hkv, T, R/32) key-code cache"),
            _in("q_pos", "tensor(int64)", "(B, S) position of each query: it may select slots 0..q_pos"),
            _in("k", "tensor(int64)", "scalar: selection width K (the runtime's topk_width)"),
        ],
        outputs=[OpSchema.FormalParameter("indices", "tensor(int32)", "(B, Hkv, S, K) selected slots, -1 = none")],
        attributes=[
            OpSchema.Attribute("budget", _A.FLOAT, "keys kept: a fraction of the valid length (< 1) or a count (>= 1)"),
            _int_attr("sink", "first valid slots always kept (inside the budget)"),
            _int_attr("recent", "last valid slots always kept (inside the budget)"),
            _int_attr("window", "sliding window in slots; 0 = none"),
        ],
    ),
    "SparseAttention": OpSchema(
        "SparseAttention", DOMAIN, VERSION,
        "softmax(q . k_sel * scale) @ v_sel over each query's selected slots only; the G query heads of a "
        "KV head share its selection; a query with no slot selected gets zeros (hatac.reference.sparse_attention).",
        inputs=[
            _in("q", "T", "(B, Hq, S, D) queries"),
            _in("k_cache", "T", "(B, Hkv, T, D) key cache"),
            _in("v_cache", "T", "(B, Hkv, T, Dv) value cache"),
            _in("indices", "tensor(int32)", "(B, Hkv, S, K) slots from HammingTopK, -1 = unused"),
        ],
        outputs=[OpSchema.FormalParameter("out", "T", "(B, Hq, S, Dv) attention output")],
        attributes=[OpSchema.Attribute("scale", _A.FLOAT, "logit scale (1/sqrt(D) unless the model says otherwise)")],
        type_constraints=[_T],
    ),
    "HashEncodeStep": OpSchema(
        "HashEncodeStep", DOMAIN, VERSION,
        "HashEncode of the new keys written into the code cache at write_pos, and HashEncode of the "
        "queries, as one op (what the FuseEncodeStep pass makes); functional: returns the updated cache.",
        inputs=[
            _in("q", "T", "(B, Hq, S, D) queries"),
            _in("k", "T", "(B, Hkv, S, D) new keys"),
            _in("w", "tensor(float)", "(Hkv, D, R) hash projections"),
            _in("k_codes", "tensor(int32)", "(B, Hkv, T, R/32) key-code cache"),
            _in("write_pos", "tensor(int64)", "(B, S) cache slot of each new key"),
        ],
        outputs=[
            OpSchema.FormalParameter("q_codes", "tensor(int32)", "(B, Hq, S, R/32) query codes"),
            OpSchema.FormalParameter("k_codes_out", "tensor(int32)", "(B, Hkv, T, R/32) the code cache with the new keys' codes"),
        ],
        type_constraints=[_T],
    ),
}


def register_schemas() -> None:
    """Make the hatac domain known to onnx (checker, onnxscript). Idempotent."""
    for name, schema in SCHEMAS.items():
        if not onnx.defs.has(name, DOMAIN):
            onnx.defs.register_schema(schema)


register_schemas()

hatac_opset = onnxscript.values.Opset(DOMAIN, VERSION)


def hash_encode(x, w):
    return hatac_opset.HashEncode(x, w)


def hamming_topk(q_codes, k_codes, q_pos, k, budget: float, sink: int = 0, recent: int = 0, window: int = 0,
                 k_cache=None, v_cache=None):
    """The caches are a prefetch hint of the CUDA body, not part of the op's meaning: not exported."""
    return hatac_opset.HammingTopK(q_codes, k_codes, q_pos, k, budget=budget, sink=sink, recent=recent, window=window)


def sparse_attention(q, k_cache, v_cache, indices, scale: float):
    return hatac_opset.SparseAttention(q, k_cache, v_cache, indices, scale=scale)


def hash_encode_step(q, k, w, k_codes, write_pos):
    return hatac_opset.HashEncodeStep(q, k, w, k_codes, write_pos)


def translation_table() -> dict:
    """torch op -> onnxscript function, for ``torch.onnx.export(custom_translation_table=...)``."""
    import hatac.export.functional  # noqa: F401  (registers hatac_export::hash_encode_step)

    hatac_ops = torch.ops.hatac
    return {
        hatac_ops.hash_encode.default: hash_encode,
        hatac_ops.hamming_topk.default: hamming_topk,
        hatac_ops.sparse_attention.default: sparse_attention,
        torch.ops.hatac_export.hash_encode_step.default: hash_encode_step,
    }
