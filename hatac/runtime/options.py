"""How a loaded model decodes: :class:`DecodeOptions`, given to ``hatac.load(..., options=...)`` or
``hatac.convert(..., options=...)`` and kept on the model as ``model.decode_options``.

The runtime decode fusions rewrite the static decode step's own copy of the decode graph (never the saved
graph): :func:`decode_passes` turns the options into the pass list that ``PassManager`` runs. The runtime
graph and the compiled step are cached on the model per options (and backend), so assigning other options
to ``model.decode_options`` builds a new step in the same process. docs/CONFIG.md lists every field.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

from hatac.errors import HatacError
from hatac.kernels import options as kernel_options
from hatac.kernels.options import KernelOptions


@dataclass(frozen=True)
class DecodeOptions:
    """``linears``: the decode step's linears through ``hatac::linear`` (a Triton GEMV for a few rows on CUDA).
    ``gated``: a stacked gate/up projection and its SiLU-and-mul as one ``hatac::linear_silu_mul``.
    ``norm``: a residual add and the RMSNorm after it as one ``hatac::add_rms_norm``.
    ``rope``: a hashed layer's rotary embedding in its encode launch (``hatac::rope_hash_encode_step_kv``).
    ``kernels``: kernel options in effect while the model runs a step (prefill or decode, eager or the static
    step, whose compilation and CUDA-graph capture keep them); None: the process's current ones
    (:func:`hatac.kernels.options.get`)."""

    linears: bool = True
    gated: bool = True
    norm: bool = True
    rope: bool = True
    kernels: KernelOptions | None = None

    def __post_init__(self):
        for name in ("linears", "gated", "norm", "rope"):
            if not isinstance(getattr(self, name), bool):
                raise HatacError(f"decode option {name} must be bool, got {getattr(self, name)!r}")
        if self.kernels is not None and not isinstance(self.kernels, KernelOptions):
            raise HatacError(f"decode option kernels must be a KernelOptions or None, got {type(self.kernels).__name__}")


def check(options) -> DecodeOptions:
    """``options`` if it is a :class:`DecodeOptions` (None: the defaults); else a one-line error."""
    if options is None:
        return DecodeOptions()
    if not isinstance(options, DecodeOptions):
        raise HatacError(f"decode options must be a hatac.DecodeOptions, got {type(options).__name__}")
    return options


def decode_passes(options: DecodeOptions) -> list:
    """The runtime decode passes ``options`` asks for, in the order they run: the rotary embedding into the
    encode launch, add + RMSNorm, the gated MLP's GEMV, then the remaining linears routed (which takes the
    ``aten.linear`` nodes the gated fusion left)."""
    from hatac.passes.decode.linears import FuseGatedLinear, RouteDecodeLinears
    from hatac.passes.decode.norms import FuseAddRMSNorm
    from hatac.passes.decode.rope import FuseRoPEEncode

    chosen = [(options.rope, FuseRoPEEncode), (options.norm, FuseAddRMSNorm), (options.gated, FuseGatedLinear),
              (options.linears, RouteDecodeLinears)]
    return [cls() for on, cls in chosen if on]


def kernel_scope(options: DecodeOptions):
    """A context in which ``options.kernels`` are the current kernel options (nothing changes for None)."""
    return contextlib.nullcontext() if options.kernels is None else kernel_options.override(options.kernels)
