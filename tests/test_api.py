"""The public API shows its real parameters and docstrings (``help(hatac.convert)``)."""

import inspect

import pytest

import hatac


@pytest.mark.parametrize(
    "name, params",
    [
        ("convert", ["model", "config", "samples", "passes", "hash_weights", "progress", "captured"]),
        ("save", ["model", "out", "tokenizer", "source", "source_dir", "passes", "overwrite"]),
        ("load", ["path", "device", "dtype", "tp"]),
    ],
)
def test_entry_points_have_real_signatures_and_docs(name, params):
    fn = getattr(hatac, name)
    got = list(inspect.signature(fn).parameters)
    assert got[: len(params)] == params
    doc = inspect.getdoc(fn)
    assert doc and "Args:" in doc
    assert fn is getattr(hatac, name)  # cached after the first lookup
    assert name in dir(hatac)


def test_unknown_attribute_is_an_attribute_error():
    with pytest.raises(AttributeError, match="no attribute 'konvert'"):
        hatac.konvert  # noqa: B018
