"""A decode step's residual add and the RMSNorm after it call ``hatac::add_rms_norm``, whose CUDA body is one
kernel launched with programmatic dependent launch.

Why: in a Llama-style decoder the add and the norm sit between two weight streams (``o_proj`` -> gate/up,
``down_proj`` -> the next q/k/v). Inductor fuses them into one kernel too, but (torch 2.11) launches it
without PDL; hatac's kernel launches while the GEMV in front drains and lets the GEMV behind launch under it
(H100, batch 8 / 32K: docs/PERFORMANCE.md, Decisions). Same math, same roundings.
Runtime-only, like ``RouteDecodeLinears``: applied by ``hatac.runtime.decode_step.runtime_decode_graph`` to the
runtime's copy of the decode graph; ``DecodeOptions(norm=False)`` turns it off.
"""

from __future__ import annotations

import operator

import torch
import torch.fx as fx

from hatac.passes.base import DECODE, NodeRewritePass
from hatac.passes.decode.match import ASSERT as _ASSERT
from hatac.passes.decode.match import calls as _call
from hatac.passes.decode.match import drop_asserts
from hatac.passes.decode.match import dtype as _dtype

aten = torch.ops.aten


def _add_rms_norm(out: fx.Node):
    """Match ``out = w * to(to(s, f32) * rsqrt(mean(to(s, f32)^2, [-1], True) + eps), dtype)`` for a tensor sum
    ``s = a + b`` of one 16- or 32-bit dtype (the casts may be absent in float32 graphs) whose float32 copy
    nothing else reads. Returns (a, b, w, eps, s, xf, nodes: the norm's, users first) or None."""
    if not _call(out, aten.mul.Tensor) or out.kwargs or len(out.args) != 2:
        return None
    w, t = next(((w, t) for w, t in (out.args, out.args[::-1]) if isinstance(w, fx.Node) and w.op == "get_attr"), (None, None))
    if not isinstance(t, fx.Node):
        return None
    m = t.args[0] if _call(t, aten.to.dtype) else t
    if not _call(m, aten.mul.Tensor) or len(m.args) != 2:
        return None
    r = next((a for a in m.args if _call(a, aten.rsqrt.default)), None)
    if r is None:
        return None
    xf = m.args[1] if m.args[0] is r else m.args[0]
    a = r.args[0]
    if not (_call(a, aten.add.Tensor) and isinstance(a.args[1], float) and _call(a.args[0], aten.mean.dim)):
        return None
    mean, eps = a.args
    p = mean.args[0]
    if not (list(mean.args[1]) == [-1] and tuple(mean.args[2:]) == (True,) and not mean.kwargs):
        return None
    if not (isinstance(xf, fx.Node) and _call(p, aten.pow.Tensor_Scalar) and tuple(p.args) == (xf, 2)):
        return None
    s = xf.args[0] if _call(xf, aten.to.dtype) and tuple(xf.args[1:]) == (torch.float32,) else xf
    if not _call(s, aten.add.Tensor) or s.kwargs or len(s.args) != 2 or not all(isinstance(v, fx.Node) for v in s.args):
        return None
    dt = _dtype(s)
    if dt is None or any(_dtype(v) != dt for v in (*s.args, out)) or _dtype(w) not in (None, dt):
        return None
    chain = [out] + ([t] if t is not m else []) + [m, r, a, mean, p] + ([xf] if xf is not s else [])
    for node, allowed in ((t, {out}), (m, {t} if t is not m else {out}), (r, {m}), (a, {r}), (mean, {a}), (p, {mean})):
        if any(u not in allowed and not _call(u, _ASSERT) for u in node.users):
            return None
    if xf is not s and _dtype(xf) != dt and any(u not in set(chain) and not _call(u, _ASSERT) for u in xf.users):
        return None  # the float32 copy is read elsewhere: the fused op does not give it
    return s.args[0], s.args[1], w, eps, s, xf, chain


class FuseAddRMSNorm(NodeRewritePass):
    """``w * RMSNorm(a + b)`` -> ``hatac::add_rms_norm(a, b, w, eps)``; the sum (the residual stream) is the
    op's first output and replaces the add everywhere else."""

    modes = (DECODE,)

    def rewrite(self, gm: fx.GraphModule, out: fx.Node) -> bool:
        found = _add_rms_norm(out)
        if found is None:
            return False
        a, b, w, eps, s, xf, chain = found
        with gm.graph.inserting_before(out):
            fused = gm.graph.call_function(torch.ops.hatac.add_rms_norm.default, (a, b, w, eps))
            total = gm.graph.call_function(operator.getitem, (fused, 0))
            normed = gm.graph.call_function(operator.getitem, (fused, 1))
        for node, like in ((total, s), (normed, out)):
            node.meta.update({k: v for k, v in like.meta.items() if k in ("val", "tensor_meta")})
        out.replace_all_uses_with(normed)
        for node in chain + [s]:
            drop_asserts(gm.graph, node)
            if node.users:  # only the sum, or a no-op cast of it, is read after the norm
                node.replace_all_uses_with(total)
            gm.graph.erase_node(node)
        return True
