"""Character tokenizer: round trip, specials, save/load, errors."""

import pytest

from asyncflow_hpc.models.tokenizer import CharTokenizer, load_tokenizer


def test_round_trip_and_specials():
    tok = CharTokenizer("0123456789+=")
    ids = tok.encode("12+3=")
    assert ids == [3, 4, 12, 5, 13] and tok.vocab_size == 14
    assert tok.decode(ids) == "12+3="
    assert tok.decode(ids + [tok.eos_id] + tok.encode("99")) == "12+3="  # stops at eos
    assert tok.decode([tok.pad_id] + ids) == "12+3="


def test_unknown_char_and_repeats():
    with pytest.raises(ValueError, match="not in the alphabet"):
        CharTokenizer("01").encode("012")
    with pytest.raises(ValueError, match="repeated"):
        CharTokenizer("00")


def test_save_load(tmp_path):
    tok = CharTokenizer("ab=")
    tok.save(str(tmp_path))
    back = load_tokenizer(str(tmp_path))
    assert isinstance(back, CharTokenizer) and back.alphabet == "ab=" and back.encode("ba") == tok.encode("ba")
