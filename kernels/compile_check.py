"""Compile hatac's Triton kernels for a GPU architecture on a machine with no GPU.

The interpreter (``TRITON_INTERPRET=1``) checks what a kernel computes, not whether it compiles: it runs
Python over NumPy and accepts code that the compiler rejects, and it says nothing of registers. This module
runs each op's real Python wrapper on small CPU tensors with the GPU code paths switched on, records every
kernel launch instead of making it (arguments, constexprs, warps), and compiles each recorded launch with
Triton's ahead-of-time compiler for the target (sm_90 by default), with the ``ptxas`` that ships in the
Triton wheel. It reports registers, stack (spills) and shared memory per kernel, from ``cuobjdump``.

    python -m hatac.kernels.compile_check            # every op at decode and prefill shapes, sm_90
"""

from __future__ import annotations

import contextlib
import inspect
import os
import subprocess
import sys
import tempfile
import types
from dataclasses import dataclass, field

import torch

_DTYPES = {torch.int32: "i32", torch.int64: "i64", torch.int16: "i16", torch.int8: "i8", torch.float32: "fp32",
           torch.float16: "fp16", torch.bfloat16: "bf16", torch.bool: "i1"}  # fmt: skip
_MODULES = ("hash_encode", "hamming_topk", "sparse_attention", "cache_attention", "cache_write", "linear", "rms_norm")


@dataclass
class Launch:
    """One recorded kernel launch: what the compiler needs to build it."""

    case: str
    kernel: object  # triton JITFunction
    signature: dict
    constexprs: dict
    options: dict
    attrs: dict = field(default_factory=dict)  # Triton's divisibility specialization, as the JIT computes it


@dataclass
class Result:
    case: str
    kernel: str
    options: dict
    ok: bool
    usage: dict = field(default_factory=dict)
    error: str = ""

    def line(self) -> str:
        if not self.ok:
            return f"{self.case:<34} {self.kernel:<22} FAILED: {self.error}"
        u = self.usage
        return (f"{self.case:<34} {self.kernel:<22} warps {self.options.get('num_warps', 4):>2}  regs {u.get('REG', '?'):>3}  "
                f"stack {u.get('STACK', '?'):>3}  shared {u.get('SHARED', '?'):>6}")  # fmt: skip


def _arg_type(value) -> str:
    if isinstance(value, torch.Tensor):
        return "*" + _DTYPES[value.dtype]
    if isinstance(value, bool):
        return "i1"
    if isinstance(value, int):
        return "i64" if not -(2**31) <= value < 2**31 else "i32"
    if isinstance(value, float):
        return "fp32"
    raise TypeError(f"cannot type kernel argument {value!r}")


def _divisible(value) -> bool:
    """Whether the JIT would mark this argument divisible by 16 (a 16-byte-aligned pointer, an integer multiple
    of 16), which decides vector widths and so registers: without it every load compiles scalar."""
    if isinstance(value, torch.Tensor):
        return value.data_ptr() % 16 == 0
    return isinstance(value, int) and not isinstance(value, bool) and value % 16 == 0


# What the wrappers read of an H100's properties (compile_check runs without a GPU).
_H100 = types.SimpleNamespace(shared_memory_per_multiprocessor=228 * 1024, L2_cache_size=50 << 20, multi_processor_count=132)


