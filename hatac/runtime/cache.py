"""The KV cache and key-code cache of a converted model, as one object.

Keys, values and key codes of every layer are tensors owned here and passed to the graph as inputs, so
the codes live exactly as long as the keys: created with the cache, reordered with it (beam search),
dropped with it. Rows are stored compacted: row b's tokens sit in slots 0 .. lengths[b]-1 whatever its
left padding, so a padded row computes exactly what it would alone.
"""

from __future__ import annotations

import torch
from transformers.cache_utils import Cache

from hatac.graphs import LayerSpec
from hatac.passes.rewrite.cache_inputs import codes_name, k_cache_name, v_cache_name


class HataCache(Cache):
    """Per-layer (B, Hkv, T, D) keys and values, (B, Hkv, T, r/32) int32 key codes, and row lengths.

    Capacity grows by doubling when a step needs more slots (eager use); pass ``capacity`` up front for
    a fixed allocation (compiled or CUDA-graph use).
    """

    is_compileable = False

    def __init__(self, layers: dict[int, LayerSpec], dtype: torch.dtype, device: torch.device | str, capacity: int = 0, static: bool = False):
        super().__init__(layers=[])
        # static: the capacity is fixed at ``capacity`` and tensors keep their addresses (CUDA graphs).
        self.static = static
        self.static_step = None
        self.specs = layers
        self.dtype = dtype
        self.device = torch.device(device)
        self.initial_capacity = capacity
        self.tensors: dict[str, torch.Tensor] = {}
        self.lengths: torch.Tensor | None = None  # (B,) int64, on device
        self.host_lengths: list[int] = []  # the same, on the host, so steps need no device sync

    # -- allocation ---------------------------------------------------------------------------------
    @property
    def batch_size(self) -> int:
        return len(self.host_lengths)

    @property
    def capacity(self) -> int:
        t = next(iter(self.tensors.values()), None)
        return 0 if t is None else t.shape[2]

    def _alloc(self, batch: int, capacity: int) -> dict[str, torch.Tensor]:
        out = {}
        for layer, s in self.specs.items():
            out[k_cache_name(layer)] = torch.zeros(batch, s.n_kv_heads, capacity, s.head_dim, dtype=self.dtype, device=self.device)
            out[v_cache_name(layer)] = torch.zeros(batch, s.n_kv_heads, capacity, s.head_dim, dtype=self.dtype, device=self.device)
            if s.hashed:
                out[codes_name(layer)] = torch.zeros(batch, s.n_kv_heads, capacity, s.rbits // 32, dtype=torch.int32, device=self.device)
        return out

    def ensure(self, batch: int, needed: int) -> None:
        """Make room for ``needed`` slots per row, copying what is cached."""
        if not self.tensors:
            if self.static and needed > self.initial_capacity:
                raise ValueError(f"static cache of {self.initial_capacity} slots cannot hold {needed}")
            cap = self.initial_capacity if self.static else max(needed, self.initial_capacity, 16)
            self.tensors = self._alloc(batch, cap)
            self.lengths = torch.zeros(batch, dtype=torch.int64, device=self.device)
            self.host_lengths = [0] * batch
            return
        if batch != self.batch_size:
            raise ValueError(f"cache holds {self.batch_size} rows, step has {batch}")
        if needed <= self.capacity:
            return
        if self.static:
            raise ValueError(f"static cache of {self.capacity} slots cannot hold {needed}")
        new_cap = max(needed, 2 * self.capacity)
        grown = self._alloc(batch, new_cap)
        for name, t in self.tensors.items():
            grown[name][:, :, : t.shape[2]].copy_(t)
        self.tensors = grown

    def advance(self, n_new: list[int], n_new_device: torch.Tensor) -> None:
        self.host_lengths = [a + b for a, b in zip(self.host_lengths, n_new)]
        self.lengths.add_(n_new_device)

    # -- transformers Cache API -----------------------------------------------------------------------
    def get_seq_length(self, layer_idx: int = 0) -> int:
        return max(self.host_lengths, default=0)

    def get_max_cache_shape(self, layer_idx: int = 0) -> int:
        return -1

    def reorder_cache(self, beam_idx: torch.LongTensor) -> None:
        if not self.tensors:
            return
        idx = beam_idx.to(self.device)
        for t in [*self.tensors.values(), self.lengths]:  # in place: addresses stay valid for CUDA graphs
            t.copy_(t.index_select(0, idx))
        host = beam_idx.tolist()
        self.host_lengths = [self.host_lengths[i] for i in host]

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        self.reorder_cache(indices)

    def batch_repeat_interleave(self, repeats: int) -> None:
        self.reorder_cache(torch.arange(self.batch_size).repeat_interleave(repeats))

    def reset(self) -> None:
        self.tensors, self.lengths, self.host_lengths, self.static_step = {}, None, [], None

    def crop(self, max_length: int) -> None:
        self.host_lengths = [min(n, max_length) for n in self.host_lengths]
        self.lengths.clamp_(max=max_length)

    def __len__(self) -> int:
        return len(self.specs)

    def __repr__(self) -> str:
        return f"HataCache(layers={len(self.specs)}, batch={self.batch_size}, capacity={self.capacity}, lengths={self.host_lengths})"
