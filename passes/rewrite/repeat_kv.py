"""See through the grouped-query expansion of keys and values in front of an attention node.

If this pass misses the expansion, everything still computes the right thing, but every cache holds
H_q heads instead of H_kv (G times the memory and the bytes each decode step reads) and the hash
selection is made per query head. So it matches the expansion structurally, looking through the
shape-preserving ops that some torch versions leave around it (torch 2.11's export keeps the full-range
``aten.slice`` ops of ``x[:, :, None, :, :]``), and checks the result against the model's config.
"""

from __future__ import annotations

import warnings

import torch
import torch.fx as fx

from hatac.passes.base import PassBase, PassContext, PassResult

_UNSQUEEZE = (torch.ops.aten.unsqueeze.default,)
_EXPAND = (torch.ops.aten.expand.default,)
_RESHAPE = (torch.ops.aten.reshape.default, torch.ops.aten.view.default, torch.ops.aten._unsafe_view.default)
# Ops that are the identity when their output has the input's shape (full-range slices, no-op views).
_IDENTITY_WHEN_SAME_SHAPE = (
    torch.ops.aten.slice.Tensor,
    torch.ops.aten.alias.default,
    torch.ops.aten.clone.default,
    torch.ops.aten.contiguous.default,
    torch.ops.aten.expand.default,
    *_RESHAPE,
)


def _shape(node) -> tuple | None:
    val = node.meta.get("val") if isinstance(node, fx.Node) else None
    return tuple(val.shape) if isinstance(val, torch.Tensor) else None


def _skip_identities(node):
    """Walk back through ops that return their input unchanged (same shape, same values)."""
    while (
        isinstance(node, fx.Node)
        and node.op == "call_function"
        and node.target in _IDENTITY_WHEN_SAME_SHAPE
        and isinstance(node.args[0], fx.Node)
        and _shape(node) is not None
        and _shape(node) == _shape(node.args[0])
        and (node.target is not torch.ops.aten.slice.Tensor or _full_slice(node))
    ):
        node = node.args[0]
    return node


def _full_slice(node: fx.Node) -> bool:
    """aten.slice(x, dim, start, end, step) that keeps every element (the shapes are already equal)."""
    args = list(node.args) + [None] * (5 - len(node.args))
    start, step = args[2], args[4]
    return start in (None, 0) and step in (None, 1)


def strip_repeat_kv(node: fx.Node) -> fx.Node:
    """Given k or v as fed to SDPA, return the un-repeated (B, Hkv, S, D) tensor.

    transformers' ``repeat_kv`` is ``x[:, :, None].expand(B, Hkv, G, S, D).reshape(B, Hkv*G, S, D)``; a
    model that passes ``enable_gqa=True`` instead feeds the KV heads directly and nothing is stripped.
    """
    reshape = _skip_identities(node)
    if not (isinstance(reshape, fx.Node) and reshape.op == "call_function" and reshape.target in _RESHAPE):
        return node
    expand = _skip_identities(reshape.args[0])
    if not (isinstance(expand, fx.Node) and expand.target in _EXPAND):
        return node
    unsq = _skip_identities(expand.args[0])
    if not _inserts_group_axis(unsq):
        return node
    src = _skip_identities(unsq.args[0])
    out, base = _shape(node), _shape(src)
    if out is None or base is None or len(out) != 4 or len(base) != 4:
        return node
    # Only the head axis may differ, by a whole factor G.
    if out[0] != base[0] or out[2:] != base[2:] or base[1] == 0 or out[1] % base[1]:
        return node
    return src


def _inserts_group_axis(node) -> bool:
    """unsqueeze(x, 2), or a view/reshape of (B, H, S, D) to (B, H, 1, S, D)."""
    if not (isinstance(node, fx.Node) and node.op == "call_function" and isinstance(node.args[0], fx.Node)):
        return False
    if node.target in _UNSQUEEZE:
        return node.args[1] in (2, -3)
    if node.target in _RESHAPE:
        src, out = _shape(node.args[0]), _shape(node)
        return src is not None and out is not None and len(src) == 4 and out == (*src[:2], 1, *src[2:])
    return False


def _config_kv_heads(model: torch.nn.Module) -> int | None:
    cfg = getattr(model, "config", None)
    cfg = cfg.get_text_config() if hasattr(cfg, "get_text_config") else cfg
    n = getattr(cfg, "num_key_value_heads", None)
    return int(n) if isinstance(n, int) and n > 0 else None


class StripRepeatKV(PassBase):
    """Point each site's k and v at the KV-head tensors, so caches hold H_kv heads, not H_q."""

    def call(self, gm: fx.GraphModule, ctx: PassContext) -> PassResult:
        modified = False
        expected = _config_kv_heads(ctx.model)
        for site in ctx.sites.values():
            k, v = strip_repeat_kv(site.k), strip_repeat_kv(site.v)
            modified |= k is not site.k or v is not site.v
            site.k, site.v = k, v
            site.n_kv_heads = int(k.meta["val"].shape[1])
            if site.n_heads % site.n_kv_heads:
                raise ValueError(f"layer {site.layer}: {site.n_heads} query heads over {site.n_kv_heads} KV heads")
            if expected is not None and site.n_kv_heads > expected:
                warnings.warn(
                    f"layer {site.layer}: the attention node sees {site.n_kv_heads} KV heads but the config has "
                    f"{expected}; the grouped-query expansion was not recognized, so caches hold "
                    f"{site.n_kv_heads // expected}x the keys and values they need",
                    stacklevel=2,
                )
        return PassResult(gm, modified)
