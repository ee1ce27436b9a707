"""Every Triton kernel compiles for sm_90 (H100/H200), on a machine with no GPU.

The interpreter tests check what the kernels compute but accept code the compiler rejects; this runs the
ops' real wrappers with the GPU code paths on, records each launch and compiles it ahead of time with the
ptxas shipped in the Triton wheel (``hatac.kernels.compile_check``). In a subprocess: this test process
loaded the kernels for the interpreter.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

triton = pytest.importorskip("triton")
PTXAS = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "ptxas"


@pytest.mark.skipif(not PTXAS.exists(), reason="this Triton install has no ptxas")
def test_every_kernel_compiles_for_sm90():
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    code = (
        "import sys, torch\n"
        "from hatac.kernels import compile_check as cc\n"
        "launches = cc.decode_launches(b=2, t=4096) + cc.decode_launches(b=1, hq=9, hkv=3, d=64, r=256, t=2048, dtype=torch.float16)\n"
        "launches += cc.prefill_launches(s=256) + cc.wide_select_launches()\n"
        "results = [cc.compile_launch(x) for x in launches]\n"
        "print('\\n'.join(r.line() for r in results))\n"
        "sys.exit(0 if all(r.ok for r in results) else 1)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    kernels = {line.split()[-9] for line in proc.stdout.splitlines() if "regs" in line}
    assert {"_encode_step_kernel", "_score_kernel", "_fine_kernel", "_write_kernel",
            "_attn_split_kernel", "_cache_write_kernel", "_encode_kernel", "_cache_attention_kernel"} <= kernels, proc.stdout  # fmt: skip
    assert any("_write_kernel" in line and "warps  2" in line for line in proc.stdout.splitlines()), proc.stdout  # the wide write pass
