"""How kernel tests run: compiled on a CUDA device, else in Triton's CPU interpreter (``TRITON_INTERPRET=1``,
set here, so import this before any kernel module); the markers for each mode, and a kernel module in the
mode of the run."""

from __future__ import annotations

import importlib
import os
import sys

import pytest
import torch

CUDA = torch.cuda.is_available()
if not CUDA:
    os.environ.setdefault("TRITON_INTERPRET", "1")
INTERPRET = os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")

interp = pytest.mark.skipif(not INTERPRET, reason="interpreter checks run where there is no CUDA device")


def kernel_module(name: str, kernel: str):
    """``hatac.kernels.<name>``, re-imported for the interpreter if something imported it compiled first
    (its ``kernel`` is then not an interpreted function)."""
    import hatac.kernels.registry  # noqa: F401

    mod = sys.modules[f"hatac.kernels.{name}"]
    if INTERPRET:
        from triton.runtime.interpreter import InterpretedFunction

        if not isinstance(getattr(mod, kernel), InterpretedFunction):
            mod = importlib.reload(mod)
    return mod
