"""Pattern passes: find a subgraph written as a Python function and replace it with another.

A :class:`PatternPass` is declared with two functions of the same placeholders::

    class FuseAddRelu(PatternPass):
        position = "after_rewrite"

        @staticmethod
        def pattern(x, y):
            return torch.ops.aten.relu.default(torch.ops.aten.add.Tensor(x, y))

        @staticmethod
        def replacement(x, y):
            return torch.ops.my_ns.add_relu.default(x, y)

Both are traced with ``torch.fx.symbolic_trace`` and handed to
``torch.fx.subgraph_rewriter.replace_pattern_with_filters``. Write them with the same ATen / hatac
*overloads* the graph holds (``torch.ops.hatac.hash_encode.default``, not ``torch.ops.hatac.hash_encode``):
the matcher compares targets exactly.

**Mutating ops.** The stock subgraph matcher anchors a match on the nodes the pattern *returns* and walks
backwards through their arguments. A mutating op such as ``hatac::cache_write`` returns nothing and has no
users, so it is reachable from no anchor; the matcher then fails with a ``KeyError`` on the pattern's
placeholders (tested on torch 2.13). PatternPass therefore makes every user-less impure node of the
pattern an extra output of the pattern graph (so it becomes an anchor) and pads the replacement's outputs
to the same count (those outputs have no users to rewire). Because the replacement lands at one point of
the graph (before the first user of the pattern's outputs), the mutations of a match move there too; a
filter refuses a match when any node outside it reads or writes a mutated tensor between the original
mutation and that point, or when a value the replacement needs is defined after it. The rewriter itself
stays the stock one.

The replacement nodes inherit ``hatac_layer`` and ``nn_module_stack`` from the nodes they replace, so
``hatac inspect --graph`` and the exporters still know their layer.
"""

from __future__ import annotations

import copy
import inspect
from typing import Callable

import torch.fx as fx
from torch.fx import subgraph_rewriter

from hatac.passes.base import PassBase, PassContext, PassResult

_META_KEYS = ("hatac_layer", "nn_module_stack")


def mutated_args(node: fx.Node) -> list[fx.Node]:
    """The argument nodes an op writes to, from its schema's alias annotations (``Tensor(a!)``)."""
    schema = getattr(node.target, "_schema", None)
    if node.op != "call_function" or schema is None:
        return []
    out = []
    for i, arg in enumerate(schema.arguments):
        if arg.alias_info is None or not arg.alias_info.is_write:
            continue
        value = node.args[i] if i < len(node.args) else node.kwargs.get(arg.name)
        if isinstance(value, fx.Node):
            out.append(value)
    return out


def _side_effect_sinks(graph: fx.Graph) -> list[fx.Node]:
    return [n for n in graph.nodes if n.op == "call_function" and not n.users and n.is_impure()]


def _trace(fn) -> fx.Graph:
    if isinstance(fn, fx.GraphModule):
        return copy.deepcopy(fn.graph)
    if isinstance(fn, fx.Graph):
        return copy.deepcopy(fn)
    return fx.symbolic_trace(fn).graph


def _outputs(graph: fx.Graph) -> tuple[fx.Node, list]:
    out = next(n for n in reversed(graph.nodes) if n.op == "output")
    ret = out.args[0]
    return out, list(ret) if isinstance(ret, (tuple, list)) else [ret]


def prepare_pattern(pattern, replacement) -> tuple[fx.Graph, fx.Graph, int]:
    """Trace both functions; make the pattern's user-less side-effect nodes extra outputs (anchors) and
    pad the replacement's outputs to match. Returns (pattern graph, replacement graph, sinks added)."""
    pg, rg = _trace(pattern), _trace(replacement)
    sinks = _side_effect_sinks(pg)
    p_out, p_ret = _outputs(pg)
    r_out, r_ret = _outputs(rg)
    p_nodes = [x for x in p_ret if isinstance(x, fx.Node)]
    r_nodes = [x for x in r_ret if isinstance(x, fx.Node)]
    if len(p_nodes) != len(r_nodes):
        raise ValueError(f"pattern returns {len(p_nodes)} values, replacement {len(r_nodes)}")
    if sinks:
        # any node will do as the stand-in output: a user-less sink has no uses to rewire
        pad = (r_nodes or [n for n in rg.nodes if n.op == "call_function"] or [n for n in rg.nodes if n.op == "placeholder"])[0]
        p_out.args = (tuple(p_nodes + sinks),)
        r_out.args = (tuple(r_nodes + [pad] * len(sinks)),)
    return pg, rg, len(sinks)


