"""A converted model: the source transformers model's weights driven through hatac's rewritten graphs.

``HataForCausalLM`` is a transformers ``PreTrainedModel`` with ``GenerationMixin``, so ``generate()``
(greedy, sampling, beams) works as users expect. Its ``forward`` turns the usual arguments (input ids,
a 2D attention mask, a cache) into the graph's explicit inputs (positions, write slots, selection width,
per-layer cache tensors) and runs the prefill graph for multi-token chunks or the decode graph for
single tokens.
"""

from __future__ import annotations

import dataclasses

import torch
import torch.fx as fx
from transformers import GenerationMixin, PretrainedConfig, PreTrainedModel
from transformers.modeling_outputs import CausalLMOutputWithPast

from hatac import reference
from hatac.runtime.cache import HataCache
from hatac.runtime.options import DecodeOptions, kernel_scope
from hatac.runtime.options import check as check_options
from hatac.config import HataConfig
from hatac.errors import HatacError
from hatac.graphs import HataGraphs
from hatac.passes.rewrite.cache_inputs import TOPK_WIDTH, WRITE_POS

PREFILL, DECODE = "prefill", "decode"

# The name transformers gives the cache in generate(), forward() and model outputs: ``past_key_values``
# up to 5.23, ``cache`` from 5.24 on (the old name then goes through a deprecation shim that warns). Read
# from the output class, so every version the pyproject accepts gets its own name and no warning.
CACHE_KWARG = "cache" if "cache" in {f.name for f in dataclasses.fields(CausalLMOutputWithPast)} else "past_key_values"