@contextlib.contextmanager
def recording(case: str, launches: list[Launch]):
    """Within: every hatac kernel launch is recorded, not run, and the wrappers take their GPU code paths."""
    import triton
    from triton.runtime.jit import JITFunction

    import hatac.kernels.registry  # noqa: F401

    mods = [sys.modules[f"hatac.kernels.{m}"] for m in _MODULES] + [sys.modules["hatac.kernels._common"]]
    common = sys.modules["hatac.kernels._common"]
    saved_flags = {m: m.hw_flag for m in mods if hasattr(m, "hw_flag")}
    saved_pdl = common.pdl_flag
    select = sys.modules["hatac.kernels.hamming_topk"]
    saved_l2 = select._l2_bytes
    attention = sys.modules["hatac.kernels.sparse_attention"]
    saved_props = attention.device_properties
    saved_run = JITFunction.run

    def record(self, *args, grid, warmup, **kwargs):
        params = list(inspect.signature(self.fn).parameters)
        options = {k: kwargs.pop(k) for k in ("num_warps", "num_stages", "launch_pdl", "maxnreg") if k in kwargs}
        values = dict(zip(params, args))
        values.update(kwargs)
        const_names = {p.name for p in self.params if p.is_constexpr}
        signature = {n: ("constexpr" if n in const_names else _arg_type(values[n])) for n in params}
        constexprs = {n: values[n] for n in params if n in const_names}
        attrs = {(i,): [["tt.divisibility", 16]] for i, n in enumerate(params) if n not in const_names and _divisible(values[n])}
        launches.append(Launch(case, self, signature, constexprs, options, attrs))

    if not isinstance(sys.modules["hatac.kernels.hamming_topk"]._score_kernel, JITFunction):
        raise RuntimeError("the kernels were loaded for the interpreter: run with TRITON_INTERPRET unset, in a fresh process")
    try:
        for m in saved_flags:
            m.hw_flag = lambda t: True
        common.pdl_flag = lambda t: common._HAVE_PDL and common.options.get().pdl  # as on sm_90
        select._l2_bytes = lambda device: _H100.L2_cache_size  # the select's K/V prefetch gate reads it
        attention.device_properties = lambda device: _H100  # the dense decode's stages fit its shared memory
        JITFunction.run = record
        yield triton
    finally:
        JITFunction.run = saved_run
        common.pdl_flag = saved_pdl
        select._l2_bytes = saved_l2
        attention.device_properties = saved_props
        for m, f in saved_flags.items():
            m.hw_flag = f


def _usage(cubin: bytes) -> dict:
    import triton

    tool = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "cuobjdump")
    if not os.path.exists(tool):  # compiled fine; usage unknown
        return {}
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(cubin)
        f.flush()
        out = subprocess.run([tool, "--dump-resource-usage", f.name], capture_output=True, text=True).stdout
    usage = {}
    for line in out.splitlines():
        if "REG:" in line:
            for item in line.split():
                key, _, val = item.partition(":")
                if val.isdigit():
                    usage[key] = int(val)
    return usage


def compile_launch(launch: Launch, arch: int = 90) -> Result:
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    name = launch.kernel.fn.__name__
    try:
        src = ASTSource(fn=launch.kernel, signature=launch.signature, constexprs=launch.constexprs, attrs=launch.attrs)
        compiled = triton.compile(src, target=GPUTarget("cuda", arch, 32), options=dict(launch.options))
        return Result(launch.case, name, launch.options, True, _usage(compiled.asm["cubin"]))
    except Exception as exc:  # report every kernel, then fail
        return Result(launch.case, name, launch.options, False, error=str(exc).strip().splitlines()[-1][:300])


