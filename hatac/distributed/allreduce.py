"""The all-reduce of tensor-parallel layers: one graph op, several ways to run it.

``tp.shard`` adds ``hatac::all_reduce(x, group_name)`` after each rowwise linear. The op is opaque to
``torch.export`` and ``torch.compile`` (a fake impl gives its shape), so the captured graph is the same on
CPU and GPU, and the way it runs is chosen when the op runs (eagerly, in the compiled step's warm-up,
or while a CUDA graph is being captured; a replay repeats what the capture recorded):

- ``nccl``: ``_c10d_functional.all_reduce`` + ``wait_tensor`` (NCCL on GPUs, gloo on CPUs). Always
  available; used for CPU tensors and for messages above ``max_bytes`` (prefill).
- ``one_shot``: PyTorch symmetric memory (``torch.distributed._symmetric_memory``): every rank copies its
  input into a persistent buffer mapped into all peers, one kernel barriers, loads every peer's buffer
  over NVLink, sums (in rank order, so all ranks get the same bits) and barriers again. One launch and no
  NCCL protocol: a decode step's 64 KiB messages are latency bound, and this is what cuts their latency.
- ``two_shot``: the same buffer, reduce-scatter then all-gather through peer stores (less traffic per
  rank for larger messages, one more barrier).

The mode and ``max_bytes`` are :class:`AllReduceOptions`, one value per process (``hatac.load(...,
allreduce=...)``, :func:`configure`, or :func:`use` for a block). ``auto`` (the default) picks ``one_shot``
for CUDA messages up to ``max_bytes`` when symmetric memory initialised on every rank, else ``nccl``. Only peer
loads and stores are used: never NVLink multicast (multimem) ops, which the hosts here disable.

Initialisation is collective and happens on the first eligible call outside CUDA-graph capture: each
rank checks peer access, allocates and rendezvouses the buffer, and checks one fast all-reduce against
NCCL's; the ranks agree on success with an NCCL all-reduce after each step, so a failure on any rank
makes every rank fall back to NCCL together (and say why in :func:`report`) instead of hanging.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
from collections import Counter
from dataclasses import dataclass

import torch
import torch.distributed as dist

from hatac.errors import HatacError

MODES = ("auto", "nccl", "one_shot", "two_shot")
FAST = ("one_shot", "two_shot")

_states: dict = {}  # (group_name, device index, dtype) -> _Symm
calls: Counter = Counter()  # (variant, message bytes) -> Python-side calls (eager, warm-up, capture; not replays)
notes: list[str] = []


def _check_mode(mode: str) -> str:
    if mode not in MODES:
        raise HatacError(f"unknown all-reduce {mode!r}: choose one of {', '.join(MODES)}")
    return mode


@dataclass(frozen=True)
class AllReduceOptions:
    """``mode``: auto, nccl, one_shot or two_shot (see the module docstring). ``max_bytes``: the largest
    message the fast variants take, and the size of the symmetric buffer (set up on first use)."""

    mode: str = "auto"
    max_bytes: int = 1 << 20

    def __post_init__(self):
        _check_mode(self.mode)
        if isinstance(self.max_bytes, bool) or not isinstance(self.max_bytes, int) or self.max_bytes < 16 or self.max_bytes % 16:
            raise HatacError(f"all-reduce max_bytes must be a positive multiple of 16, got {self.max_bytes!r}")


_options = AllReduceOptions()


def options() -> AllReduceOptions:
    """The all-reduce options in effect in this process."""
    return _options


def configure(new: AllReduceOptions) -> AllReduceOptions:
    """Make ``new`` this process's all-reduce options; returns the previous ones. ``max_bytes`` sizes the
    symmetric buffers when they are set up (first use), so change it before the first all-reduce."""
    global _options
    if not isinstance(new, AllReduceOptions):
        raise HatacError(f"all-reduce options must be an AllReduceOptions, got {type(new).__name__}")
    prev, _options = _options, new
    return prev


def mode() -> str:
    return _options.mode


def set_mode(m: str) -> None:
    configure(dataclasses.replace(_options, mode=_check_mode(m)))


@contextlib.contextmanager
def use(m: str):
    """Run the all-reduces inside the block with mode ``m`` (the choice a CUDA graph captures stays in it)."""
    prev = configure(dataclasses.replace(_options, mode=_check_mode(m)))
    try:
        yield
    finally:
        configure(prev)


def _note(msg: str) -> None:
    if msg not in notes:
        notes.append(msg)
        if os.environ.get("RANK", "0") == "0":
            print(f"hatac all-reduce: {msg}", flush=True)


class _Symm:
    """One rank's persistent symmetric buffer for one (group, device, dtype), or why there is none."""

    def __init__(self):
        self.buf = None
        self.error = None

    @property
    def ready(self) -> bool:
        return self.buf is not None


