"""What a new user's install gets right: the top-level name ``kernels`` is never the project's folder,
``hatac.kernels`` resolves, and the package data ships in a wheel (run from outside the checkout)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

FIND_KERNELS = (
    "import importlib.util, json; s = importlib.util.find_spec('kernels'); "
    "print(json.dumps(None if s is None else [s.origin, list(s.submodule_search_locations or [])]))"
)


def _inside_project(paths) -> list[str]:
    return [p for p in paths if p and Path(p).resolve().is_relative_to(ROOT)]


@pytest.mark.parametrize("how", [["-c", FIND_KERNELS], ["-m", "_find_kernels"]])
def test_top_level_kernels_is_never_the_project_folder(how, tmp_path):
    """From the repo root (first on sys.path for ``python -c`` and ``python -m``), ``kernels`` must resolve
    to Hugging Face's package, never to the project's kernels/ folder, which transformers would import."""
    env = dict(os.environ)
    if how[0] == "-m":  # a module run with -m from the repo root, as `python -m hatac` is
        (tmp_path / "_find_kernels.py").write_text(FIND_KERNELS)
        env["PYTHONPATH"] = str(tmp_path)
    res = subprocess.run([sys.executable, *how], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    found = json.loads(res.stdout.strip().splitlines()[-1])
    assert found is not None, "Hugging Face's kernels package is a dependency of hatac and should be installed"
    origin, locations = found
    assert not _inside_project([origin, *locations]), f"`import kernels` from {ROOT} resolves to {found}"


def test_hatac_kernels_is_the_kernels_folder_as_a_namespace_package():
    import hatac.kernels
    import hatac.kernels.registry as registry

    assert getattr(hatac.kernels, "__file__", None) is None  # no __init__.py: a namespace package
    assert [Path(p).resolve() for p in hatac.kernels.__path__] == [ROOT / "kernels"]
    assert not (ROOT / "kernels" / "__init__.py").exists()
    assert Path(registry.__file__).resolve() == ROOT / "kernels" / "registry.py"


def test_calibration_prompts_resolve_from_the_package():
    from hatac.data import calibration_file

    path = calibration_file()
    assert path.is_file() and path.resolve().is_relative_to(ROOT / "hatac" / "data")


def test_installed_wheel_carries_its_data_and_subpackages(tmp_path):
    """Build the wheel as pip would, install it into a bare folder, and import it from elsewhere: the
    calibration prompts and the remapped subpackages (passes, calibration, kernels) must all come from the
    installed copy, not from this checkout."""
    wheels, target = tmp_path / "wheels", tmp_path / "site"
    build = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(wheels), str(ROOT)], capture_output=True, text=True, timeout=600)
    assert build.returncode == 0, build.stderr[-3000:]
    (wheel,) = wheels.glob("hatac-*.whl")
    inst = subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(target), str(wheel)], capture_output=True, text=True, timeout=600)
    assert inst.returncode == 0, inst.stderr[-3000:]
    probe = (
        "import json, hatac, hatac.passes, hatac.calibration, hatac.kernels.registry as r\n"
        "from hatac.data import calibration_file\n"
        "p = calibration_file()\n"
        "print(json.dumps([hatac.__file__, hatac.passes.__file__, hatac.calibration.__file__, r.__file__, str(p), p.is_file(), p.stat().st_size]))\n"
    )
    env = {**os.environ, "PYTHONPATH": str(target)}
    res = subprocess.run([sys.executable, "-c", probe], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    *files, data, is_file, size = json.loads(res.stdout.strip().splitlines()[-1])
    for f in [*files, data]:
        assert Path(f).resolve().is_relative_to(target.resolve()), f
    assert is_file and size == (ROOT / "hatac" / "data" / "calib.jsonl").stat().st_size
