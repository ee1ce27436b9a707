"""Broken user passes, loaded by file path in tests/passes/test_passes.py to check how failures are reported."""

import torch

from hatac.errors import HatacError
from hatac.passes import PassBase, PassResult


class Boom(PassBase):
    """Raises an ordinary exception."""

    def call(self, gm, ctx):
        raise RuntimeError("kaboom")


class Refuse(PassBase):
    """Raises a user-facing error."""

    def call(self, gm, ctx):
        raise HatacError("this model is not for me")


class BreakGraph(PassBase):
    """Returns normally, leaving the output computed by a node that sits before its own input."""

    position = "after_rewrite"
    modes = ("prefill", "decode")

    def call(self, gm, ctx):
        graph = gm.graph
        out = next(n for n in graph.nodes if n.op == "output")
        logits = out.args[0]
        first = next(n for n in graph.nodes if n.op != "placeholder")
        with graph.inserting_before(first):
            bad = graph.call_function(torch.ops.aten.neg.default, (logits,))
        out.args = (bad,)  # the output now depends on a node placed before its input
        return PassResult(gm, True)
