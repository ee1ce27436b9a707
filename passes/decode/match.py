"""Small node tests shared by the runtime decode passes that match ATen subgraphs by hand
(``decode_norms``, ``decode_rope``): what a node calls, what its example value is, and the metadata asserts
that export leaves on tensors (readers a rewrite may drop, :func:`drop_asserts`)."""

from __future__ import annotations

import torch
import torch.fx as fx

ASSERT = torch.ops.aten._assert_tensor_metadata.default


def calls(node, *targets) -> bool:
    """Whether ``node`` is an FX node calling one of ``targets``."""
    return isinstance(node, fx.Node) and node.op == "call_function" and node.target in targets


def meta_val(node):
    """The example value export recorded for ``node`` (``meta["val"]``), or None."""
    return node.meta.get("val") if isinstance(node, fx.Node) else None


def dtype(node) -> torch.dtype | None:
    """The dtype of ``node``'s example value, or None."""
    return getattr(meta_val(node), "dtype", None)


def drop_asserts(graph: fx.Graph, node: fx.Node) -> None:
    """Erase the metadata asserts that read ``node``, so a rewrite can replace or erase it."""
    for user in list(node.users):
        if calls(user, ASSERT):
            graph.erase_node(user)
