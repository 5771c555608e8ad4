"""Every kind of bad trace file gives a TraceError (an AsyncFlowError) naming the file and the problem."""

from __future__ import annotations

import h5py
import numpy as np
import pytest

import trace_synth
from asyncflow_hpc.errors import AsyncFlowError
from asyncflow_hpc.trace import cli
from asyncflow_hpc.trace.reader import read_trace
from asyncflow_hpc.trace.schema import TraceError


@pytest.fixture()
def good(tmp_path):
    return trace_synth.write(tmp_path / "good.h5")


def _fails(path, *fragments):
    with pytest.raises(TraceError) as err:
        read_trace(path)
    msg = str(err.value)
    assert str(path) in msg and "\n" not in msg
    for frag in fragments:
        assert frag in msg, msg
    assert isinstance(err.value, AsyncFlowError)
    return msg


def test_good_file_reads(good):
    assert len(read_trace(good).spans) == 50


def test_missing_and_directory(tmp_path):
    _fails(tmp_path / "nope.h5", "not found")
    _fails(tmp_path, "is a directory")


def test_empty_and_not_hdf5(tmp_path):
    empty = tmp_path / "empty.h5"
    empty.write_bytes(b"")
    _fails(empty, "empty file")
    text = tmp_path / "notes.h5"
    text.write_text("this is not a trace\n" * 100)
    _fails(text, "not an HDF5 file")


def test_truncated(good, tmp_path):
    data = open(good, "rb").read()
    for frac in (0.5, 0.9):
        cut = tmp_path / f"cut{frac}.h5"
        cut.write_bytes(data[: int(len(data) * frac)])
        _fails(cut, "truncated or corrupt")


def test_corrupt_data_chunk(good, tmp_path):
    with h5py.File(good, "r") as f:
        info = f["spans"].id.get_chunk_info(0)
    data = bytearray(open(good, "rb").read())
    mid = info.byte_offset + info.size // 2
    data[mid:mid + 16] = bytes(16 * [0xA5])
    bad = tmp_path / "corrupt.h5"
    bad.write_bytes(bytes(data))
    _fails(bad, "corrupt")


def test_corrupt_signature(good, tmp_path):
    data = bytearray(open(good, "rb").read())
    data[0:8] = b"GARBAGE!"
    bad = tmp_path / "sig.h5"
    bad.write_bytes(bytes(data))
    _fails(bad, "not an HDF5 file")


def test_foreign_hdf5(tmp_path):
    foreign = tmp_path / "foreign.h5"
    with h5py.File(foreign, "w") as f:
        f["weights"] = np.arange(10)
    _fails(foreign, "not an asyncflow_hpc trace", "another program")


def test_wrong_schema_version(good):
    with h5py.File(good, "a") as f:
        f.attrs["schema_version"] = 99
    msg = _fails(good, "schema_version 99", "reads schema_version 1 and 2")
    assert "asyncflow_version test" in msg
    with h5py.File(good, "a") as f:
        f.attrs["schema_version"] = "one"
    _fails(good, "expected an integer")


def test_wrong_table_layout(good, tmp_path):
    other = trace_synth.write(tmp_path / "other.h5")
    with h5py.File(good, "a") as f:
        del f["samples"]
        f["samples"] = np.zeros(3, dtype=[("row", "<i8")])
    _fails(good, "table '/samples' has layout")
    with h5py.File(other, "a") as f:
        del f["metrics"]
    _fails(other, "table '/metrics' is missing")


def test_metadata_is_json_never_code(good):
    with h5py.File(good, "a") as f:
        del f["meta/config_json"]
        f["meta/config_json"] = "__import__('os').system('touch /tmp/pwned')"
    _fails(good, "not valid JSON")


def test_inconsistent_rows(good):
    with h5py.File(good, "a") as f:
        sp = f["spans"][()]
        sp["t_end"][3] = sp["t_start"][3] - 1.0
        f["spans"][...] = sp
    _fails(good, "ends before it starts")


def test_rank_outside_world(good):
    with h5py.File(good, "a") as f:
        f.attrs["world_size"] = 2
    _fails(good, "outside world size 2")


def test_cli_raises_trace_error(tmp_path):
    with pytest.raises(TraceError, match="not found"):
        cli.main(["summary", str(tmp_path / "missing.h5")])


def _as_version_1(path):
    """What a schema-version-1 writer left: no payload tables, schema_version 1."""
    with h5py.File(path, "a") as f:
        for name in ("payloads", "payload_tokens", "payload_logprobs"):
            del f[name]
        f.attrs["schema_version"] = 1


def test_schema_version_1_still_reads_without_payloads(good):
    _as_version_1(good)
    t = read_trace(good)
    assert t.schema_version == 1 and len(t.spans) == 50 and len(t.payloads) == 0 and len(t.payload_tokens) == 0


def test_replay_of_version_1_says_what_to_do(good):
    from asyncflow_hpc.trace.replay import replay

    _as_version_1(good)
    with pytest.raises(TraceError, match=r"good\.h5: the trace holds no row payloads \(schema_version 1\).*"
                                         r"trace.payloads=true"):
        replay(str(good))


def test_version_2_without_payload_tables_is_incomplete(good):
    with h5py.File(good, "a") as f:
        del f["payload_tokens"]
    _fails(good, "table '/payload_tokens' is missing")


def test_payload_offsets_outside_the_flat_arrays(good):
    with h5py.File(good, "a") as f:
        f["payloads"].resize((1,))
        row = np.zeros(1, dtype=f["payloads"].dtype)
        row["row"], row["tok_off"], row["prompt_len"], row["response_len"] = 7, 0, 5, 3
        f["payloads"][0:1] = row
    _fails(good, "payload 0 (row 7) points outside '/payload_tokens' (0)")