def _why(exc: BaseException) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text.splitlines()[0]}" if text else type(exc).__name__


def _agree(ok: bool, pg, device) -> bool:
    """Whether every rank is ok (a MIN all-reduce over the group's own backend)."""
    flag = torch.tensor([1 if ok else 0], dtype=torch.int32, device=device if dist.get_backend(pg) == "nccl" else "cpu")
    dist.all_reduce(flag, op=dist.ReduceOp.MIN, group=pg)
    return bool(flag.item())


def _local_alloc(device: torch.device, dtype: torch.dtype, world: int) -> torch.Tensor:
    """This rank's checks and its (not yet rendezvoused) symmetric buffer; raises what stops it."""
    import torch.distributed._symmetric_memory as symm_mem

    if not hasattr(torch.ops.symm_mem, "one_shot_all_reduce_out"):
        raise RuntimeError(f"torch {torch.__version__} has no symm_mem.one_shot_all_reduce_out")
    if dtype not in (torch.bfloat16, torch.float32):
        raise RuntimeError(f"symm_mem all-reduce supports bf16 and fp32, not {dtype}")
    if world not in (2, 4, 8):
        raise RuntimeError(f"symm_mem kernels are specialised for 2, 4 or 8 ranks, not {world}")
    local = int(os.environ.get("LOCAL_WORLD_SIZE", world))
    if local != world:
        raise RuntimeError(f"the {world} ranks are not on one host (LOCAL_WORLD_SIZE {local})")
    if device.type != "cuda":
        raise RuntimeError(f"symmetric memory needs CUDA tensors, not {device.type}")
    n = torch.cuda.device_count()
    peers = [d for d in range(n) if d != device.index and not torch.cuda.can_device_access_peer(device.index, d)]
    if n >= world and peers:
        raise RuntimeError(f"cuda:{device.index} has no peer access to cuda:{peers[0]}")
    # The one-shot / two-shot kernels need peer mappings only: never let the rendezvous create an NVLink
    # multicast object (hosts here forbid it; a user who wants it must ask for it explicitly).
    os.environ.setdefault("TORCH_SYMM_MEM_DISABLE_MULTICAST", "1")
    if os.environ.get("TORCH_SYMMMEM") is None:
        with contextlib.suppress(Exception):  # the plain CUDA backend (peer-mapped memory); NVSHMEM is not needed
            if getattr(symm_mem, "get_backend", lambda d: None)(device) is None:
                symm_mem.set_backend("CUDA")
    buf = symm_mem.empty(_options.max_bytes // torch.empty((), dtype=dtype).element_size(), dtype=dtype, device=device)
    return buf


def _symm_setup(group_name: str, device: torch.device, dtype: torch.dtype) -> _Symm:
    """Collective: allocate, rendezvous and check the buffer on every rank, or fall back on every rank."""
    import torch.distributed._symmetric_memory as symm_mem

    state = _Symm()
    pg = _pg(group_name)
    world, rank = dist.get_world_size(pg), dist.get_rank(pg)
    error, buf = None, None
    try:
        buf = _local_alloc(device, dtype, world)
    except Exception as exc:  # noqa: BLE001 - any failure means: use NCCL
        error = f"rank {rank}: {_why(exc)}"
    if not _agree(error is None, pg, device):
        state.error = error or "another rank could not allocate symmetric memory"
        return state
    try:
        symm_mem.rendezvous(buf, group_name)
    except Exception as exc:  # noqa: BLE001
        error = f"rank {rank}: rendezvous failed: {_why(exc)}"
    if not _agree(error is None, pg, device):
        state.error = error or "rendezvous failed on another rank"
        return state
    state.buf = buf
    try:  # one real one-shot all-reduce against NCCL's before trusting it (what auto uses)
        g = torch.Generator(device=device).manual_seed(1234 + rank)
        x = torch.randn(8, 1000, generator=g, device=device).to(dtype)
        ref = _run_nccl(x, group_name)
        got = _run_one_shot(x, group_name, state)
        if not torch.allclose(got.float(), ref.float(), rtol=1e-2, atol=1e-2):
            raise RuntimeError(f"one_shot differs from NCCL by {(got.float() - ref.float()).abs().max().item():.3g}")
    except Exception as exc:  # noqa: BLE001
        error = f"rank {rank}: check failed: {_why(exc)}"
    if not _agree(error is None, pg, device):
        state.buf, state.error = None, error or "the check failed on another rank"
    return state


def _state(group_name: str, device: torch.device, dtype: torch.dtype) -> _Symm | None:
    """The ready/failed state, set up on first need; None while capturing before setup (use NCCL then)."""
    key = (group_name, device.index, dtype)
    st = _states.get(key)
    if st is None:
        if torch.cuda.is_current_stream_capturing():
            _note("symmetric memory not set up before CUDA-graph capture; this capture uses NCCL")
            return None
        st = _states[key] = _symm_setup(group_name, device, dtype)
        _note(f"symmetric memory for {dtype} on cuda:{device.index}: " + ("ready" if st.ready else f"unavailable ({st.error}); using NCCL"))
    return st


def _run_nccl(x: torch.Tensor, group_name: str, state=None) -> torch.Tensor:
    c10d = torch.ops._c10d_functional
    return c10d.wait_tensor(c10d.all_reduce(x, "sum", group_name))


def _symm_view(x: torch.Tensor, state: _Symm) -> torch.Tensor:
    return state.buf[: x.numel()].view(x.shape)


def _run_one_shot(x: torch.Tensor, group_name: str, state: _Symm) -> torch.Tensor:
    out = torch.empty_like(x)
    symm = _symm_view(x, state)
    if hasattr(torch.ops.symm_mem, "one_shot_all_reduce_copy_out"):  # the copy into the buffer inside the kernel
        return torch.ops.symm_mem.one_shot_all_reduce_copy_out(symm, x, "sum", group_name, out)
    symm.copy_(x)
    return torch.ops.symm_mem.one_shot_all_reduce_out(symm, "sum", group_name, out)


def _run_two_shot(x: torch.Tensor, group_name: str, state: _Symm) -> torch.Tensor:
    out = torch.empty_like(x)
    symm = _symm_view(x, state)
    symm.copy_(x)
    return torch.ops.symm_mem.two_shot_all_reduce_out(symm, "sum", group_name, out)


_RUN = {"nccl": _run_nccl, "one_shot": _run_one_shot, "two_shot": _run_two_shot}


def rule(m: str, device_type: str, nbytes: int, world: int, symm_ready: bool | None) -> str:
    """The dispatch rule: the variant for a message of ``nbytes`` bytes on ``device_type`` over ``world``
    ranks, under mode ``m``; ``symm_ready`` is whether symmetric memory is set up (None: not tried yet)."""
    if m == "nccl" or device_type != "cuda" or world < 2 or nbytes > _options.max_bytes or nbytes % 16 or not symm_ready:
        return "nccl"
    return "one_shot" if m == "auto" else m


def choose(x: torch.Tensor, group_name: str, m: str | None = None) -> tuple[str, _Symm | None]:
    """Which variant runs ``x`` (and its symmetric state): :func:`rule`, after setting symmetric memory up
    the first time it could be used. Identical on every rank (shapes, mode and setup are agreed)."""
    m = _check_mode(m or _options.mode)
    nbytes = x.numel() * x.element_size()
    if x.device.type != "cuda" or rule(m, "cuda", nbytes, dist.get_world_size(_pg(group_name)), True) == "nccl":
        return "nccl", None
    st = _state(group_name, x.device, x.dtype)
    fits = st is not None and st.ready and x.numel() <= st.buf.numel()  # a buffer set up under a smaller max_bytes
    variant = rule(m, "cuda", nbytes, dist.get_world_size(_pg(group_name)), fits)
    return variant, (st if variant != "nccl" else None)


def _pg(group_name: str):
    from torch.distributed.distributed_c10d import _resolve_process_group

    return _resolve_process_group(group_name)


@torch.library.custom_op("hatac::all_reduce", mutates_args=())
def all_reduce(x: torch.Tensor, group_name: str) -> torch.Tensor:
    """Sum of ``x`` over the ranks of ``group_name`` (see the module docstring for how it runs)."""
    x = x.contiguous()
    variant, st = choose(x, group_name)
    if variant != "nccl" and x.storage_offset():
        x = x.clone()  # the fast kernels want the local input aligned like the buffer
    calls[(variant if x.device.type == "cuda" else "gloo", x.numel() * x.element_size())] += 1
    return _RUN[variant](x, group_name, st)


@all_reduce.register_fake
def _(x, group_name):
    return torch.empty_like(x, memory_format=torch.contiguous_format)


def report() -> dict:
    """What ran: the mode, each variant's calls by message size, and the symmetric-memory states."""
    states = {f"{g}/cuda:{d}/{str(t).removeprefix('torch.')}": ("ready" if s.ready else s.error) for (g, d, t), s in _states.items()}
    used = {}
    for (variant, nbytes), n in sorted(calls.items()):
        used.setdefault(variant, {})[f"{nbytes}B"] = n
    return {"mode": _options.mode, "max_bytes": _options.max_bytes, "used": used, "symmetric_memory": states, "notes": list(notes)}


def reset_counts() -> None:
    calls.clear()


def microbench(group_name: str, shape=(8, 1, 4096), dtype=torch.bfloat16, reps: int = 200, graph_calls: int = 64) -> dict:
    """Each variant on one message shape: median eager latency, latency inside a CUDA graph (``graph_calls``
    chained all-reduces captured once, as a decode step does), and max |difference| from NCCL's result."""
    device = torch.device("cuda", torch.cuda.current_device())
    rank = dist.get_rank(_pg(group_name))
    g = torch.Generator(device=device).manual_seed(7 + rank)
    x = torch.randn(*shape, generator=g, device=device).to(dtype)
    ref = _run_nccl(x, group_name)
    st = _state(group_name, device, dtype) if x.numel() * x.element_size() <= _options.max_bytes else None
    rows = {}
    for variant in ("nccl", *FAST):
        row = {}
        if variant != "nccl" and (st is None or not st.ready):
            rows[variant] = {"error": (st.error if st is not None else "message larger than the symmetric buffer")}
            continue
        fn = _RUN[variant]
        try:
            got = fn(x, group_name, st)
            row["max_abs_diff_vs_nccl"] = float((got.float() - ref.float()).abs().max())
            row["bitwise_equal_nccl"] = bool(torch.equal(got, ref))
            for _ in range(20):
                fn(x, group_name, st)
            times = []
            for _ in range(reps):
                s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                s.record()
                fn(x, group_name, st)
                e.record()
                e.synchronize()
                times.append(s.elapsed_time(e) * 1e3)
            row["eager_us"] = sorted(times)[len(times) // 2]

            def chain(y):  # scaled so the values stay bounded over many reductions
                for _ in range(graph_calls):
                    y = fn(y, group_name, st) * 0.5
                return y

            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):
                chain(x)
            torch.cuda.current_stream().wait_stream(side)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                out = chain(x)
            graph.replay()
            torch.cuda.synchronize()
            eager_out = chain(x)
            row["graph_equal_eager"] = bool(torch.equal(out, eager_out))
            times = []
            for _ in range(20):
                s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                s.record()
                graph.replay()
                e.record()
                e.synchronize()
                times.append(s.elapsed_time(e) * 1e3 / graph_calls)
            row["graph_us"] = sorted(times)[len(times) // 2]  # includes the * 0.5 kernel of each call
            del graph
        except Exception as exc:  # noqa: BLE001 - report, keep measuring the others
            row["error"] = _why(exc)
        rows[variant] = row
    return {"shape": list(shape), "dtype": str(dtype).removeprefix("torch."), "bytes": x.numel() * x.element_size(), "variants": rows}


def best(bench: dict) -> str:
    """The fast variant with the lowest in-graph latency that matched NCCL, else ``nccl``."""
    ok = {v: r["graph_us"] for v, r in bench["variants"].items() if "graph_us" in r and r.get("max_abs_diff_vs_nccl", 1) <= 1e-2}
    return min(ok, key=ok.get) if ok else "nccl"
