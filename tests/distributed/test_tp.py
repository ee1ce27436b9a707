"""Several processes (gloo, 2 CPU processes): tensor-parallel decoding equals the one-process run of the
same artifact, and parallel calibration equals serial calibration bit for bit."""

import socket

import pytest
import torch
import torch.multiprocessing as mp

import hatac
from _tp_worker import calibrate_learned, main, run_artifact
from hatac.distributed import tp
from hatac.distributed.groups import Group
from models import save_tiny, tiny_model

WORLD = 2
ARCHS = ("qwen2",)  # Llama-style GQA plus q/k/v biases (sliced with their columns); one arch keeps the spawn short


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _artifact(name: str, folder, **overrides):
    src = save_tiny(name, folder / "src", **overrides)
    from transformers import AutoModelForCausalLM

    hm = hatac.convert(AutoModelForCausalLM.from_pretrained(src), hatac.HataConfig(hash="random", budget=8, sink=1, recent=2, dense_layers=1, rbits=64))
    return hatac.save(hm, folder / "art")


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Every task in one spawn of 2 processes (process start-up dominates the cost)."""
    root = tmp_path_factory.mktemp("tp")
    arts = {name: _artifact(name, root / name) for name in ARCHS}
    tasks = [(name, "artifact", (str(a), True)) for name, a in arts.items()]
    tasks += [(f"{name}-one_shot", "artifact", (str(a), True, "one_shot")) for name, a in arts.items()]
    tasks += [("allreduce", "allreduce", (WORLD,)), ("calibrate", "calibrate", (0,))]
    out = root / "result.pt"
    mp.start_processes(main, args=(WORLD, _free_port(), tasks, str(out)), nprocs=WORLD, start_method="spawn")
    return arts, torch.load(out, weights_only=False)


@pytest.mark.parametrize("arch", ARCHS)
def test_tensor_parallel_equals_one_process(runs, arch):
    arts, results = runs
    tp, one = results[arch], run_artifact(str(arts[arch]), tp=False)
    assert tp["kv_heads"] == {i: n // WORLD for i, n in one["kv_heads"].items()}  # each rank holds its KV heads only
    assert tp["cache_heads"] == one["cache_heads"] // WORLD
    torch.testing.assert_close(tp["prefill"], one["prefill"], atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(tp["decode"], one["decode"], atol=1e-4, rtol=1e-4)
    assert torch.equal(tp["tokens"], one["tokens"])
    # one hatac::all_reduce after each o_proj and down_proj, in both graphs; on CPU they all ran on gloo
    assert tp["allreduce_nodes"] == {"prefill_graph": 2 * tp["layers"], "decode_graph": 2 * tp["layers"]}
    assert set(tp["allreduce"]["used"]) == {"gloo"} and tp["allreduce"]["symmetric_memory"] == {}


@pytest.mark.parametrize("arch", ARCHS)
def test_forcing_the_fast_all_reduce_on_cpu_falls_back_unchanged(runs, arch):
    """one_shot asked for with CPU tensors: the dispatch takes gloo, and the outputs are the same bits."""
    _, results = runs
    auto, forced = results[arch], results[f"{arch}-one_shot"]
    assert forced["allreduce"]["mode"] == "auto"  # the mode is restored after the block
    assert set(forced["allreduce"]["used"]) == {"gloo"}
    for key in ("prefill", "decode", "tokens"):
        assert torch.equal(forced[key], auto[key]), key


def test_all_reduce_op_modes(runs):
    """Every mode sums over the ranks (rank r holds (r + 1) * x); none may set up symmetric memory on CPU;
    a setup failing on one rank only, or at the final check, leaves every rank on NCCL with the reason."""
    res = runs[1]["allreduce"]
    x = torch.arange(24, dtype=torch.float32).view(2, 1, 12)
    for m, (got, used) in res["modes"].items():
        assert torch.equal(got, 3 * x), m
        assert used == {"gloo": {"96B": 1}}, m
    ready, error = res["one_fails"]
    assert not ready and error == "another rank could not allocate symmetric memory"  # rank 0's view: rank 1 failed
    ready, error = res["check_fails"]
    assert not ready and error.startswith("rank 0: check failed: ")


@pytest.mark.parametrize(
    "mode,device,nbytes,world,ready,want",
    [
        ("auto", "cuda", 65536, 2, True, "one_shot"),
        ("auto", "cuda", 65536, 2, False, "nccl"),  # setup failed: fallback
        ("auto", "cuda", 65536, 2, None, "nccl"),  # not set up (capture): fallback
        ("auto", "cpu", 65536, 2, True, "nccl"),  # gloo
        ("auto", "cuda", 64 << 20, 2, True, "nccl"),  # a prefill message: above the buffer
        ("auto", "cuda", 65544, 2, True, "nccl"),  # not 16-byte sized
        ("auto", "cuda", 65536, 1, True, "nccl"),
        ("nccl", "cuda", 65536, 2, True, "nccl"),
        ("two_shot", "cuda", 65536, 2, True, "two_shot"),
        ("one_shot", "cpu", 65536, 2, True, "nccl"),
    ],
)
def test_all_reduce_dispatch_rule(mode, device, nbytes, world, ready, want):
    from hatac.distributed import allreduce

    assert allreduce.rule(mode, device, nbytes, world, ready) == want


def test_unknown_all_reduce_mode_is_one_line():
    from hatac.distributed import allreduce

    with pytest.raises(hatac.HatacError, match=r"^unknown all-reduce 'ring': choose one of auto, nccl, one_shot, two_shot$"):
        allreduce.set_mode("ring")
    assert allreduce.mode() == "auto"


def test_tensor_parallel_needs_divisible_kv_heads():
    with pytest.raises(hatac.HatacError, match=r"^tensor parallel over 2 processes needs the KV head count \(1\) to be a multiple of 2$"):
        tp.shard(tiny_model("llama-hd128"), Group(0, 2))


@pytest.mark.parametrize("rank", [0, 1])
def test_shard_keeps_the_ranks_heads(rank):
    """Qwen3 (per-head q/k norms stay whole): rank r keeps query heads 2r..2r+1 and KV head r."""
    full, model = tiny_model("qwen3"), tiny_model("qwen3")
    tp.shard(model, Group(rank, 2))
    a, b = full.model.layers[0].self_attn, model.model.layers[0].self_attn
    torch.testing.assert_close(b.q_proj.weight, a.q_proj.weight[rank * 128 : (rank + 1) * 128], rtol=0, atol=0)
    torch.testing.assert_close(b.k_proj.weight, a.k_proj.weight[rank * 64 : (rank + 1) * 64], rtol=0, atol=0)
    torch.testing.assert_close(b.o_proj.weight, a.o_proj.weight[:, rank * 128 : (rank + 1) * 128], rtol=0, atol=0)
    torch.testing.assert_close(b.k_norm.weight, a.k_norm.weight, rtol=0, atol=0)
    m = model.model.layers[0].mlp
    assert m.gate_proj.out_features == m.down_proj.in_features == 96 and model.lm_head.out_features == 160
    w = {2: torch.randn(2, 64, 32)}
    assert torch.equal(tp.shard_hash_weights(w, Group(rank, 2))[2], w[2][rank : rank + 1])


def test_parallel_calibration_equals_serial(runs):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        serial = calibrate_learned(0)
    finally:
        torch.set_num_threads(threads)
    par = runs[1]["calibrate"]
    assert par["calibration"]["processes"] == WORLD and serial["calibration"]["processes"] == 1
    assert list(par["weights"]) == list(serial["weights"]) == [2, 3]  # one layer a process
    for layer, w in serial["weights"].items():
        assert torch.equal(par["weights"][layer], w), layer
    assert par["calibration"]["layers"].keys() == serial["calibration"]["layers"].keys()
    for layer, stats in serial["calibration"]["layers"].items():
        assert par["calibration"]["layers"][layer]["recall_learned"] == stats["recall_learned"]


def test_fused_projections_are_refused():
    with pytest.raises(hatac.HatacError, match=r"of Phi3ForCausalLM is planned as '(colwise_gather_output|rowwise_split_input)'"):
        tp.shard(tiny_model("phi3", num_key_value_heads=2), Group(0, 2))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available() or torch.cuda.device_count() < 2, reason="needs 2 GPUs")
def test_fast_all_reduce_equals_nccl(tmp_path):
    """Symmetric-memory one-shot / two-shot all-reduces equal NCCL's (fp32 bit for bit; bf16 within one
    rounding), on every rank alike, eagerly, in a CUDA graph and compiled inside one."""
    out = tmp_path / "gpu.pt"
    mp.start_processes(main, args=(WORLD, _free_port(), [("gpu", "gpu_allreduce", ())], str(out), "cuda"), nprocs=WORLD, start_method="spawn")
    res = torch.load(out, weights_only=False)["gpu"]
    assert all(state == "ready" for state in res["report"]["symmetric_memory"].values()), res["report"]
    for (m, dtype, shape), (got, ref) in res["eager"].items():
        tol = dict(rtol=0, atol=0) if dtype == "torch.float32" else dict(rtol=2**-8, atol=1e-6)
        torch.testing.assert_close(got, ref, **tol, msg=lambda e: f"{m} {dtype} {shape}: {e}")
        assert res["ranks_equal"][(m, dtype, shape)], (m, dtype, shape)
    for m, r in res["graph"].items():
        assert set(r["used"]) == {m}, r["used"]
        for key in ("chain", "compiled"):
            got, ref = r[key]
            torch.testing.assert_close(got.float(), ref.float(), rtol=2**-7, atol=1e-3, msg=lambda e: f"{m} {key}: {e}")