def step_positions(lengths: torch.Tensor, valid: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Positions and cache slots of a chunk's tokens.

    lengths: (B,) tokens already cached per row; valid: (B, S) bool, False for padding. Valid tokens are
    numbered from each row's length in order (their RoPE position and their slot); padding goes to the
    slots just after them, which later tokens overwrite, and its queries look at the last valid token.
    """
    rank = valid.cumsum(-1) - 1
    n_valid = valid.sum(-1, keepdim=True)
    pad_rank = (~valid).cumsum(-1) - 1
    base = lengths.unsqueeze(-1)
    write_pos = base + torch.where(valid, rank, n_valid + pad_rank)
    positions = torch.where(valid, base + rank, (base + n_valid - 1).clamp_min(0))
    return positions, write_pos


class HataForCausalLM(PreTrainedModel, GenerationMixin):
    config_class = PretrainedConfig
    base_model_prefix = "hf_model"
    main_input_name = "input_ids"
    _supports_sdpa = True

    def __init__(self, hf_model: PreTrainedModel, graphs: HataGraphs, recipe: HataConfig, hash_weights: dict[int, torch.Tensor], manifest: dict | None = None,
                 options: DecodeOptions | None = None):
        super().__init__(hf_model.config)
        self.hf_model = hf_model
        self.graphs = torch.nn.ModuleDict({PREFILL: graphs.prefill, DECODE: graphs.decode})
        self.layers = graphs.layers
        self.has_logits_to_keep = graphs.has_logits_to_keep
        self.recipe = recipe
        self.hash_weights = hash_weights
        self.manifest = manifest or {}
        self.generation_config = hf_model.generation_config
        self.decode_options = options
        # The graph as captured, before any pass: for inspection only (not a registered submodule).
        object.__setattr__(self, "captured_graph", graphs.captured)

    @property
    def decode_options(self) -> DecodeOptions:
        """How this model decodes (:class:`hatac.runtime.options.DecodeOptions`); assign others to change it: the
        next static decode step is built with them (the runtime graphs and compiled steps are kept per options)."""
        return self.__dict__["_decode_options"]

    @decode_options.setter
    def decode_options(self, options: DecodeOptions | None) -> None:
        self.__dict__["_decode_options"] = check_options(options)

    # -- graphs ---------------------------------------------------------------------------------------
    @property
    def prefill_graph(self) -> fx.GraphModule:
        return self.graphs[PREFILL]

    @property
    def decode_graph(self) -> fx.GraphModule:
        return self.graphs[DECODE]

    # Prefill longer prompts in chunks of at most this many tokens summed over the batch (bounds activation
    # memory, so 128K-token prompts fit next to their cache).
    prefill_chunk: int = 8192
    # On CUDA, generate() uses a static cache and a compiled, CUDA-graph-captured decode step.
    static_decode: bool = True
    # generate()'s static cache capacity is rounded up to a multiple of this, so prompts of similar
    # lengths share cache shapes (and selection widths) and reuse the compiled step instead of recompiling.
    capacity_bucket: int = 1024

    def new_cache(self, capacity: int = 0, static: bool = False) -> HataCache:
        return HataCache(self.layers, dtype=self.hf_model.dtype, device=self.device, capacity=capacity, static=static)

    def topk_width(self, max_length: int) -> int:
        """Selection width covering every hashed layer's budget at contexts up to ``max_length``."""
        widths = [reference.topk_width(max_length, s.budget, s.sink, s.recent) for s in self.layers.values() if s.hashed]
        return max(widths, default=1)

    def step_inputs(self, cache: HataCache, input_ids: torch.Tensor, attention_mask: torch.Tensor | None, mode: str, logits_to_keep: int | torch.Tensor = 0) -> tuple[dict, list[int], torch.Tensor]:
        """The graph's keyword inputs for one step, and the new token counts (host list and device tensor)."""
        b, s = input_ids.shape
        cache.ensure(b, cache.get_seq_length() + s)
        if attention_mask is None:
            valid = torch.ones(b, s, dtype=torch.bool, device=input_ids.device)
            n_host = [s] * b
        else:
            valid = attention_mask[:, -s:].to(device=input_ids.device, dtype=torch.bool)
            n_host = [s] * b if s == 1 else valid.sum(-1).tolist()
        positions, write_pos = step_positions(cache.lengths, valid)
        inputs = {"input_ids": input_ids, "position_ids": positions, WRITE_POS: write_pos, **cache.tensors}
        if mode == DECODE and any(sp.hashed for sp in self.layers.values()):
            inputs[TOPK_WIDTH] = self.topk_width(max(a + n for a, n in zip(cache.host_lengths, n_host)))
        if self.has_logits_to_keep:
            if isinstance(logits_to_keep, torch.Tensor):
                keep = logits_to_keep.to(input_ids.device)
            else:
                keep = torch.arange(s - logits_to_keep if 0 < logits_to_keep <= s else 0, s, device=input_ids.device)
            inputs["logits_to_keep"] = keep
        return inputs, n_host, valid.sum(-1)

    def step(self, cache: HataCache, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None, mode: str | None = None, logits_to_keep: int | torch.Tensor = 0) -> torch.Tensor:
        """Run one chunk through the prefill (default for > 1 token) or decode graph; returns logits."""
        s = input_ids.shape[1]
        mode = mode or (PREFILL if s > 1 else DECODE)
        if mode == PREFILL and s > self._chunk_len(input_ids.shape[0]):
            return self._chunked_prefill(cache, input_ids, attention_mask, logits_to_keep)
        if mode == DECODE and s == 1 and cache.static and self.static_decode and cache.tensors:
            if cache.static_step is None:
                from hatac.runtime.decode_step import StaticDecodeStep

                cache.static_step = StaticDecodeStep(self, cache)
            return cache.static_step(input_ids)
        inputs, n_host, n_dev = self.step_inputs(cache, input_ids, attention_mask, mode, logits_to_keep)
        with kernel_scope(self.decode_options):
            logits = self.graphs[mode](**inputs)
        cache.advance(n_host, n_dev)
        if not self.has_logits_to_keep and isinstance(logits_to_keep, int) and logits_to_keep > 0:
            logits = logits[:, -logits_to_keep:]
        return logits

    def _chunk_len(self, batch: int) -> int:
        return max(128, self.prefill_chunk // max(1, batch))

    def _chunked_prefill(self, cache: HataCache, input_ids, attention_mask, logits_to_keep) -> torch.Tensor:
        s, c = input_ids.shape[1], self._chunk_len(input_ids.shape[0])
        cache.ensure(input_ids.shape[0], cache.get_seq_length() + s)
        if isinstance(logits_to_keep, torch.Tensor):
            raise ValueError("chunked prefill takes logits_to_keep as a count")
        keep = s if logits_to_keep == 0 else logits_to_keep
        outs = []
        for start in range(0, s, c):
            end = min(start + c, s)
            mask = None if attention_mask is None else attention_mask[:, attention_mask.shape[1] - s + start : attention_mask.shape[1] - s + end]
            chunk_keep = max(0, min(end - start, keep - (s - end)))
            logits = self.step(cache, input_ids[:, start:end], mask, PREFILL, chunk_keep if chunk_keep else 1)
            if chunk_keep:
                outs.append(logits[:, -chunk_keep:])
        return torch.cat(outs, dim=1)

    # -- transformers ---------------------------------------------------------------------------------
    def forward(
        self,
        input_ids: torch.LongTensor,
        attention_mask: torch.Tensor | None = None,
        cache: HataCache | None = None,
        logits_to_keep: int | torch.Tensor = 0,
        hata_mode: str | None = None,
        past_key_values: HataCache | None = None,
        **kwargs,
    ) -> CausalLMOutputWithPast:
        """Logits for ``input_ids``; the cache (``cache=``, or ``past_key_values=`` as transformers before
        5.24 names it) is advanced in place and returned in the output. Without one, a fresh cache is used."""
        if kwargs.get("inputs_embeds") is not None:
            raise ValueError("hatac models take input_ids, not inputs_embeds")
        cache = _pick_cache(cache, past_key_values)
        if not isinstance(cache, HataCache):
            cache = self.new_cache()
        logits = self.step(cache, input_ids, attention_mask, hata_mode, logits_to_keep)
        return CausalLMOutputWithPast(logits=logits, **{CACHE_KWARG: cache})

    def generate(self, *args, **kwargs):
        """transformers' ``generate()`` with a :class:`HataCache` (a static one, sized for the request, on CUDA)."""
        cache = _pick_cache(kwargs.pop("cache", None), kwargs.pop("past_key_values", None))
        if cache is None:
            static = self.device.type == "cuda" and self.static_decode
            capacity = 0
            if static:
                ids = args[0] if args else kwargs.get("input_ids")
                gc = kwargs.get("generation_config") or self.generation_config
                max_new = kwargs.get("max_new_tokens") or gc.max_new_tokens
                if max_new is None:
                    max_new = max(1, (kwargs.get("max_length") or gc.max_length) - ids.shape[1])
                capacity = ids.shape[1] + max_new
                capacity = -(-capacity // self.capacity_bucket) * self.capacity_bucket
            cache = self.new_cache(capacity=capacity, static=static)
        kwargs[CACHE_KWARG] = cache
        return super().generate(*args, **kwargs)

    def _apply(self, fn, *args, **kwargs):
        """Refuse ``.to()``/``.cuda()``/``.half()`` to another device or dtype: torch.export baked the
        capture's device and dtype into the graphs (factory calls, metadata checks), so a moved model would
        fail deep inside them. Moves that change nothing pass."""
        p = next(self.hf_model.parameters(), None) if "hf_model" in self._modules else None
        if p is not None and "graphs" in self._modules:
            probe = fn(torch.empty(0, dtype=p.dtype, device=p.device))
            if isinstance(probe, torch.Tensor) and (probe.device != p.device or probe.dtype != p.dtype):
                raise HatacError(
                    f"a converted model runs on the device and dtype it was captured on ({p.device}, {p.dtype}); "
                    f"load it there instead: hatac.load(folder, device=..., dtype=...), or convert the model after moving it"
                )
        return super()._apply(fn, *args, **kwargs)

    def get_input_embeddings(self):
        return self.hf_model.get_input_embeddings()


def _pick_cache(cache, past_key_values):
    """The one cache passed under either name (both at once is an error, as in transformers)."""
    if cache is not None and past_key_values is not None:
        raise ValueError("pass the cache once: cache= or past_key_values=, not both")
    return cache if cache is not None else past_key_values
