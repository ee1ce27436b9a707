"""Decode steps with static shapes: a preallocated cache, a fixed selection width, in-place position
updates, the step compiled with ``torch.compile`` and, on CUDA, captured in a CUDA graph.

Everything a step needs lives in tensors that keep their address: the token ids buffer, the cache
tensors and the row lengths (which double as the new token's position and write slot). A replay
therefore needs no host synchronization and no allocation; the host only keeps its own copy of the
lengths by counting steps.
"""

from __future__ import annotations

import copy

import torch
import torch.fx as fx

from hatac.passes.base import DECODE, PassContext, PassManager
from hatac.passes.rewrite.cache_inputs import TOPK_WIDTH, WRITE_POS
from hatac.runtime.cache import HataCache
from hatac.runtime.options import DecodeOptions, check, decode_passes, kernel_scope


def runtime_decode_graph(model, options: DecodeOptions | None = None) -> fx.GraphModule:
    """The graph a static decode step runs: the model's decode graph rewritten by the runtime decode passes that
    ``options`` (default: ``model.decode_options``) asks for (:func:`hatac.runtime.options.decode_passes`: each
    hashed layer's rotary embedding in its encode launch, each residual add and the RMSNorm after it as one
    ``hatac::add_rms_norm``, a gated MLP's stacked gate/up projection and its SiLU-and-mul as one
    ``hatac::linear_silu_mul`` and the other linears routed through ``hatac::linear``), run by ``PassManager``
    on a copy of the graph that shares the model's weights. The model's own graph, which is what gets saved
    and exported, is unchanged. Cached on the model, one per options."""
    options = check(model.decode_options if options is None else options)
    cache = model.__dict__.setdefault("_runtime_decode_graph", {})
    if options not in cache:
        gm = model.decode_graph
        passes = decode_passes(options)
        if passes:
            gm = fx.GraphModule(gm, copy.deepcopy(gm.graph))  # a copy of the nodes; the same tensors
            ctx = PassContext(config=model.recipe, model=model, mode=DECODE)
            gm = PassManager(passes).run(gm, ctx).graph_module
        cache[options] = gm
    return cache[options]


def compiled_decode(model, backend: str = "inductor", options: DecodeOptions | None = None):
    """``torch.compile`` of :func:`runtime_decode_graph`, one per (options, backend), cached on the model."""
    options = check(model.decode_options if options is None else options)
    cache = model.__dict__.setdefault("_compiled_decode", {})
    if (options, backend) not in cache:
        cache[(options, backend)] = torch.compile(runtime_decode_graph(model, options), fullgraph=True, backend=backend)
    return cache[(options, backend)]


class StaticDecodeStep:
    """One decode step of ``model`` over ``cache`` (whose capacity must not change afterwards).

    ``compile``: wrap the decode graph in ``torch.compile(fullgraph=True)``; ``cuda_graph``: capture
    the step (graph call plus the length update) in a CUDA graph and replay it. The compiled function
    is kept on the model and compiled with torch.compile's automatic dynamic shapes: the first cache
    shape compiles static, a second one recompiles with dynamic batch and capacity that serve all later
    ones, so steps over new caches reuse it (and never hit dynamo's recompile limit and fall back to eager).

    ``options`` (default: ``model.decode_options``, read now): the runtime decode passes of the graph, and the
    kernel options in effect while the step runs, compiles and is captured.
    """

    def __init__(self, model, cache: HataCache, compile: bool = True, cuda_graph: bool | None = None, backend: str = "inductor",
                 options: DecodeOptions | None = None):
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
        self.options = check(model.decode_options if options is None else options)
        self.fn = compiled_decode(model, backend, self.options) if compile else runtime_decode_graph(model, self.options)
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
        with kernel_scope(self.options):
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
