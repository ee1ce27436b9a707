"""load_calibration: both sample formats, and one clear HatacError per kind of bad input."""

from __future__ import annotations

import json
import os

import pytest
from _tiny_tokenizer import CHAT_TEMPLATE, tiny_tokenizer

from hatac.data.calib import load_calibration
from hatac.data import calibration_file
from hatac.errors import HatacError


@pytest.fixture(scope="module")
def tok():
    return tiny_tokenizer()


def write(tmp_path, *lines: str | dict, name: str = "calib.jsonl"):
    path = tmp_path / name
    path.write_text("\n".join(x if isinstance(x, str) else json.dumps(x) for x in lines) + "\n")
    return path


def test_text_and_chat_formats(tmp_path, tok):
    chat = {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]}
    path = write(tmp_path, {"text": "hello world", "source": "ignored"}, "", "   ", chat)
    text_ids, chat_ids = load_calibration(path, tok)
    assert text_ids == tok("hello world")["input_ids"] and text_ids[0] == tok.bos_token_id
    # The template is applied and its special tokens are single ids; no BOS is added on top.
    assert tok.decode(chat_ids) == "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\nyo<|im_end|>\n"
    assert chat_ids[0] == tok.convert_tokens_to_ids("<|im_start|>") and tok.bos_token_id not in chat_ids


def test_max_tokens_truncates(tmp_path, tok):
    path = write(tmp_path, {"text": "a" * 50}, {"text": "bb"})
    long, short = load_calibration(path, tok, max_tokens=10)
    assert len(long) == 10 and short == tok("bb")["input_ids"]
    with pytest.raises(HatacError, match="max_tokens"):
        load_calibration(path, tok, max_tokens=0)


def test_bom_and_crlf(tmp_path, tok):
    path = tmp_path / "bom.jsonl"
    path.write_bytes(b'\xef\xbb\xbf{"text": "one"}\r\n{"text": "two"}\r\n')
    assert [tok.decode(ids, skip_special_tokens=True) for ids in load_calibration(path, tok)] == ["one", "two"]


def test_missing_file(tmp_path, tok):
    with pytest.raises(HatacError, match=r"cannot read calibration file .*nope\.jsonl"):
        load_calibration(tmp_path / "nope.jsonl", tok)


def test_directory(tmp_path, tok):
    with pytest.raises(HatacError, match="is a directory"):
        load_calibration(tmp_path, tok)


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="root reads any file")
def test_unreadable_file(tmp_path, tok):
    path = write(tmp_path, {"text": "x"})
    path.chmod(0)
    with pytest.raises(HatacError, match="cannot read calibration file"):
        load_calibration(path, tok)


@pytest.mark.parametrize("content", ["", "\n\n   \n"])
def test_empty_file(tmp_path, tok, content):
    path = tmp_path / "empty.jsonl"
    path.write_text(content)
    with pytest.raises(HatacError, match=r"calibration file .*empty\.jsonl has no samples"):
        load_calibration(path, tok)


BAD_LINES = [
    ('{"text": "unterminated', r":2: invalid JSON \(.* at column \d+\)"),
    ('["text", "x"]', r':2: expected a JSON object with "text" or "messages", got a list'),
    ('"just a string"', r":2: expected a JSON object .* got a string"),
    ("42", r":2: expected a JSON object .* got a number"),
    ('{"prompt": "x", "id": 3}', r':2: needs a "text" or a "messages" field \(keys: id, prompt\)'),
    ("{}", r':2: needs a "text" or a "messages" field \(keys: none\)'),
    ('{"text": ""}', r':2: "text" is empty'),
    ('{"text": "  \\n\\t "}', r':2: "text" is empty'),
    ('{"text": 5}', r':2: "text" must be a string, got a number'),
    ('{"text": null}', r':2: "text" must be a string, got null'),
    ('{"text": "a", "messages": []}', r':2: has both "text" and "messages"'),
    ('{"messages": []}', r':2: "messages" must be a non-empty list'),
    ('{"messages": {"role": "user"}}', r':2: "messages" must be a non-empty list'),
    ('{"messages": ["hi"]}', r":2: message 1 must be an object, got a string"),
    ('{"messages": [{"content": "hi"}]}', r':2: message 1 needs a "role" string'),
    ('{"messages": [{"role": "user", "content": "a"}, {"role": "", "content": "b"}]}',
     r':2: message 2 needs a "role" string'),
    ('{"messages": [{"role": "user"}]}', r':2: message 1 needs a "content" string, got null'),
    ('{"messages": [{"role": "user", "content": ["x"]}]}', r':2: message 1 needs a "content" string, got a list'),
    ('{"messages": [{"role": "user", "content": " "}]}', r":2: every message is empty"),
]  # fmt: skip


@pytest.mark.parametrize("line,message", BAD_LINES, ids=[b[1][4:30] for b in BAD_LINES])
def test_bad_line_names_file_line_and_reason(tmp_path, tok, line, message):
    path = write(tmp_path, {"text": "fine"}, line, {"text": "never reached"})
    with pytest.raises(HatacError, match=r"calib\.jsonl" + message) as info:
        load_calibration(path, tok)
    assert "\n" not in str(info.value)


def test_not_utf8(tmp_path, tok):
    path = tmp_path / "latin.jsonl"
    path.write_bytes(b'{"text": "ok"}\n{"text": "caf\xe9"}\n')
    with pytest.raises(HatacError, match=r"latin\.jsonl:2: not UTF-8"):
        load_calibration(path, tok)


def test_chat_without_template(tmp_path):
    path = write(tmp_path, {"messages": [{"role": "user", "content": "hi"}]})
    with pytest.raises(HatacError, match=r':1: "messages" needs a chat template'):
        load_calibration(path, tiny_tokenizer(chat_template=None))


def test_bundled_chats_read_as_text_for_a_base_model(tmp_path):
    """A tokenizer without a chat template (a base model's, e.g. Gemma 3 270M's) still calibrates on the
    bundled file: its chats are read as their contents, a blank line apart; a user's file still errors."""
    plain = tiny_tokenizer(chat_template=None)
    samples = load_calibration(calibration_file(), plain)
    lines = [json.loads(x) for x in calibration_file().read_text().splitlines() if x.strip()]
    assert len(samples) == len(lines) and any("messages" in x for x in lines)
    for ids, obj in zip(samples, lines):
        text = obj.get("text") or "\n\n".join(m["content"] for m in obj["messages"])
        assert ids == plain(text)["input_ids"]
    path = write(tmp_path, {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]})
    assert load_calibration(path, plain, chats_as_text=True) == [plain("hi\n\nyo")["input_ids"]]


def test_template_that_raises(tmp_path):
    strict = "{% if messages[0]['role'] != 'user' %}{{ raise_exception('first message must be from the user') }}{% endif %}"
    path = write(tmp_path, {"messages": [{"role": "assistant", "content": "hi"}]})
    with pytest.raises(HatacError, match=r":1: the chat template rejected .*first message must be from the user"):
        load_calibration(path, tiny_tokenizer(chat_template=strict + CHAT_TEMPLATE))


def test_shipped_example_file_loads(tok):
    path = calibration_file()
    assert path.stat().st_size < 300_000
    samples = load_calibration(path, tok)
    kinds = ["messages" in json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    assert len(samples) == len(kinds) and 8 <= len(samples) <= 16 and 1 <= sum(kinds) <= 2
    assert all(len(s) > 4000 for s in samples)  # byte-level: ~1.5K-2K real tokens is several KB
