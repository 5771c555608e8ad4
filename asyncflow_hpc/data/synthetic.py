"""A synthetic verifiable task for the embedded default: short digit prompts with one-digit answers.

    add_mod:    '3+5=' -> '8'    '7+6=' -> '3'       ((a + b) mod 10 over all digits)
    max:        '3,9,2=' -> '9'
    copy_first: '3,9,2=' -> '3'
    arith:      'What is 7 + 12?' -> '19'  (operands 1..9 * synthetic_digits; for real models with their own
                tokenizer, scored by the math verifier: the response's final number counts)

Train and held-out prompts are disjoint when the prompt space allows. The verifier reads the
response up to eos and rewards an exact match (so formatting counts: '8' yes, '8 ' or '85' no).
"""

from __future__ import annotations

import random

from asyncflow_hpc.data.loaders import Example

ALPHABET = "0123456789+,="


def _answer(task: str, digits: list[int]) -> int:
    if task == "add_mod":
        return sum(digits) % 10
    if task == "max":
        return max(digits)
    if task == "copy_first":
        return digits[0]
    raise ValueError(f"unknown synthetic task {task!r}")


def _question(task: str, digits: list[int]) -> str:
    sep = "+" if task == "add_mod" else ","
    return sep.join(str(d) for d in digits) + "="


NATURAL_TASKS = ("arith",)  # phrased in words: need a model with its own (HF) tokenizer


def make_arith(num_digits: int, n_train: int, n_test: int, seed: int) -> tuple[list[Example], list[Example]]:
    """'What is a + b?' with a, b in 1 .. 9*num_digits (num_digits=2: 1..18); held-out pairs never trained on."""
    hi = 9 * num_digits
    pairs = [(a, b) for a in range(1, hi + 1) for b in range(1, hi + 1)]
    random.Random(seed).shuffle(pairs)
    n_hold = min(n_test, len(pairs) // 4)
    hold, rest = pairs[:n_hold], pairs[n_hold:]

    def ex(i: int, ab: tuple[int, int]) -> Example:
        q, a = f"What is {ab[0]} + {ab[1]}?", str(ab[0] + ab[1])
        return Example(id=i, question=q, answer=a, reference=a)

    test = [ex(i, hold[i % len(hold)]) for i in range(n_test)] if hold else []
    return [ex(i, rest[i % len(rest)]) for i in range(n_train)], test


def make_task(task: str, num_digits: int, n_train: int, n_test: int, seed: int) -> tuple[list[Example], list[Example]]:
    """(train, held-out) examples, deterministic in `seed`."""
    if task == "arith":
        return make_arith(num_digits, n_train, n_test, seed)
    rng = random.Random(seed)
    space = 10 ** num_digits
    if space <= 10 ** 6:
        pool = rng.sample(range(space), space)
    else:
        pool = [rng.randrange(space) for _ in range(n_train + n_test)]
    test_codes = pool[:min(n_test, max(1, space // 5))]
    rest = pool[len(test_codes):] or pool
    train_codes = [rest[i % len(rest)] for i in range(n_train)]

    def ex(i: int, code: int) -> Example:
        digits = [int(c) for c in str(code).zfill(num_digits)]
        a = str(_answer(task, digits))
        return Example(id=i, question=_question(task, digits), answer=a, reference=a)

    test = [ex(i, c) for i, c in enumerate(test_codes)]
    test = [test[i % len(test)] for i in range(n_test)] if test else []
    test = [Example(id=i, question=e.question, answer=e.answer, reference=e.reference) for i, e in enumerate(test)]
    return [ex(i, c) for i, c in enumerate(train_codes)], test


def exact_reward(prompt: str, response: str, reference: str) -> float:
    """1.0 iff the response (decoded up to eos) is exactly the reference answer."""
    del prompt
    return 1.0 if response == reference else 0.0
