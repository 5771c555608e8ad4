"""The store over MPI: row bytes in RMA windows (Put/Get), metadata in a controller answering small messages.

    store = RMAStore.create(comm, schema, cfg, layout=layout)   # collective over `comm`
    if store.role == "server":
        store.serve()          # a dedicated store rank answers the control plane until all close
    else:
        ... store.put(...) / store.get(...) ...
    store.close()              # collective: sleeps until every rank closes, then frees the windows

The controller is the first rank with role "server" (topology.store_ranks) or else a thread on rank 0
of `comm`. Row bytes go straight between the client and the storage rank's window with
Lock_all + Put/Get (no target progress needed); only metadata (kilobytes) passes the controller.
Why a controller and not RMA atomics on metadata windows: docs/store.md (measured on MPICH and Open MPI).
"""

from __future__ import annotations

import enum
import threading
import time
from collections import deque
from typing import Any, Callable

from asyncflow_hpc.errors import WaitTimeout
from asyncflow_hpc.store import schema as _schema
from asyncflow_hpc.store.base import StoreBase
from asyncflow_hpc.store.config import StoreConfig
from asyncflow_hpc.store.control import ControlPlane
from asyncflow_hpc.store.doorbell import Doorbell
from asyncflow_hpc.store.schema import Schema, StoreError
from asyncflow_hpc.store.windows import DataWindow, ProgressThread, spans_nodes
from asyncflow_hpc.topology.comms import sleeping_barrier

TAG_REQ, TAG_REP = 7301, 7302
class Op(str, enum.Enum):
    """The store's control-plane requests (the value is what travels in the request message)."""

    REGISTER = "reg"
    ALLOC = "alloc"
    ALLOC_COLUMNS = "allocc"
    COMMIT = "commit"
    LEASE = "lease"
    COMMIT_LEASED = "commitl"
    END_LEASE = "endl"
    SELECT = "select"
    RELEASE = "release"
    UNCLAIM = "unclaim"
    STATS = "stats"
    PEEK = "peek"
    DONE = "done"

    def __str__(self) -> str:
        return self.value


ONEWAY = frozenset({Op.COMMIT, Op.COMMIT_LEASED, Op.END_LEASE, Op.RELEASE, Op.UNCLAIM, Op.DONE})
PARKABLE = frozenset({Op.ALLOC, Op.ALLOC_COLUMNS, Op.LEASE, Op.SELECT})  # last argument: how long the caller waits
SPACE = frozenset({Op.ALLOC, Op.ALLOC_COLUMNS, Op.LEASE})  # requests that only take space (never free any)
# request -> (ControlPlane method, whether the requesting rank is passed as the producer)
OPS: dict[Op, tuple[str, bool]] = {
    Op.REGISTER: ("register_task", False), Op.ALLOC: ("alloc", True), Op.ALLOC_COLUMNS: ("alloc_columns", False),
    Op.COMMIT: ("commit", False), Op.LEASE: ("lease", True), Op.COMMIT_LEASED: ("commit_leased", False),
    Op.END_LEASE: ("end_lease", False), Op.SELECT: ("select", False), Op.RELEASE: ("release", False),
    Op.UNCLAIM: ("unclaim", False), Op.STATS: ("stats", False), Op.PEEK: ("peek", False),
    Op.DONE: ("mark_done", True)}
ROLES = ("server", "producer", "consumer", "both", "idle")
_ERRORS = {"SchemaError": _schema.SchemaError, "StoreError": StoreError, "ValueError": ValueError,
           "EndOfStream": _schema.EndOfStream}


def _role_from_layout(layout: Any, rank: int) -> str:
    from asyncflow_hpc.topology.roles import Role

    if layout.has(rank, Role.STORE):
        return "server"
    if rank not in layout.store_talkers():
        return "idle"
    prod, cons = layout.has(rank, Role.ROLLOUT), not layout.has(rank, Role.ROLLOUT) or layout.colocate
    return "both" if prod and cons else ("producer" if prod else "consumer")


