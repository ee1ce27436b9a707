import os
import sys
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
# Without a GPU the Triton kernels run in the interpreter. It must be chosen before anything imports triton
# (torch.compile and inductor do), or triton.language's own jitted helpers are built for compilation.
try:
    import torch

    if not torch.cuda.is_available():
        os.environ.setdefault("TRITON_INTERPRET", "1")
except ImportError:  # pragma: no cover
    pass
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
sys.path.insert(0, str(Path(__file__).parent))

import hatac  # noqa: E402,F401  (registers the ops)


def pytest_collection_modifyitems(config, items):
    """One mark for GPU tests: ``@pytest.mark.gpu`` runs compiled on a CUDA device and is skipped where there
    is none (or where Triton interprets). The default ``-m 'not slow and not gpu'`` deselects them anyway;
    ``-m gpu`` on a machine without CUDA reports them skipped rather than failing."""
    if torch.cuda.is_available() and os.environ.get("TRITON_INTERPRET", "0") in ("", "0"):
        return
    skip = pytest.mark.skip(reason="needs a CUDA device and compiled Triton")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture
def kernel_options():
    """``kernel_options(pdl=False, hamming_topk={"hint": False})``: change the current kernel options for this
    test (hatac.kernels.options.override); the options from before the test come back after it."""
    from hatac.kernels import options

    saved = options.get()
    yield options.override
    options.override(saved)


@pytest.fixture(scope="session")
def tiny_tok():
    from _tiny_tokenizer import tiny_tokenizer

    return tiny_tokenizer()


@pytest.fixture(scope="session")
def llama_dir(tmp_path_factory, tiny_tok):
    from models import save_tiny

    return save_tiny("llama", tmp_path_factory.mktemp("llama"), tiny_tok)


@pytest.fixture(scope="session")
def calib_file(tmp_path_factory):
    import json

    p = tmp_path_factory.mktemp("calib") / "calib.jsonl"
    lines = [{"text": "To be, or not to be, that is the question. " * 6}, {"messages": [{"role": "user", "content": "hello there"}, {"role": "assistant", "content": "hi"}]}]
    p.write_text("\n".join(json.dumps(x) for x in lines) + "\n")
    return p
