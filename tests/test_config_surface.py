"""One configuration surface: every setting is a field of a typed options object, listed in docs/CONFIG.md;
the only environment variable hatac reads of its own is HATAC_CACHE."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import pytest

import hatac
from hatac.distributed.allreduce import AllReduceOptions
from hatac.kernels import options as kernel_options

ROOT = Path(__file__).resolve().parents[1]
SOURCES = [p for d in ("hatac", "passes", "kernels", "calibration") for p in sorted((ROOT / d).rglob("*.py"))]


def test_no_hatac_environment_variable_but_the_cache():
    found = {}
    for path in SOURCES:
        for name in re.findall(r"HATAC_[A-Z0-9_]+", path.read_text()):
            found.setdefault(name, []).append(str(path.relative_to(ROOT)))
    assert set(found) <= {"HATAC_CACHE"}, found


def _fields(cls, prefix=""):
    for f in dataclasses.fields(cls):
        kind = f.default if dataclasses.is_dataclass(f.default) else None
        if kind is not None:
            yield from _fields(type(kind), f"{prefix}{f.name}.")
        else:
            yield prefix + f.name


@pytest.mark.parametrize("cls", [hatac.HataConfig, hatac.DecodeOptions, kernel_options.KernelOptions, AllReduceOptions])
def test_config_page_lists_every_field(cls):
    page = (ROOT / "docs" / "CONFIG.md").read_text()
    missing = [name for name in _fields(cls) if f"`{name.rsplit('.', 1)[-1]}`" not in page]
    assert not missing, f"docs/CONFIG.md does not list {cls.__name__}: {missing}"


def test_all_reduce_options_are_typed_and_scoped():
    from hatac.distributed import allreduce

    with pytest.raises(hatac.HatacError, match=r"^unknown all-reduce 'ring': choose one of auto, nccl, one_shot, two_shot$"):
        AllReduceOptions(mode="ring")
    with pytest.raises(hatac.HatacError, match=r"^all-reduce max_bytes must be a positive multiple of 16, got 100$"):
        AllReduceOptions(max_bytes=100)
    before = allreduce.options()
    assert before == AllReduceOptions() and before.max_bytes == 1 << 20
    with pytest.raises(RuntimeError):
        with allreduce.use("nccl"):
            assert allreduce.mode() == "nccl" and allreduce.options().max_bytes == before.max_bytes
            raise RuntimeError
    assert allreduce.options() is before
    prev = allreduce.configure(AllReduceOptions("two_shot", 1 << 16))
    try:
        assert prev is before and allreduce.report()["max_bytes"] == 1 << 16
        assert allreduce.rule("auto", "cuda", 1 << 17, 2, True) == "nccl"  # past max_bytes
    finally:
        allreduce.configure(before)
