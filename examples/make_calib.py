"""Regenerate hatac/data/calib.jsonl, the calibration file that ships with hatac (the default of
`hatac convert --calib` and the demo's).

The file is cut from hatac.texts.CALIBRATION_PLAYS only (never from evaluation text), at fixed places,
in whole speeches, with lengths measured by the SmolLM2-135M-Instruct tokenizer (the demo model), so
running this script again gives the same bytes:

* 12 ``{"text": ...}`` lines: three excerpts of about 1.5K-2K tokens from each calibration play, taken
  from its opening, a third and two thirds of the way through;
* 2 ``{"messages": [...]}`` lines showing the chat format: a user asks to continue a scene and the
  assistant answers with the scene's next speeches.

Usage: ``python examples/make_calib.py [--out hatac/data/calib.jsonl] [--tokenizer DIR]``.

``--long`` writes instead the variant used to test whether calibrating on contexts as long as the
evaluation's helps (docs/ACCURACY.md: it did not): 10 text lines of about 3.8K-4.3K tokens from the same
plays (places 0, 1/3, 2/3 of the first and third play, 0 and 1/2 of the others), no chat lines.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from hatac.data import calibration_file
from hatac.texts import CALIBRATION_PLAYS, shakespeare_plays

TEXT_MIN, TEXT_MAX = 1500, 2000  # tokens per text line
CHAT_PART = 700  # tokens in each of the user's passage and the assistant's continuation
TEXT_PLACES = (0.0, 1 / 3, 2 / 3)
CHAT_PLACES = (("as_you_like_it", 5 / 6), ("julius_caesar", 5 / 6))
LONG_MIN, LONG_MAX = 3800, 4300
LONG_PLACES = ((0.0, 0.34, 0.67), (0.0, 0.5), (0.0, 0.34, 0.67), (0.0, 0.5))  # per calibration play


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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=calibration_file())
    parser.add_argument("--tokenizer", type=Path, default=None, help="tokenizer folder (default: SmolLM2)")
    parser.add_argument("--long", action="store_true", help="10 excerpts of ~4K tokens, no chat lines (see above)")
    args = parser.parse_args()

    from transformers import AutoTokenizer

    if args.tokenizer is None:
        from hatac.data.assets import smollm2_dir

        args.tokenizer = smollm2_dir()
    tok = AutoTokenizer.from_pretrained(args.tokenizer)

    def count(text: str) -> int:
        return len(tok(text, add_special_tokens=False, verbose=False)["input_ids"])

    plays = shakespeare_plays()
    lines: list[dict] = []
    if args.long:
        for name, places in zip(CALIBRATION_PLAYS, LONG_PLACES):
            blocks = speeches(plays[name])
            for place in places:
                lines.append({"text": take(blocks, int(len(blocks) * place), count, LONG_MIN, LONG_MAX)[0]})
        _write(args.out, lines, count)
        return
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
