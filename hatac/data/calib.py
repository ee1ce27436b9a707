"""Reading a user's calibration file (JSON Lines) into token ids.

Calibration data is the user's own text, so every way it can be wrong must come back as one line that
names the file, the line and the reason (``calib.jsonl:7: ...``), not as a traceback from deep inside
tokenization or training. Each non-blank line is one JSON object, either

* ``{"text": "..."}``: plain text, tokenized as a document (the tokenizer's special tokens, e.g. BOS,
  added as for any model input), or
* ``{"messages": [{"role": "user", "content": "..."}, ...]}``: a chat, rendered with the tokenizer's
  chat template, so calibration sees exactly the token layout the model sees when chatting.

Other keys are allowed and ignored (room for ids, sources, notes).

A base model's tokenizer has no chat template (Gemma 3 270M's GGUF carries none). A user's "messages"
sample is then an error; the chats of hatac's own bundled file are read as plain text instead (their
contents, a blank line apart), so the default calibration works on every model.
"""

from __future__ import annotations

import json
from pathlib import Path

from hatac.errors import HatacError


def load_calibration(path: str | Path, tokenizer, max_tokens: int | None = None, chats_as_text: bool | None = None) -> list[list[int]]:
    """Token ids of every sample in ``path``, in file order, each cut to ``max_tokens`` if given.

    ``chats_as_text``: read "messages" samples as plain text when the tokenizer has no chat template
    (default: only for the bundled calibration file)."""
    path = Path(path)
    if chats_as_text is None:
        from hatac.data import calibration_file

        chats_as_text = path.resolve() == calibration_file().resolve()
    if max_tokens is not None and (isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or max_tokens < 1):
        raise HatacError(f"max_tokens must be a positive whole number, got {max_tokens!r}")
    try:
        raw = path.read_bytes()
    except IsADirectoryError:
        raise HatacError(f"cannot read calibration file {path}: it is a directory") from None
    except OSError as e:
        raise HatacError(f"cannot read calibration file {path}: {e.strerror or e}") from None

    samples: list[list[int]] = []
    for lineno, line_bytes in enumerate(raw.split(b"\n"), start=1):
        where = f"{path}:{lineno}"
        try:
            line = line_bytes.decode("utf-8-sig" if lineno == 1 else "utf-8")
        except UnicodeDecodeError as e:
            raise HatacError(f"{where}: not UTF-8 text (byte {e.start + 1} of the line)") from None
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            raise HatacError(f"{where}: invalid JSON ({e.msg} at column {e.colno})") from None
        if not isinstance(obj, dict):
            raise HatacError(f'{where}: expected a JSON object with "text" or "messages", got {_kind(obj)}')
        ids = _encode_sample(obj, tokenizer, where, chats_as_text)
        if not ids:
            raise HatacError(f"{where}: the sample tokenizes to no tokens")
        samples.append(ids[:max_tokens] if max_tokens is not None else ids)
    if not samples:
        raise HatacError(f"calibration file {path} has no samples")
    return samples


def _encode_sample(obj: dict, tokenizer, where: str, chats_as_text: bool = False) -> list[int]:
    has_text, has_messages = "text" in obj, "messages" in obj
    if has_text and has_messages:
        raise HatacError(f'{where}: has both "text" and "messages"; give one')
    if has_text:
        text = obj["text"]
        if not isinstance(text, str):
            raise HatacError(f'{where}: "text" must be a string, got {_kind(text)}')
        if not text.strip():
            raise HatacError(f'{where}: "text" is empty')
        return list(tokenizer(text, add_special_tokens=True, verbose=False)["input_ids"])
    if has_messages:
        return _encode_chat(obj["messages"], tokenizer, where, chats_as_text)
    keys = ", ".join(sorted(obj)) or "none"
    raise HatacError(f'{where}: needs a "text" or a "messages" field (keys: {keys})')


def _encode_chat(messages, tokenizer, where: str, chats_as_text: bool = False) -> list[int]:
    if not isinstance(messages, list) or not messages:
        raise HatacError(f'{where}: "messages" must be a non-empty list of {{"role", "content"}} objects')
    for i, m in enumerate(messages, start=1):
        if not isinstance(m, dict):
            raise HatacError(f"{where}: message {i} must be an object, got {_kind(m)}")
        role, content = m.get("role"), m.get("content")
        if not isinstance(role, str) or not role.strip():
            raise HatacError(f'{where}: message {i} needs a "role" string (e.g. "user", "assistant")')
        if not isinstance(content, str):
            raise HatacError(f'{where}: message {i} needs a "content" string, got {_kind(content)}')
    if all(not m["content"].strip() for m in messages):
        raise HatacError(f"{where}: every message is empty")
    if not getattr(tokenizer, "chat_template", None):
        if chats_as_text:
            text = "\n\n".join(m["content"] for m in messages if m["content"].strip())
            return list(tokenizer(text, add_special_tokens=True, verbose=False)["input_ids"])
        raise HatacError(f'{where}: "messages" needs a chat template, and this tokenizer has none; use "text"')
    try:
        # Render to text, then tokenize without adding special tokens: the template already places them.
        rendered = tokenizer.apply_chat_template(messages, tokenize=False)
    except Exception as e:  # jinja errors, raise_exception() in templates that reject a role order
        raise HatacError(f"{where}: the chat template rejected these messages: {_one_line(e)}") from None
    return list(tokenizer(rendered, add_special_tokens=False, verbose=False)["input_ids"])


def _kind(value) -> str:
    names = {dict: "an object", list: "a list", str: "a string", bool: "a boolean", int: "a number",
             float: "a number", type(None): "null"}  # fmt: skip
    return names.get(type(value), type(value).__name__)


def _one_line(e: Exception) -> str:
    return " ".join(str(e).split()) or type(e).__name__