def insertion_point(match, graph: fx.Graph) -> fx.Node | None:
    """Where ``replace_pattern`` will put the replacement: before the first user of the returned nodes,
    or after the last returned node when they have no users (mirrors torch.fx.subgraph_rewriter)."""
    users = set()
    for n in match.returning_nodes:
        users.update(n.users)
    if users:
        return next(n for n in graph.nodes if n in users)
    nxt = None
    for n in reversed(graph.nodes):
        if n in match.returning_nodes:
            return nxt
        nxt = n
    return None


def safe_to_move(match, graph: fx.Graph, pattern_graph: fx.Graph) -> bool:
    """A match may be replaced at its insertion point without changing what any other node sees.

    Checks the direct users of each mutated tensor (a graph input, in hatac's graphs); a reader through a
    view of it is not seen, so keep views of mutated tensors out of a pattern's reach."""
    where = insertion_point(match, graph)
    if where is None:
        return False
    order = {n: i for i, n in enumerate(graph.nodes)}
    at = order[where]
    inner = {gn for pn, gn in match.nodes_map.items() if pn.op not in ("placeholder", "output")}
    # every input of the replacement must exist before it
    for gn in match.placeholder_nodes:
        if isinstance(gn, fx.Node) and order[gn] >= at:
            return False
    # no outside reader or writer of a mutated tensor between the old and the new place of the mutation
    for node in inner:
        for tensor in mutated_args(node):
            lo, hi = sorted((order[node], at))
            for user in tensor.users:
                if user not in inner and lo < order[user] < hi:
                    return False
    return True


class PatternPass(PassBase):
    """Replace every match of ``pattern`` with ``replacement`` (see the module docstring).

    Subclasses set ``pattern`` and ``replacement`` (functions, ideally ``staticmethod``), and may set
    ``modes``, ``position`` and ``ignore_literals``, and override :meth:`accept` to veto a match. After
    :meth:`call`, ``ctx.meta["pattern_matches"][name]`` holds the number of replacements made.
    """

    pattern: Callable | None = None
    replacement: Callable | None = None
    ignore_literals: bool = False

    def accept(self, match, gm: fx.GraphModule, ctx: PassContext) -> bool:
        """Veto a match (``match.nodes_map`` maps pattern nodes to graph nodes). Default: accept."""
        return True

    def call(self, gm: fx.GraphModule, ctx: PassContext) -> PassResult:
        if self.pattern is None or self.replacement is None:
            raise TypeError(f"{self.name} must define pattern and replacement")
        pattern_graph, replacement_graph, _ = prepare_pattern(_unbound(self, "pattern"), _unbound(self, "replacement"))
        replaced = subgraph_rewriter.replace_pattern_with_filters(
            gm,
            pattern_graph,
            replacement_graph,
            match_filters=[safe_to_move, lambda m, g, p: self.accept(m, gm, ctx)],
            ignore_literals=self.ignore_literals,
        )
        for rp in replaced:
            self._carry_meta(rp)
        ctx.meta.setdefault("pattern_matches", {})[self.name] = len(replaced)
        if replaced:
            gm.recompile()
        return PassResult(gm, bool(replaced))

    @staticmethod
    def _carry_meta(rp) -> None:
        matched = [gn for pn, gn in rp.nodes_map.items() if pn.op not in ("placeholder", "output")]
        source = next((n for n in matched if "hatac_layer" in n.meta), matched[0] if matched else None)
        if source is None:
            return
        for node in rp.replacements:
            for key in _META_KEYS:
                if key in source.meta and key not in node.meta:
                    node.meta[key] = copy.copy(source.meta[key])


def _unbound(obj, name: str):
    """``obj.<name>`` as a plain function: a staticmethod's function, or whatever was stored as is."""
    attr = inspect.getattr_static(obj, name)
    return attr.__func__ if isinstance(attr, staticmethod) else attr


def count_targets(gm: fx.GraphModule, target) -> int:
    return sum(1 for n in gm.graph.nodes if n.op == "call_function" and n.target is target)


__all__ = ["PatternPass", "count_targets", "insertion_point", "mutated_args", "prepare_pattern", "safe_to_move"]
