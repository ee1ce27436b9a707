"""Fusions over the rewritten graph, written as pattern passes (FuseEncodeStep runs by default: recipe fuse_encode)."""

from __future__ import annotations

import torch
import torch.fx as fx

import hatac.ops  # noqa: F401  (registers the hatac:: ops the patterns name)
from hatac.passes.base import DECODE, PassContext
from hatac.passes.pattern import PatternPass, count_targets

ops = torch.ops.hatac


class FuseEncodeStep(PatternPass):
    """Decode graph, hashed layers: ``hash_encode(k)`` + ``cache_write(codes)`` + ``hash_encode(q)`` become
    one ``hatac::hash_encode_step(q, k, W, key_codes, write_pos)``, so a GPU backend can encode the new
    key and the query in one launch. Same values, same code cache (the op is defined as exactly this
    sequence; see :func:`hatac.reference.hash_encode_step`).

    On by default (``HataConfig.fuse_encode``); with ``fuse_encode=False`` apply it by hand with
    ``--pass hatac.passes.fusions:FuseEncodeStep`` (or ``passes=[FuseEncodeStep()]``).
    """

    position = "after_rewrite"
    modes = (DECODE,)

    @staticmethod
    def pattern(q, k, w, key_codes, write_pos):
        codes = torch.ops.hatac.hash_encode.default(k, w)
        torch.ops.hatac.cache_write.default(key_codes, codes, write_pos)
        return torch.ops.hatac.hash_encode.default(q, w)

    @staticmethod
    def replacement(q, k, w, key_codes, write_pos):
        return torch.ops.hatac.hash_encode_step.default(q, k, w, key_codes, write_pos)

    def ensures(self, gm: fx.GraphModule, ctx: PassContext) -> None:
        hashed = sum(s.hashed for s in ctx.sites.values())
        fused = count_targets(gm, ops.hash_encode_step.default)
        if fused != hashed:
            raise ValueError(f"fused {fused} of {hashed} hashed layers (a layer's encode/write/encode did not match)")
