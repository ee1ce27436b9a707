"""Files that ship inside the hatac package (found from a checkout, an editable install or a wheel alike)."""

from __future__ import annotations

from importlib import resources
from pathlib import Path


def calibration_file() -> Path:
    """The bundled calibration prompts (JSON Lines): English prose excerpts and chats that no evaluation
    text overlaps (``hatac.data.texts`` keeps the split). The default of ``hatac convert --calib`` and the
    file ``hatac demo`` calibrates on."""
    return Path(str(resources.files(__name__).joinpath("calib.jsonl")))


def calibration_samples(tokenizer, max_tokens: int | None = 2048) -> list[list[int]]:
    """The bundled calibration prompts as token-id lists for ``hatac.convert(model, config, samples=...)``,
    each cut to ``max_tokens``."""
    from hatac.data.calib import load_calibration

    return load_calibration(calibration_file(), tokenizer, max_tokens=max_tokens)
