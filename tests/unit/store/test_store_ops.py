"""The store's control-plane requests are an enum; a request the controller does not know is answered with a
named error at once (never left unanswered until the caller's timeout)."""

from asyncflow_hpc.store.config import StoreConfig
from asyncflow_hpc.store.control import ControlPlane
from asyncflow_hpc.store.rma import OPS, Op, Service
from asyncflow_hpc.store.schema import Column, Schema


class _Comm:
    def __init__(self):
        self.sent = []

    def send(self, obj, dest, tag):
        self.sent.append((obj, dest))


class _Bell:
    def ring(self, rank):
        pass


class _Msg:
    def __init__(self, payload):
        self.payload = payload

    def recv(self):
        return self.payload


def _service():
    ctrl = ControlPlane(Schema([Column("x", "int64")]), 8, [1 << 16], producers=1)
    return Service(ctrl, _Comm(), StoreConfig(), _Bell())


def test_every_op_maps_to_a_control_plane_method():
    assert set(OPS) == set(Op)
    for method, _ in OPS.values():
        assert callable(getattr(ControlPlane, method))


def test_unknown_request_gets_a_named_error_reply():
    svc = _service()
    svc.handle_one(_Msg(("bogus", 1, 2)), src=3)
    (reply, dest), = svc.comm.sent
    assert dest == 3 and reply[0] == "err" and reply[1] == "StoreError" and "'bogus'" in reply[2]


def test_a_known_request_travels_as_its_short_code():
    svc = _service()
    svc.handle_one(_Msg((Op.STATS.value,)), src=2)
    (reply, dest), = svc.comm.sent
    assert dest == 2 and reply[0] == "ok" and "rows_live" in reply[1]