class Service:
    """The control plane behind a lock, answering requests from other ranks."""

    def __init__(self, ctrl: ControlPlane, comm: Any, cfg: StoreConfig, bell: Doorbell):
        self.ctrl, self.comm, self.cfg, self.bell = ctrl, comm, cfg, bell
        self.lock = threading.Lock()
        self.deferred: dict[int, Exception] = {}
        self.parked: list[tuple[int, Op, tuple, float]] = []
        self.plock = threading.RLock()  # parked requests: the serving thread and a local caller

    def local(self, src: int, op: Op, args: tuple) -> Any:
        """A call from the rank hosting the controller: no message, but it may unblock parked requests."""
        value = self.apply(src, op, args)
        if op not in SPACE and self.parked:
            with self.plock:
                self._retry_parked()
        return value

    def apply(self, src: int, op: Op, args: tuple) -> Any:
        method, by_producer = OPS[op]
        with self.lock:
            fn = getattr(self.ctrl, method)
            return fn(*args, producer=src) if by_producer else fn(*args)

    def handle_one(self, msg: Any, src: int) -> None:
        with self.plock:
            self._handle(msg, src)

    def _handle(self, msg: Any, src: int) -> None:
        code, *args = msg.recv()
        try:
            op = Op(code)
        except ValueError:
            self.comm.send(("err", "StoreError", f"unknown store request {code!r}"), dest=src, tag=TAG_REP)
            self.bell.ring(src)
            return
        wait_s = args.pop() if op in PARKABLE else 0.0
        if not self._try(src, op, tuple(args), park_until=time.monotonic() + wait_s if wait_s > 0 else None):
            return
        if op not in SPACE:  # the others can make parked requests satisfiable
            self._retry_parked()

    def _try(self, src: int, op: Op, args: tuple, park_until: float | None) -> bool:
        """Apply one request and reply; a blocking put/get that cannot proceed yet is parked instead
        (answered as soon as rows or space appear, or with None at its deadline): no polling traffic."""
        try:
            value = self.apply(src, op, args)
            reply = ("ok", value)
        except Exception as exc:  # noqa: BLE001 - every failure goes back to the caller's rank
            if op in ONEWAY:
                self.deferred[src] = exc
                return True
            reply = ("err", type(exc).__name__, str(exc))
        if op in ONEWAY:
            return True
        if reply == ("ok", None) and park_until is not None and time.monotonic() < park_until:
            self.parked.append((src, op, args, park_until))
            return False
        if src in self.deferred:
            exc = self.deferred.pop(src)
            reply = ("err", type(exc).__name__, f"an earlier request failed: {exc}")
        self.comm.send(reply, dest=src, tag=TAG_REP)
        self.bell.ring(src)
        return True

    def _retry_parked(self) -> None:
        pending, self.parked = self.parked, []
        for src, op, args, until in pending:
            self._try(src, op, args, until)

    def _expire_parked(self) -> None:
        now = time.monotonic()
        if any(until <= now for *_, until in self.parked):
            self._retry_parked()  # past the deadline: _try answers None, the client raises WaitTimeout

    def serve(self, finished: Callable[[], bool]) -> None:
        """Answer requests until `finished()`; sleeps with back-off when idle, woken by the clients' rings.

        A ring is followed by a short poll without sleeping (spin_s): MPI shows the message tens of
        microseconds after the ring wakes this thread. The same short poll follows each request when
        some client cannot ring (another node): its follow-up request usually comes within microseconds."""
        from mpi4py import MPI

        pause, st = self.cfg.poll_min_s, MPI.Status()
        me, size = self.comm.Get_rank(), self.comm.Get_size()
        spin_s = 0.0 if all(self.bell.can_ring(r) for r in range(size) if r != me) else self.cfg.spin_s
        hot_until = 0.0
        while True:
            msg = self.comm.improbe(MPI.ANY_SOURCE, TAG_REQ, status=st)
            if msg is not None:
                self.handle_one(msg, st.Get_source())
                pause, hot_until = self.cfg.poll_min_s, time.monotonic() + spin_s
                continue
            if time.monotonic() < hot_until:
                continue  # a follow-up request usually comes within microseconds: poll briefly
            if self.parked:
                with self.plock:
                    self._expire_parked()
            if finished():
                break
            if self.bell.wait(pause):  # rung: the message shows up within tens of microseconds
                pause, hot_until = self.cfg.poll_min_s, time.monotonic() + self.cfg.spin_s
            else:
                pause = min(pause * 2, self.cfg.ctrl_poll_max_s)
        for _ in range(3):  # drain one-way messages sent just before the clients closed
            time.sleep(1e-3)
            while (msg := self.comm.improbe(MPI.ANY_SOURCE, TAG_REQ, status=st)) is not None:
                self.handle_one(msg, st.Get_source())


