"""Rule-based math verifier: extract a final answer, normalise it, compare numerically.

    gsm8k_reference("... #### 1,234")        -> "1234"
    extract_answer("so the answer is $1,234.00.") -> "1234.00"
    answers_match("1234.00", "1234")         -> True

Answer extraction order: the last "#### x", else the last \\boxed{x}, else "answer is x", else the
last number in the text.
"""

from __future__ import annotations

import re
from fractions import Fraction

_NUM = r"-?\$?\s*\d[\d,]*(?:\.\d+)?|-?\$?\s*\.\d+"
_HASHES = re.compile(r"####\s*([^\n]*)")
_BOXED = re.compile(r"\\boxed\{([^{}]*)\}")
_ANSWER_IS = re.compile(r"answer\s*(?:is|:)\s*([^\n]*)", re.IGNORECASE)
_NUMBER = re.compile(_NUM)


def _first_number(text: str) -> str | None:
    m = _NUMBER.search(text)
    return m.group(0) if m else None


def normalize_number(text: str) -> str | None:
    """'$1,234.50' -> '1234.5', '-7.0' -> '-7', '3/4' -> '3/4'; None if no number is there."""
    t = text.strip().rstrip(".").strip()
    frac = re.fullmatch(r"(-?\d+)\s*/\s*(\d+)", t)
    if frac and int(frac.group(2)) != 0:
        f = Fraction(int(frac.group(1)), int(frac.group(2)))
        return str(f.numerator) if f.denominator == 1 else f"{f.numerator}/{f.denominator}"
    num = _first_number(t)
    if num is None:
        return None
    neg = num.lstrip().startswith("-")
    digits = re.sub(r"[\s$,\-]", "", num)
    if not re.fullmatch(r"\d*\.?\d+|\d+\.?", digits):
        return None
    value = Fraction(digits)
    if neg:
        value = -value
    if value.denominator == 1:
        return str(value.numerator)
    return str(float(value)) if len(str(value)) > 12 else f"{value.numerator}/{value.denominator}"


def gsm8k_reference(answer_field: str) -> str:
    """The normalised number after '####' in a GSM8K answer; ValueError if there is none."""
    m = _HASHES.findall(answer_field)
    if not m:
        raise ValueError("no '#### <answer>' line")
    norm = normalize_number(m[-1])
    if norm is None:
        raise ValueError(f"'#### {m[-1].strip()}' is not a number")
    return norm


def extract_answer(response: str) -> str | None:
    """The final answer a response commits to (see module docstring), normalised; None if none."""
    for pattern in (_HASHES, _BOXED, _ANSWER_IS):
        found = pattern.findall(response)
        if found:
            return normalize_number(found[-1])
    nums = _NUMBER.findall(response)
    return normalize_number(nums[-1]) if nums else None


def answers_match(predicted: str | None, reference: str) -> bool:
    """Exact rational comparison of two normalised answers ('0.5' == '1/2')."""
    if predicted is None:
        return False
    try:
        return Fraction(predicted) == Fraction(reference)
    except (ValueError, ZeroDivisionError):
        return predicted.strip() == reference.strip()


def math_reward(prompt: str, response: str, reference: str) -> float:
    """1.0 if the response's final answer equals the reference answer, else 0.0."""
    del prompt
    return 1.0 if answers_match(extract_answer(response), reference) else 0.0
