"""Prompt files: the real GSM8K files load; bad files give errors naming the file and line."""

import json
import os

import pytest

from asyncflow_hpc.data.loaders import DataError, gsm8k_dir, load_examples, resolve_path


def test_real_gsm8k_loads():
    test = load_examples("${ASYNCFLOW_GSM8K_DIR}/test.jsonl")
    assert len(test) == 1319
    assert test[0].reference == "18" and "ducks" in test[0].question
    assert [e.id for e in test[:3]] == [0, 1, 2]
    assert len(load_examples(os.path.join(gsm8k_dir(), "train.jsonl"), limit=10)) == 10


def test_default_gsm8k_dir(monkeypatch):
    monkeypatch.delenv("ASYNCFLOW_GSM8K_DIR", raising=False)
    assert os.path.isfile(os.path.join(gsm8k_dir(), "test.jsonl"))
    monkeypatch.setenv("ASYNCFLOW_GSM8K_DIR", "/x/y")
    assert resolve_path("${ASYNCFLOW_GSM8K_DIR}/a.jsonl") == "/x/y/a.jsonl"


def _write(tmp_path, lines):
    p = tmp_path / "bad.jsonl"
    p.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return str(p)


GOOD = json.dumps({"question": "q?", "answer": "so #### 3"})


@pytest.mark.parametrize("bad,match", [
    ("{not json", r"bad\.jsonl:2: not valid JSON"),
    (json.dumps({"question": "q?"}), r"bad\.jsonl:2: missing or empty string field 'answer'"),
    (json.dumps({"question": "q?", "answer": "no final"}), r"bad\.jsonl:2: field 'answer': no '####"),
    (json.dumps([1, 2]), r"bad\.jsonl:2: expected a JSON object"),
])
def test_bad_lines_are_named(tmp_path, bad, match):
    with pytest.raises(DataError, match=match):
        load_examples(_write(tmp_path, [GOOD, bad]))


def test_missing_empty_and_unset_var(tmp_path, monkeypatch):
    with pytest.raises(DataError, match="not found"):
        load_examples(str(tmp_path / "nope.jsonl"))
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n")
    with pytest.raises(DataError, match="no records"):
        load_examples(str(empty))
    monkeypatch.delenv("NO_SUCH_VAR_ASYNCFLOW", raising=False)
    with pytest.raises(DataError, match="not set"):
        load_examples("${NO_SUCH_VAR_ASYNCFLOW}/x.jsonl")


def test_custom_keys(tmp_path):
    p = _write(tmp_path, [json.dumps({"problem": "1+1", "solution": "#### 2"})])
    (ex,) = load_examples(p, question_key="problem", answer_key="solution")
    assert ex.question == "1+1" and ex.reference == "2"


def test_parquet(tmp_path):
    path = str(tmp_path / "p.parquet")
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError:
        open(path, "wb").write(b"PAR1")
        with pytest.raises(DataError, match="pyarrow"):
            load_examples(path)
        return
    pq.write_table(pa.table({"question": ["a?", "b?"], "answer": ["#### 1", "#### 2"]}), path)
    assert [e.reference for e in load_examples(path)] == ["1", "2"]
    open(path, "wb").write(b"garbage")
    with pytest.raises(DataError, match="parquet"):
        load_examples(path)
