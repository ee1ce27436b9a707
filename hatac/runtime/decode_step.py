"""Decode steps with static shapes: a preallocated cache, a fixed selection width, in-place position
updates, the step compiled with ``torch.compile`` and, on CUDA, captured in a CUDA graph.

Everything a step needs lives in tensors that keep their address: the token ids buffer, the cache
tensors and the row lengths (which double as the new token's position and write slot). A replay
therefore needs no host synchronization and no allocation; the host only keeps its own copy of the
lengths by counting steps.
"""

from __future__ import annotations

import copy
import os

import torch
import torch.fx as fx

from hatac.runtime.cache import HataCache
from hatac.passes.rewrite.cache_inputs import TOPK_WIDTH, WRITE_POS

# The decode step's linears through hatac::linear (a Triton GEMV for a few rows on CUDA); HATAC_DECODE_LINEAR=0: off.
# "gated": a stacked gate/up projection and its SiLU-and-mul as one hatac::linear_silu_mul; HATAC_DECODE_GATED=0: off.
DECODE_LINEAR = {
    "enabled": os.environ.get("HATAC_DECODE_LINEAR", "1") != "0",
    "gated": os.environ.get("HATAC_DECODE_GATED", "1") != "0",
    # "norm": a residual add and the RMSNorm after it as one hatac::add_rms_norm; HATAC_DECODE_NORM=0: off.
    "norm": os.environ.get("HATAC_DECODE_NORM", "1") != "0",
    # "rope": a hashed layer's rotary embedding in its encode launch (hatac::rope_hash_encode_step_kv);
    # HATAC_DECODE_ROPE=0: off.
    "rope": os.environ.get("HATAC_DECODE_ROPE", "1") != "0",
}


def runtime_decode_graph(model) -> fx.GraphModule:
    """The graph a static decode step runs: the model's decode graph, with each hashed layer's rotary embedding
    in its encode launch (``hatac::rope_hash_encode_step_kv``, :class:`hatac.passes.decode.rope.FuseRoPEEncode`),
    each residual add and the RMSNorm after it as one ``hatac::add_rms_norm``
    (:class:`hatac.passes.decode.norms.FuseAddRMSNorm`), a gated MLP's
    stacked gate/up projection and its SiLU-and-mul as one ``hatac::linear_silu_mul``
    (:class:`hatac.passes.decode.linears.FuseGatedLinear`) and the other linears routed through
    ``hatac::linear`` (:class:`hatac.passes.decode.linears.RouteDecodeLinears`), on a copy of the graph that
    shares the model's weights. The model's own graph, which is what gets saved and exported, is unchanged.
    Cached on the model."""
    key = "_runtime_decode_graph"
    if key not in model.__dict__:
        gm = model.decode_graph
        if DECODE_LINEAR["enabled"]:
            from hatac.passes.decode.linears import FuseGatedLinear, RouteDecodeLinears
            from hatac.passes.decode.norms import FuseAddRMSNorm

            gm = fx.GraphModule(gm, copy.deepcopy(gm.graph))  # a copy of the nodes; the same tensors
            if DECODE_LINEAR["rope"]:
                from hatac.passes.decode.rope import FuseRoPEEncode

                gm = FuseRoPEEncode().call(gm).graph_module
            if DECODE_LINEAR["norm"]:
                gm = FuseAddRMSNorm().call(gm).graph_module
            if DECODE_LINEAR["gated"]:
                gm = FuseGatedLinear().call(gm).graph_module
            gm = RouteDecodeLinears().call(gm).graph_module
        model.__dict__[key] = gm
    return model.__dict__[key]


def compiled_decode(model, backend: str = "inductor"):
    """``torch.compile`` of :func:`runtime_decode_graph`, one per backend, cached on the model."""
    cache = model.__dict__.setdefault("_compiled_decode", {})
    if backend not in cache:
        cache[backend] = torch.compile(runtime_decode_graph(model), fullgraph=True, backend=backend)
    return cache[backend]


class StaticDecodeStep:
    """One decode step of ``model`` over ``cache`` (whose capacity must not change afterwards).

    ``compile``: wrap the decode graph in ``torch.compile(fullgraph=True)``; ``cuda_graph``: capture
    the step (graph call plus the length update) in a CUDA graph and replay it. The compiled function
    is kept on the model and compiled with torch.compile's automatic dynamic shapes: the first cache
    shape compiles static, a second one recompiles with dynamic batch and capacity that serve all later
    ones, so steps over new caches reuse it (and never hit dynamo's recompile limit and fall back to eager).
    """

    def __init__(self, model, cache: HataCache, compile: bool = True, cuda_graph: bool | None = None, backend: str = "inductor"):
        if not cache.tensors:
            raise ValueError("allocate the cache (prefill) before building a static decode step")
        self.model, self.cache = model, cache
        self.batch = cache.batch_size
        self.capacity = cache.capacity
        device = cache.lengths.device
        self.cuda_graph = device.type == "cuda" if cuda_graph is None else cuda_graph
        self.ids = torch.zeros(self.batch, 1, dtype=torch.long, device=device)
        self.keep = torch.zeros(1, dtype=torch.long, device=device)
        self.width = model.topk_width(self.capacity)
        self.fn = compiled_decode(model, backend) if compile else runtime_decode_graph(model)
        self.graph = None
        self.out = None
        if self.cuda_graph:
            self._capture()

    def _inputs(self) -> dict:
        pos = self.cache.lengths.view(self.batch, 1)
        inputs = {"input_ids": self.ids, "position_ids": pos, WRITE_POS: pos, **self.cache.tensors}
        if any(s.hashed for s in self.model.layers.values()):
            inputs[TOPK_WIDTH] = self.width
        if self.model.has_logits_to_keep:
            inputs["logits_to_keep"] = self.keep
        return inputs

    def _step(self) -> torch.Tensor:
        logits = self.fn(**self._inputs())
        self.cache.lengths.add_(1)
        return logits

    def _capture(self) -> None:
        saved = self.cache.lengths.clone()
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):  # warm up (compilation, autotuning) off the capture
            for _ in range(3):
                self._step()
                self.cache.lengths.copy_(saved)
        torch.cuda.current_stream().wait_stream(stream)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):
            self.out = self._step()
        self.cache.lengths.copy_(saved)  # the warm-up and capture wrote past the valid slots only

    def __call__(self, input_ids: torch.Tensor) -> torch.Tensor:
        """Feed one token per row; returns logits (B, 1, V). Rows must have room: lengths < capacity."""
        if max(self.cache.host_lengths) >= self.capacity:
            raise ValueError(f"static cache full ({self.capacity} slots)")
        self.ids.copy_(input_ids.view(self.batch, 1))
        if self.graph is not None:
            self.graph.replay()
            logits = self.out
        else:
            logits = self._step()
        self.cache.host_lengths = [n + 1 for n in self.cache.host_lengths]
        return logits
