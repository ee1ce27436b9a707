"""Print pip constraints that pin every dependency hatac declares (with the given extras) to its floor.

    python .ci/floors.py test > floors.txt && pip install -c floors.txt -e ".[test]"

The floors are read from pyproject.toml, so the ranges CI tests are the ranges users get. One exception:
torch's floor (2.11) has no CPU-only wheel, so the CPU leg pins the CPU wheel named below; the GPU machine
runs torch 2.11.
"""

from __future__ import annotations

import re
import sys
import tomllib
from pathlib import Path

CPU_TORCH = "2.13.0"


def floors(extras: list[str]) -> dict[str, str]:
    project = tomllib.loads((Path(__file__).resolve().parents[1] / "pyproject.toml").read_text())["project"]
    reqs, seen, todo = list(project["dependencies"]), set(), list(extras)
    while todo:
        extra = todo.pop()
        if extra in seen:
            continue
        seen.add(extra)
        for req in project["optional-dependencies"][extra]:
            self_ref = re.fullmatch(rf"{project['name']}\[(.+)\]", req)
            if self_ref:
                todo += [e.strip() for e in self_ref.group(1).split(",")]
            else:
                reqs.append(req)
    out = {}
    for req in reqs:
        m = re.match(r"([A-Za-z0-9_.-]+)\s*(.*)", req)
        name, spec = m.group(1).lower(), m.group(2)
        low = re.search(r">=\s*([0-9][0-9A-Za-z.]*)", spec)
        if not low:
            sys.exit(f"floors: {req!r} in pyproject.toml declares no floor (>=): give it one")
        out[name] = low.group(1)
    out["torch"] = CPU_TORCH
    return out


if __name__ == "__main__":
    for name, version in floors(sys.argv[1:]).items():
        print(f"{name}=={version}")
