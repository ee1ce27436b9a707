"""Copy ``hatac eval`` outputs into docs/accuracy/: results.json, results.md and the PNG plots (palette-
compressed to stay small), each prefixed with the run's name.

    python examples/accuracy_assets.py NAME=RUN_DIR [NAME=RUN_DIR ...]
    python examples/accuracy_assets.py recall=/tmp/h7/runs/final-recall passkey=/tmp/h7/runs/final-passkey
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

from PIL import Image

DOCS = Path(__file__).resolve().parents[1] / "docs" / "accuracy"


def main(args: list[str]) -> None:
    DOCS.mkdir(parents=True, exist_ok=True)
    for arg in args:
        name, _, folder = arg.partition("=")
        run = Path(folder)
        res = json.loads((run / "results.json").read_text())
        shutil.copy(run / "results.json", DOCS / f"results-{name}.json")
        shutil.copy(run / "results.md", DOCS / f"results-{name}.md")
        for plot in res["plots"]:
            Image.open(run / plot).convert("P", palette=Image.ADAPTIVE, colors=64).save(DOCS / f"{name}-{plot}", optimize=True)
        print(f"{name}: {run} -> {DOCS} ({len(res['plots'])} plots, {res['timings_s']['total']:.0f} s run)")


if __name__ == "__main__":
    main(sys.argv[1:])
