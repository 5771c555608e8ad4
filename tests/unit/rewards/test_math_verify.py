"""Math verifier on the real GSM8K files: every reference verifies against itself, near misses do not."""

import json
import os

import pytest

from asyncflow_hpc.data.loaders import gsm8k_dir
from asyncflow_hpc.rewards.math_verify import (answers_match, extract_answer, gsm8k_reference, math_reward,
                                               normalize_number)


def _records(name):
    path = os.path.join(gsm8k_dir(), name)
    with open(path, encoding="utf-8") as fh:
        return [json.loads(line) for line in fh if line.strip()]


@pytest.mark.parametrize("name", ["test.jsonl", "train.jsonl"])
def test_every_gsm8k_reference_verifies_against_itself(name):
    recs = _records(name)
    assert len(recs) > 1000
    for rec in recs:
        ref = gsm8k_reference(rec["answer"])
        assert math_reward(rec["question"], rec["answer"], ref) == 1.0, rec["answer"][-80:]


def test_gsm8k_near_misses_fail():
    recs = _records("test.jsonl")[:300]
    for rec in recs:
        ref = gsm8k_reference(rec["answer"])
        body, _, final = rec["answer"].rpartition("####")
        wrong = str(int(ref) + 1) if "/" not in ref else "0"
        assert math_reward("", body + "#### " + wrong, ref) == 0.0
        assert math_reward("", body + "#### " + final.strip() + "1", ref) == 0.0  # an extra digit
        assert math_reward("", "I do not know.", ref) == 0.0


@pytest.mark.parametrize("text,expected", [
    ("$1,234.00", "1234"), ("1234.0", "1234"), ("-7", "-7"), (" 42. ", "42"), ("3/4", "3/4"),
    ("0.5", "1/2"), ("10,000 dollars", "10000"), ("no number", None),
])
def test_normalize_number(text, expected):
    assert normalize_number(text) == expected


@pytest.mark.parametrize("response,ref,ok", [
    ("So she makes 9 * 2 = $18 a day.\n#### 18", "18", True),
    ("The answer is $1,000.", "1000", True),
    ("we get \\boxed{0.75}", "3/4", True),
    ("first 12, then 15", "15", True),        # last number wins without a marker
    ("#### 18\nactually 20", "18", True),      # the '####' line wins over later numbers
    ("The answer is 17.", "18", False),
    ("#### 180", "18", False),
])
def test_extract_and_compare(response, ref, ok):
    assert answers_match(extract_answer(response), ref) is ok


def test_reference_without_hashes_is_an_error():
    with pytest.raises(ValueError):
        gsm8k_reference("The answer is 5")
