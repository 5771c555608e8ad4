"""Weight sync on 3 real MPI ranks (trainer leader + 2 rollout): round trip, checksum (streamed and inline),
aborted stream, overflow, single buffer, layout, timeout."""

from __future__ import annotations

import json

import pytest

from tests.mpi_util import run_mpi

pytestmark = pytest.mark.mpi
WORKER = "tests/mpi/workers/weights_worker.py"


@pytest.fixture(scope="module")
def results(tmp_path_factory) -> dict[tuple[str, int], dict]:
    """One mpiexec run for all scenarios (each on its own torch.distributed group): saves startup time."""
    res_dir = tmp_path_factory.mktemp("weights")
    run_mpi(3, [WORKER], timeout=150, env={"WEIGHTS_RESULTS": str(res_dir)})
    out = {}
    lines = [ln for f in sorted(res_dir.glob("rank-*.txt")) for ln in f.read_text().splitlines()]
    for line in lines:
        if line.startswith("RESULT "):
            r = json.loads(line[len("RESULT "):])
            out[(r["scenario"], r["rank"])] = r
    return out


def test_round_trip_bit_exact_with_background_receive(results):
    leader = results[("roundtrip", 0)]
    assert leader["n_buckets"] > 3  # 1 MiB buckets over ~14 MiB, including a split tensor
    assert all(steps > 0 for steps in leader["overlap"]), "trainer thread made no progress during sends"
    for rank in (1, 2):
        r = results[("roundtrip", rank)]
        assert r["applied"] == [1, 2, 3]
        assert r["exact"] == [True, True, True]
        # the main thread kept generating while versions were received in the background
        assert sum(r["during_recv"]) > 0, r


def test_corrupted_bucket_is_detected_and_stream_stays_in_step(results):
    for rank in (1, 2):
        r = results[("corrupt", rank)]
        err = r["error"]
        assert err is not None and err["type"] == "ChecksumError"
        assert err["bucket"] == 2 and err["version"] == 1
        assert f"rank {rank}" in err["msg"] and "rollout" in err["msg"] and "bucket 2" in err["msg"]
        assert r["after"] == 2 and r["exact_after"] == [True]


def test_streamed_and_inline_sends_both_name_a_corrupted_bucket(results):
    assert results[("corrupt", 0)]["streamed"] == [True, True]  # send(): checksums in the trailer
    assert results[("corrupt_inline", 0)]["streamed"] == [False, False]  # pack() + send_async(None): inline
    for rank in (1, 2):
        r = results[("corrupt_inline", rank)]
        assert {k: r["error"][k] for k in ("type", "bucket", "version")} == \
            {"type": "ChecksumError", "bucket": 2, "version": 1}
        assert r["after"] == 2 and r["exact_after"] == [True]


def test_a_stream_whose_snapshot_fails_is_discarded_in_step(results):
    leader = results[("aborted", 0)]
    assert leader["errors"] == ["gather failed after 0 tensors", "gather failed after 5 tensors"]
    for rank in (1, 2):
        r = results[("aborted", rank)]
        # version 1 never reached the wire; version 2 went out with an ABORTED trailer and was dropped
        assert r["got"] == 3 and r["aborted"] == 1 and r["exact"] == [True] and r["end"] is None, r


def test_checksums_beyond_the_control_message_travel_in_the_overflow(results):
    leader = results[("overflow", 0)]
    assert leader["n_buckets"] > leader["inline"] + 8
    for rank in (1, 2):
        r = results[("overflow", rank)]
        assert {k: r["error"][k] for k in ("type", "bucket", "version")} == \
            {"type": "ChecksumError", "bucket": leader["bad"], "version": 1}
        assert r["after"] == 2 and r["exact_after"] == [True]


def test_single_staging_buffer_keeps_the_staged_version_intact(results):
    for rank in (1, 2):
        r = results[("single", rank)]
        assert r["got"] == [1, 2, 3, None]  # None: the sender's close() ended the stream cleanly
        assert r["exact"] == [[1, True], [3, True]] and r["skipped"] == 1


def test_layout_mismatch_is_named(results):
    for rank in (1, 2):
        msg = results[("layout", rank)]["error"]
        assert msg and "layout mismatch" in msg and "version 1" in msg and f"rank {rank}" in msg
    outcome = results[("layout", 0)]["outcome"]  # gloo's root waits for receivers: the sender times out, named
    assert outcome == "sent" or ("[rank 0, role trainer]" in outcome and "version 1" in outcome), outcome


def test_sender_that_never_sends_times_out_with_named_error(results):
    for rank in (1, 2):
        r = results[("timeout", rank)]
        assert r["type"] == "WaitTimeout"
        assert f"rank {rank}" in r["error"] and "role rollout" in r["error"]
        assert "header" in r["error"] and "trainer leader rank 0" in r["error"]
        assert 1.9 <= r["elapsed"] < 10.0  # version_wait_s=2: raised promptly, never a hang


def test_gather_from_uneven_shards_iterated_and_written_in_place(tmp_path):
    """engines/fsdp_gather on 3 FSDP2 trainer ranks: uneven Shard(0) pieces (some ranks empty), mixed dtypes,
    several bucket bounds; both the iterator and write_into (what WeightSender uses) are exact."""
    run_mpi(4, ["tests/mpi/workers/weights_gather_worker.py"], timeout=120, env={"WEIGHTS_RESULTS": str(tmp_path)})
    res = {int(f.name[7:-4]): json.loads(f.read_text()[len("GATHER "):]) for f in tmp_path.glob("gather-*.txt")}
    assert sorted(res) == [0, 1, 2]
    assert all(r["ok"] == [True, True, True] for r in res.values()), res