def decode_launches(b: int = 8, hq: int = 32, hkv: int = 8, d: int = 128, r: int = 128, t: int = 32768,
                    dtype=torch.bfloat16) -> list[Launch]:  # fmt: skip
    """The launches of one hatac decode step (and the dense decode) at one shape, recorded on CPU tensors.
    The caches are expanded views, so a long context costs no memory."""
    import hatac.kernels.registry  # noqa: F401

    k = {m: sys.modules[f"hatac.kernels.{m}"] for m in _MODULES}
    launches: list[Launch] = []
    q = torch.zeros(b, hq, 1, d, dtype=dtype)
    kn = torch.zeros(b, hkv, 1, d, dtype=dtype)
    w = torch.zeros(hkv, d, r)
    cache = torch.zeros(1, 1, 1, d, dtype=dtype).expand(b, hkv, t, d)
    codes = torch.zeros(b, hkv, t, r // 32, dtype=torch.int32)
    pos = torch.full((b, 1), t - 1, dtype=torch.int64)
    width = max(16, t // 32)
    tag = f"decode B{b} T{t} d{d} r{r} {str(dtype)[6:]}"
    with recording(tag, launches):
        k["cache_write"].cache_write(torch.zeros(b, hkv, 8, d, dtype=dtype), kn, torch.zeros(b, 1, dtype=torch.int64))
        qc = k["hash_encode"].hash_encode_step(q, kn, w, codes, pos)
        k["hash_encode"].hash_encode_step(q, kn, w, codes, pos, v=kn, k_cache=cache, v_cache=cache)  # the _kv form
        cs = torch.zeros(b, 1, d, dtype=dtype)
        k["hash_encode"].rope_hash_encode_step_kv(q, kn, kn, cs, cs, w, cache, cache, codes, pos)  # rotary folded in
        idx = k["hamming_topk"].hamming_topk(qc if qc is not None else torch.zeros(b, hq, 1, r // 32, dtype=torch.int32), codes, pos, width, 1 / 32,
                                             k_cache=cache, v_cache=cache)
        k["sparse_attention"].sparse_attention(q, cache, cache, idx, 0.1)
        k["sparse_attention"].sparse_attention(q, cache, cache, None, 0.1, q_pos=pos)  # dense decode
        x, wl = torch.zeros(b, 4 * d, dtype=dtype), torch.zeros(8 * d, 4 * d, dtype=dtype)
        k["linear"].linear(x, wl, None, 0.25)  # o_proj after a hashed attention: prefetches its weight
        k["linear"].linear(x, wl, torch.zeros(8 * d, dtype=dtype))
        k["linear"].linear_silu_mul(x, wl)  # a gated MLP's gate/up and its SiLU-and-mul
        k["rms_norm"].add_rms_norm(x, x, torch.ones(4 * d, dtype=dtype), 1e-5)  # a residual add and the next norm
    return launches


def wide_select_launches() -> list[Launch]:
    """The fine and write launches of B8/128K, where the write pass takes doubled blocks on two warps
    (``hamming_topk.select_geometry``)."""
    return [x for x in decode_launches(t=131072) if x.kernel.fn.__name__ in ("_fine_kernel", "_write_kernel")]


def prefill_launches(b: int = 1, hq: int = 32, hkv: int = 8, d: int = 128, r: int = 128, s: int = 512, dtype=torch.bfloat16) -> list[Launch]:
    import hatac.kernels.registry  # noqa: F401

    k = {m: sys.modules[f"hatac.kernels.{m}"] for m in _MODULES}
    launches: list[Launch] = []
    q = torch.zeros(b, hq, s, d, dtype=dtype)
    kv = torch.zeros(b, hkv, s, d, dtype=dtype)
    pos = torch.arange(s).expand(b, s)
    with recording(f"prefill B{b} S{s} d{d} r{r} {str(dtype)[6:]}", launches):
        k["hash_encode"].hash_encode(kv, torch.zeros(hkv, d, r))
        k["cache_attention"].cache_attention(q, kv, kv, pos, 0.1)
    return launches


def main(argv: list[str] | None = None) -> int:
    import argparse

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--arch", type=int, default=90, help="compute capability x10 (90: H100/H200)")
    args = ap.parse_args(argv)
    launches = decode_launches() + decode_launches(b=1, t=131072) + decode_launches(b=4, hq=9, hkv=3, d=64, r=256, t=4096, dtype=torch.float16)
    launches += wide_select_launches() + prefill_launches() + prefill_launches(d=64, hq=9, hkv=3, dtype=torch.float32)
    results = [compile_launch(x, args.arch) for x in launches]
    for res in results:
        print(res.line(), flush=True)
    failed = [x for x in results if not x.ok]
    print(f"{len(results) - len(failed)} of {len(results)} kernel launches compile for sm_{args.arch}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
