"""Several processes (gloo, 2 CPU processes): tensor-parallel decoding equals the one-process run of the
same artifact, and parallel calibration equals serial calibration bit for bit."""

import socket

import pytest
import torch
import torch.multiprocessing as mp

import hatac
from _tp_worker import calibrate_learned, main, run_artifact
from models import save_tiny

WORLD = 2
ARCHS = ("llama", "qwen2", "qwen3")  # plain GQA; q/k/v biases; per-head q/k norms (replicated)


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
    odd = _artifact("llama-hd128", root / "odd")  # 1 KV head: cannot split over 2
    tasks = [(name, "artifact", (str(a), True)) for name, a in arts.items()]
    tasks += [("odd", "error", (str(odd),)), ("calibrate", "calibrate", (0,))]
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


def test_tensor_parallel_needs_divisible_kv_heads(runs):
    assert runs[1]["odd"] == "tensor parallel over 2 processes needs the KV head count (1) to be a multiple of 2"


def test_parallel_calibration_equals_serial(runs):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        serial = calibrate_learned(0)
    finally:
        torch.set_num_threads(threads)
    par = runs[1]["calibrate"]
    assert par["calibration"]["processes"] == WORLD and serial["calibration"]["processes"] == 1
    assert list(par["weights"]) == list(serial["weights"]) == [1, 2, 3]
    for layer, w in serial["weights"].items():
        assert torch.equal(par["weights"][layer], w), layer
    assert par["calibration"]["layers"].keys() == serial["calibration"]["layers"].keys()
    for layer, stats in serial["calibration"]["layers"].items():
        assert par["calibration"]["layers"][layer]["recall_learned"] == stats["recall_learned"]
