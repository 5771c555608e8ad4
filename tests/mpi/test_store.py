"""The RMA store under real MPI ranks: 100k rows exactly once per task, back-pressure, named timeouts."""

import json

import pytest

from tests.mpi_util import run_mpi

pytestmark = pytest.mark.mpi


def _json_lines(out: str) -> list[dict]:
    return [json.loads(line) for line in out.splitlines() if line.startswith("{")]


@pytest.mark.parametrize("mode", ["thread", "server", "prefetch"])
def test_stream_100k_rows_exactly_once_per_task(mode):
    args = ["tests/mpi/workers/store_stream.py", "--rows", "100000", "--timeout", "60"]
    extra = {"thread": [], "server": ["--server"], "prefetch": ["--prefetch"]}[mode]
    proc = run_mpi(4, args + extra, timeout=150)
    (report,) = _json_lines(proc.stdout)
    for task in ("a", "b"):
        assert report[task]["lost"] == 0, report
        assert report[task]["duplicated"] == 0, report
        assert report[task]["got"] == 100000
    st = report["stats"]
    assert st["rows_put"] == 100000 and st["rows_recycled"] == 100000 and st["rows_live"] == 0
    assert st["capacity_rows"] == 1024  # 100k rows went through a 1,024-row ring: capacity was recycled


def test_backpressure_timeouts_and_bad_calls():
    proc = run_mpi(2, ["tests/mpi/workers/store_errors.py"], timeout=90)
    by_rank = {r["rank"]: r for r in _json_lines(proc.stdout)}
    c, p = by_rank[0], by_rank[1]
    assert "rank 0" in c["get_timeout"] and "role trainer" in c["get_timeout"] and "task 't'" in c["get_timeout"]
    assert "rank 1" in p["put_timeout"] and "store full" in p["put_timeout"]
    assert "unknown column 'y'" in p["unknown_column"]
    assert "task 'nope' is not registered" in p["unregistered_task"]
    assert "dtype float32" in p["dtype"]
    # the full store blocked the producer and lost nothing: rows 0..5 all arrive, in order, once
    assert c["first"] == [0, 1, 2, 3] and c["second"] == [4, 5]
    assert p["first"] == [0, 1, 2, 3] and p["first_meta"] == [0, 1, 2, 3]  # bcast_batch reached rank 1
    assert c["stats"]["tasks"]["t"]["consumed"] == 6
