"""Export a converted model's rewritten graphs: ``hatac export DIR --format F -o PATH``.

One module per format; each writes atomically (a temporary sibling renamed into place when complete):

| format | writes | module |
|---|---|---|
| ``fx`` | folder: ``<graph>.py`` (graph code) and ``<graph>_nodes.tsv`` (node table) | :mod:`hatac.export.to_fx` |
| ``onnx`` | folder: ``<graph>.onnx``, hatac ops in the custom domain ``hatac`` | :mod:`hatac.export.to_onnx` |
| ``pt2`` | folder: ``<graph>.pt2`` (``torch.export.save``) | :mod:`hatac.export.to_pt2` |
| ``html`` | one self-contained page | :mod:`hatac.export.to_html` |

``<graph>`` is ``decode`` and ``prefill`` (or the one asked for). See docs/EXPORT.md.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

from hatac.errors import HatacError
from hatac.export.common import VARIANTS

FORMATS = ("fx", "onnx", "pt2", "html")


def _exporter(fmt: str) -> Callable:
    if fmt == "fx":
        from hatac.export.to_fx import export_fx

        return export_fx
    if fmt == "onnx":
        try:
            from hatac.export.to_onnx import export_onnx
        except ImportError as exc:
            raise HatacError(f"--format onnx needs the onnx and onnxscript packages (pip install 'hatac[onnx]'): {exc}") from None
        return export_onnx
    if fmt == "pt2":
        from hatac.export.to_pt2 import export_pt2

        return export_pt2
    if fmt == "html":
        from hatac.export.to_html import export_html

        return export_html
    raise HatacError(f"--format must be one of {', '.join(FORMATS)}, got {fmt!r}")


def check_format(fmt: str) -> None:
    if fmt not in FORMATS:
        raise HatacError(f"--format must be one of {', '.join(FORMATS)}, got {fmt!r}")


def check_output(fmt: str, out: str | Path, overwrite: bool) -> None:
    """Refuse, before any work, an output that exists (a non-empty folder for folder formats) unless
    ``overwrite``."""
    out = Path(out)
    if overwrite or not out.exists():
        return
    if fmt == "html":
        raise HatacError(f"output {out} exists (pass --overwrite to replace it)" if out.is_file() else f"output {out} is a directory; --format html writes one file")
    if not out.is_dir():
        raise HatacError(f"output {out} exists and is not a directory")
    if any(out.iterdir()):
        raise HatacError(f"output directory {out} is not empty (pass --overwrite to replace it)")


def parse_variants(graph: str) -> tuple[str, ...]:
    if graph in ("both", "all"):
        return VARIANTS
    if graph not in VARIANTS:
        raise HatacError(f"--graph must be decode, prefill or both, got {graph!r}")
    return (graph,)


def export(model, fmt: str, out: str | Path, graph: str = "both", overwrite: bool = False, progress: Callable[[str], None] | None = None) -> list[Path]:
    """Write ``model``'s graphs (``graph``: decode, prefill or both) in format ``fmt`` at ``out``; returns
    the files written."""
    check_format(fmt)
    variants = parse_variants(graph)
    check_output(fmt, out, overwrite)
    return _exporter(fmt)(model, Path(out), variants=variants, overwrite=overwrite, progress=progress)


__all__ = ["FORMATS", "check_format", "check_output", "export", "parse_variants"]
