"""Property-based fuzzing of the trace reader: random bytes, truncated and bit-flipped real traces give a
TraceError naming the file (one line), never another exception or a hang."""

import signal

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import trace_synth
from asyncflow_hpc.trace.reader import read_trace
from asyncflow_hpc.trace.schema import TraceError

FUZZ = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@pytest.fixture(scope="module")
def good_bytes(tmp_path_factory):
    path = trace_synth.write(tmp_path_factory.mktemp("good") / "good.h5")
    return open(path, "rb").read()


def _read(path):
    """Readable, or a one-line TraceError naming the file; a read must never take more than 20 s."""
    def hang(signum, frame):
        raise AssertionError(f"read_trace({path}) hung")

    old = signal.signal(signal.SIGALRM, hang)
    signal.alarm(20)
    try:
        return read_trace(path)
    except TraceError as exc:
        msg = str(exc)
        assert str(path) in msg and "\n" not in msg, msg
        return None
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


@FUZZ
@given(raw=st.binary(max_size=4096))
def test_random_bytes(tmp_path, raw):
    path = tmp_path / "r.h5"
    path.write_bytes(raw)
    assert _read(path) is None


@FUZZ
@given(cut=st.floats(0.0, 0.999))
def test_truncated_real_trace(tmp_path, good_bytes, cut):
    path = tmp_path / "t.h5"
    path.write_bytes(good_bytes[: int(len(good_bytes) * cut)])
    _read(path)


@FUZZ
@given(flips=st.lists(st.tuples(st.floats(0.0, 0.9999), st.integers(0, 7)), min_size=1, max_size=8))
def test_bit_flipped_real_trace(tmp_path, good_bytes, flips):
    data = bytearray(good_bytes)
    for where, bit in flips:
        data[int(where * len(data))] ^= 1 << bit
    path = tmp_path / "f.h5"
    path.write_bytes(bytes(data))
    _read(path)  # a flip in padding may leave a readable file; anything else must be a TraceError