class RMAStore(StoreBase):
    """A store participant (client, server, or both); create() is collective over the communicator."""

    leasing = True

    def __init__(self) -> None:  # use create()
        self._closed = False
        self._rpc_lock = threading.Lock()
        self._early: deque = deque()  # replies to claims sent ahead (iter_batches(prefetch=True))
        self._early_sent = 0
        self.service: Service | None = None
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._progress: ProgressThread | None = None

    @classmethod
    def create(cls, comm: Any, schema: Schema, cfg: StoreConfig, layout: Any = None, role: str | None = None,
               label: str | None = None) -> "RMAStore":
        self = cls()
        self.schema, self.cfg = schema, cfg
        self.comm = comm.Dup()  # windows and the closing barrier
        self.ccomm = comm.Dup()  # control messages
        self.rank, size = self.comm.Get_rank(), self.comm.Get_size()
        if role is None:
            role = _role_from_layout(layout, self.rank) if layout is not None else "both"
        if role not in ROLES:
            raise StoreError(f"store role must be one of {', '.join(ROLES)}, got {role!r}")
        self.role = role
        self.label = label or (str(layout.role_of(self.rank)) if layout is not None else role)
        roles = self.comm.allgather(role)
        servers = [r for r, x in enumerate(roles) if x == "server"]
        self.ctrl_rank = servers[0] if servers else 0
        if cfg.storage == "servers" and not servers:
            raise StoreError("store.storage=servers but no rank has the store role (set topology.store_ranks >= 1)")
        self.unit_ranks = servers if cfg.storage == "servers" else list(range(size))
        self.unit_bytes = cfg.unit_bytes
        self.multi_node = spans_nodes(self.comm)
        self.win = DataWindow(self.comm, self.unit_bytes if self.rank in self.unit_ranks else 0,
                              shared=cfg.shared_memory == "auto" and not self.multi_node)
        self.bell = Doorbell()
        self.bell.connect(self.comm)
        # One access epoch to every rank for the store's lifetime, closed by close().
        self._epoch = self.win.epoch()
        self._epoch.__enter__()
        if self.rank == self.ctrl_rank:
            producers = sum(1 for x in roles if x in ("producer", "both"))
            ctrl = ControlPlane(schema, cfg.capacity_rows, [self.unit_bytes] * len(self.unit_ranks), producers)
            self.service = Service(ctrl, self.ccomm, cfg, self.bell)
            # A thread serves from the start, on a dedicated store rank too: requests (task registration,
            # the first puts) arrive while that rank is still in the job's set-up collectives.
            self._thread = threading.Thread(target=self.service.serve, args=(self._stop.is_set,),
                                            name="store-controller", daemon=True)
            self._thread.start()
        self._start_progress(role)
        self.comm.Barrier()
        return self

    def _start_progress(self, role: str) -> None:
        """Storage ranks that do not run the controller loop (which polls MPI anyway) get a progress
        thread when the transport may need target progress (store.progress; docs/multihost.md)."""
        need = self.cfg.progress == "thread" or (self.cfg.progress == "auto" and self.multi_node)
        if need and self.rank in self.unit_ranks and self.service is None and role != "server":
            self._progress = ProgressThread(self.comm, self.cfg.progress_interval_s)

    # ---- control-plane calls -----------------------------------------------------------------
    def _rpc(self, op: Op, *args: Any, wait_s: float = 0.0) -> Any:
        if self._closed:
            raise StoreError(f"[rank {self.rank}] store is closed")
        if self.service is not None:  # this rank hosts the controller: call it directly (no parking)
            return self.service.local(self.rank, op, args)
        with self._rpc_lock:
            self._send(op, args, wait_s)
            if op in ONEWAY:
                return None
            self._collect_early()
            reply = self._await_reply(op, wait_s)
        return self._unpack(reply)

    def _send(self, op: Op, args: tuple, wait_s: float) -> None:
        msg = (op.value, *args, wait_s) if op in PARKABLE else (op.value, *args)
        self.ccomm.send(msg, dest=self.ctrl_rank, tag=TAG_REQ)
        self.bell.ring(self.ctrl_rank)

    @staticmethod
    def _unpack(reply: tuple) -> Any:
        if reply[0] == "err":
            raise _ERRORS.get(reply[1], StoreError)(reply[2])
        return reply[1]

    def _collect_early(self) -> None:
        """Replies to claims sent ahead come first (the controller answers a rank's unparked requests
        in order): take them off the wire before waiting for another reply."""
        while self._early_sent > len(self._early):
            self._early.append(self._await_reply(Op.SELECT, 0.0))

    def _select_begin(self, task, col_ids, n, policy, args):
        if self.service is not None:
            return super()._select_begin(task, col_ids, n, policy, args)
        with self._rpc_lock:
            self._send(Op.SELECT, (task, col_ids, n, policy, args), 0.0)  # never parked: answered in order
            self._early_sent += 1
        return ("sent",)

    def _select_end(self, handle):
        if handle[0] != "sent":
            return super()._select_end(handle)
        with self._rpc_lock:
            self._collect_early()
            self._early_sent -= 1
            return self._unpack(self._early.popleft())

    def _await_reply(self, op: Op, wait_s: float) -> Any:
        """Sleep on this rank's bell (the controller rings after replying) with back-off polls of MPI;
        poll briefly without sleeping first only when the controller cannot ring (another node)."""
        start = time.monotonic()
        spin = 0.0 if self.bell.can_ring(self.ctrl_rank) else self.cfg.spin_s
        deadline, spin_until = start + wait_s + self.cfg.timeout_s, start + spin
        pause = self.cfg.poll_min_s
        while True:
            msg = self.ccomm.improbe(self.ctrl_rank, TAG_REP)
            if msg is not None:
                return msg.recv()
            now = time.monotonic()
            if now < spin_until:  # the controller usually answers within tens of microseconds
                continue
            if now > deadline:
                raise WaitTimeout(f"store: no reply from the store controller (rank {self.ctrl_rank}) to "
                                  f"'{op}' within {self.cfg.timeout_s:g}s (store.timeout_s)",
                                  rank=self.rank, role=self.label)
            if self.bell.wait(pause):  # rung: the reply becomes visible to MPI within tens of microseconds
                spin_until = time.monotonic() + self.cfg.spin_s
                continue
            # a reply is usually due within a millisecond; only a parked request waits longer
            pause = min(pause * 2, self.cfg.ctrl_poll_max_s if now - start < 0.01 else self.cfg.poll_max_s)

    def _register(self, name, columns, *adds):  # adds: columns the task writes later (store/control.py)
        self._rpc(Op.REGISTER, name, columns, *adds)

    def _alloc(self, col_ids, sizes, counts, index, group, version, wait_s=0.0):
        return self._rpc(Op.ALLOC, col_ids, sizes, counts, index, group, version, wait_s=wait_s)

    def _alloc_columns(self, row_ids, col_ids, sizes, counts, wait_s=0.0):
        return self._rpc(Op.ALLOC_COLUMNS, row_ids, col_ids, sizes, counts, wait_s=wait_s)

    def _commit(self, row_ids, col_ids):
        self._rpc(Op.COMMIT, row_ids, col_ids)

    def _take_lease(self, rows, nbytes, want_rows, want_bytes, wait_s=0.0):
        return self._rpc(Op.LEASE, rows, nbytes, want_rows, want_bytes, wait_s=wait_s)

    def _commit_leased(self, *args):
        self._rpc(Op.COMMIT_LEASED, *args)

    def _release_lease(self, lease_id):
        self._rpc(Op.END_LEASE, lease_id)

    def _select(self, task, col_ids, n, policy, args, wait_s=0.0):
        return self._rpc(Op.SELECT, task, col_ids, n, policy, args, wait_s=wait_s)

    def _release(self, task, row_ids):
        self._rpc(Op.RELEASE, task, row_ids)

    def _unclaim(self, task, row_ids):
        self._rpc(Op.UNCLAIM, task, row_ids)

    def _peek(self, task, col_ids):
        return self._rpc(Op.PEEK, task, col_ids)

    def _stats(self):
        return self._rpc(Op.STATS)

    def _mark_done(self):
        self._rpc(Op.DONE)

    # ---- data plane --------------------------------------------------------------------------
    def _flush(self, units: set[int]) -> None:
        # Flush (not Unlock_all, which on MPICH waits for the targets) completes the operations.
        if len(units) > 2:
            self.win.flush_all()
        else:
            for u in units:
                self.win.flush(self.unit_ranks[u])

    def _write(self, ops):
        for u, off, buf in ops:
            self.win.put(buf, self.unit_ranks[u], off)
        self._flush({op[0] for op in ops})  # remote completion before the commit message

    def _read(self, ops):
        self.win.sync()  # shared windows: see every byte published before the claim was answered
        for u, off, buf in ops:
            self.win.get(buf, self.unit_ranks[u], off)
        self._flush({op[0] for op in ops})

    # ---- lifetime ----------------------------------------------------------------------------
    def _sleeping_barrier(self, timeout: float | None, what: str, serve: bool = False) -> None:
        if serve and self.service is not None:
            self.service.serve(self.comm.Ibarrier().Test)
            return
        sleeping_barrier(self.comm, timeout, what=what, rank=self.rank, role=self.label,
                         pause_min=self.cfg.poll_min_s, pause_max=0.05)

    def serve(self, timeout: float | None = None) -> None:
        """On a server rank: answer the control plane until every rank has called close()."""
        if self.role != "server":
            raise StoreError(f"[rank {self.rank}] serve() is for ranks with store role 'server', this is '{self.role}'")
        if self._thread is not None:  # the controller thread answers; this rank only waits (sleeping)
            self._sleeping_barrier(timeout, "every store rank to call close()")
        else:
            self._sleeping_barrier(timeout, "every store rank to call close()", serve=True)
        self._served = True

    def close(self, timeout: float | None = None) -> None:
        """Collective: wait (sleeping) until every rank closes, stop the controller, free the windows."""
        if self._closed:
            return
        self._end_lease()  # unused reserved slots and bytes go back before the controller stops
        if not getattr(self, "_served", False):
            wait = self.cfg.timeout_s if timeout is None else timeout
            self._sleeping_barrier(wait, "every other rank to close the store")
        if self._thread is not None:
            self._stop.set()
            self._thread.join(timeout=self.cfg.timeout_s)
        if self._progress is not None:
            self._progress.free()
        self._closed = True
        self.bell.close()
        self._epoch.__exit__(None, None, None)
        self.win.free()
        self.ccomm.Free()
        self.comm.Free()
