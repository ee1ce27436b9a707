"""Budgets of the evaluation: fractions of the context and fixed token counts, with their labels."""

from __future__ import annotations

from fractions import Fraction

FRACTIONS = (1 / 64, 1 / 32, 1 / 16)
COUNTS = (128, 256, 512)


def label(budget: float) -> str:
    """'1/32' for a fraction, '256' for a token count."""
    if budget >= 1:
        return str(int(budget))
    f = Fraction(budget).limit_denominator(4096)
    return f"{f.numerator}/{f.denominator}"


def parse(text: str) -> float:
    """Inverse of :func:`label` (also takes decimals such as '0.03')."""
    if "/" in text:
        num, den = text.split("/", 1)
        return int(num) / int(den)
    value = float(text)
    return value if value < 1 else float(int(value))
