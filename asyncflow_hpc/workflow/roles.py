"""The AsyncFlow roles: one class per role, built from small settings and the interfaces of ports.py.

    ROLE_CLASSES[Role.ROLLOUT]   RolloutWorker    pull a prompt id, generate with admissible weights, put rows
    ROLE_CLASSES[Role.REWARD]    GroupScorer      score each whole group as soon as it is stored
    ROLE_CLASSES[Role.REFERENCE] GroupScorer      reference log-probs of each whole group
    ROLE_CLASSES[Role.TRAINER]   TrainerLeader    feed prompts, take whole batches, train, send weights, checkpoint
                                 TrainerFollower  the other trainer ranks: the leader's batch, the same step
    ROLE_CLASSES[Role.STORE]     StoreServer      the store's controller thread answers until everyone closed

Nothing here touches MPI, torch.distributed or the root config: async_flow.run_async builds the roles from
the config sections and the job's stores and links; tests/unit/workflow/test_roles_inprocess.py runs them as
threads over the in-process store and weight link. Staleness (staleness.py): the leader feeds prompt ids only
up to admission_quota(v, eta, P); a rollout worker starts prompt p only with weights >= the version the
leader admitted it at; the train task takes rows with v - version <= eta.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

from asyncflow_hpc import staleness
from asyncflow_hpc.topology.roles import Role
from asyncflow_hpc.workflow import common
from asyncflow_hpc.trace.schema import SpanName
from asyncflow_hpc.workflow.metrics import RoleClock, algo_postfix, record_rows, record_step, span
from asyncflow_hpc.workflow.ports import SampleStore, TrainerGroupLink, WeightSink, WeightSource
from asyncflow_hpc.workflow.rows import ADV_COLUMN, REF_COLUMN, rows_from_batch, rows_to_store

# The trainer leader waits for a batch in slices this long; between slices it feeds a replacement prompt for
# each group the store discarded as too stale. A replacement fed late idles the rollout ranks and then the
# trainer (a 1 s slice cost up to 2.6 s at the end of an 8-rank bench run); a slice costs one round trip.
BATCH_WAIT_SLICE_S = 0.05


@dataclass(frozen=True)
class Stream:
    """The schedule every role agrees on (workflow.*, data.prompts_per_step, rollout.n, run.seed, store.timeout_s)."""

    steps: int
    eta: int
    P: int  # prompts per step
    n: int  # responses per prompt
    seed: int
    timeout_s: float

    @property
    def total_prompts(self) -> int:
        return self.steps * self.P

    @classmethod
    def of(cls, workflow: Any, data: Any, rollout: Any, run: Any, store: Any) -> "Stream":
        return cls(steps=workflow.steps, eta=workflow.eta, P=data.prompts_per_step, n=rollout.n, seed=run.seed,
                   timeout_s=store.timeout_s)


# ---------------------------------------------------------------------------------------------
# rollout and scoring
# ---------------------------------------------------------------------------------------------
class RolloutWorker:
    """Pull prompt ids, generate with the newest admissible weights, put version-stamped rows."""

    def __init__(self, *, stream: Stream, algo: Any, task: common.Task, engine: Any, params: Any,
                 prompts: SampleStore, samples: SampleStore, weights: WeightSink, gate: Any, reward_inline: bool,
                 clock: RoleClock, recorder: Any = None):
        self.s, self.algo, self.task, self.engine, self.params = stream, algo, task, engine, params
        self.prompts, self.samples, self.weights, self.gate = prompts, samples, weights, gate
        self.reward_inline, self.clock, self.recorder = reward_inline, clock, recorder

    def run(self) -> dict:
        produced = 0
        while (got := self._next_prompt()) is not None:
            pid, need = int(got["prompt_id"][0]), int(got.version[0])  # the version the leader admitted it at
            self._maybe_swap(need)
            rows = self._generate(pid)
            cols, meta = rows_to_store(rows, self.reward_inline, self.s.n, self.algo)
            with self.clock.idle("store_put"), span(self.recorder, SpanName.STORE_PUT, rows=len(rows)):
                self.samples.put(cols, meta)
            produced += len(rows)
            self.clock.count("tokens", sum(len(r.response_ids) for r in rows))
        self._record_receives()
        self.samples.mark_done()
        return {"rows_produced": produced}

    def _next_prompt(self) -> Any:
        from asyncflow_hpc.store import EndOfStream

        with self.clock.idle("wait_prompt"), span(self.recorder, SpanName.PROMPT_WAIT):
            try:
                return self.prompts.get("rollout", ["prompt_id"], 1, policy="fifo")
            except EndOfStream:
                return None

    def _generate(self, pid: int) -> list:
        step, v = pid // self.s.P, self.engine.version
        with self.clock.busy("generate"), span(self.recorder, SpanName.GENERATE, step=step,
                                               version=v) as sp:
            rows = common.generate_groups(self.engine, self.task, [pid], run_seed=self.s.seed, step=step,
                                          n=self.s.n, params=self.params, version=v)
            sp.set(rows=len(rows), tokens=sum(len(r.response_ids) for r in rows))
        return rows

    def _maybe_swap(self, need: int) -> None:
        """Generation boundary: swap to a staged version if the gate says so; wait if weights are too old."""
        self._record_receives()
        if self.gate.boundary(self.weights.poll(), must_swap=self.engine.version < need):
            with self.clock.exposed("swap"), span(self.recorder, SpanName.WEIGHT_SWAP,
                                                  version=self.weights.poll() or -1):
                self.weights.swap(self.engine.load_weights)
        if self.engine.version < need:
            with self.clock.exposed("wait_weights"), span(self.recorder, SpanName.WEIGHT_WAIT, version=need):
                self.weights.wait_staged(need)
            with self.clock.exposed("swap"), span(self.recorder, SpanName.WEIGHT_SWAP,
                                                  version=self.weights.poll() or -1):
                self.weights.swap(self.engine.load_weights)
            self._record_receives()

    def _record_receives(self) -> None:
        """The receiver thread's weight_recv spans, recorded from this (the recorder's) thread."""
        for version, t0, t1, thread in self.weights.take_recv_spans():
            if self.recorder is not None:
                self.recorder.add_span(SpanName.WEIGHT_RECV.value, t0, t1, thread=thread, version=version)


class GroupScorer:
    """A stage rank: take each whole prompt group as soon as its responses are stored, add the columns
    `score(batch)` returns; ends at the sample store's end of stream."""

    def __init__(self, task_name: str, score: Callable[[Any], dict], *, samples: SampleStore, n: int,
                 clock: RoleClock, recorder: Any = None, result_key: str = ""):
        self.name, self.score, self.samples, self.n = task_name, score, samples, n
        self.clock, self.recorder = clock, recorder
        self.result_key = result_key or f"rows_{task_name}"

    def run(self) -> dict:
        from asyncflow_hpc.store import EndOfStream

        done = 0
        while True:
            with self.clock.idle("wait_rows"):
                try:
                    b = self.samples.get(self.name, ["prompt_ids", "response_ids"], self.n, policy="grpo_group",
                                         group_size=self.n)
                except EndOfStream:
                    return {self.result_key: done}
            with self.clock.busy(self.name), span(self.recorder, SpanName(self.name), rows=len(b)):
                self.samples.put_columns(b.row_ids, self.score(b))
            done += len(b)
            self.clock.count(f"{self.name}_rows", len(b))


def reward_score(task: common.Task, seed: int, algo: Any) -> Callable[[Any], dict]:
    """The reward stage's columns for a whole group: rewards (and GRPO advantages when they are stored)."""
    from asyncflow_hpc.workflow.rows import group_advantages_stored

    def score(b: Any) -> dict:
        rewards = []
        for i in range(len(b)):
            ex = task.train[common.example_index(seed, int(b.group[i]), len(task.train))]
            resp = task.tokenizer.decode(b["response_ids"][i].tolist())
            rewards.append(task.reward_fn(task.prompt_text(ex), resp, ex.reference))
        out = {"reward": np.asarray(rewards, dtype=np.float32)}
        if group_advantages_stored(algo):  # the whole group is here: its advantages too
            out[ADV_COLUMN] = common.group_advantages(out["reward"], algo)
        return out

    return score


def reference_score(policy: Any) -> Callable[[Any], dict]:
    """The reference stage's column: log-probs of each response under the frozen initial policy."""
    from asyncflow_hpc.engines.base import Row

    def score(b: Any) -> dict:
        rows = []
        for i in range(len(b)):
            resp = b["response_ids"][i].tolist()
            rows.append(Row(prompt_id=int(b.group[i]), sample_index=i, prompt_ids=b["prompt_ids"][i].tolist(),
                            response_ids=resp, behav_logprobs=[0.0] * len(resp)))  # unused by log_probs
        return {REF_COLUMN: [np.asarray(lp, dtype=np.float32) for lp in policy.log_probs(rows)]}

    return score


class StoreServer:
    """A dedicated store rank: the sample store's controller thread answers requests until every rank has
    closed the store (async_flow closes it after the role loop); nothing else runs here."""

    def run(self) -> dict:
        return {}


# ---------------------------------------------------------------------------------------------
# trainer ranks
# ---------------------------------------------------------------------------------------------
class _Trainer:
    """The step loop every trainer rank runs; the leader adds the stores, the followers get its batch."""

    lead = False

    def __init__(self, *, stream: Stream, algo: Any, trainer: Any, group: TrainerGroupLink,
                 weights: WeightSource | None, bucket_mb: float, ckpt: Any, clock: RoleClock, recorder: Any = None,
                 history: list | None = None):
        from asyncflow_hpc.checkpoint.schedule import Schedule

        self.s, self.algo, self.trainer, self.group, self.weights = stream, algo, trainer, group, weights
        self.bucket_mb, self.ckpt, self.clock, self.recorder = bucket_mb, ckpt, clock, recorder
        self.history = list(history or [])
        resuming = ckpt is not None and ckpt.resuming
        self.sched = Schedule.from_meta(ckpt.meta) if resuming else Schedule()

    def run(self, start: int = 0) -> list[dict]:
        self.t_run = time.perf_counter()
        for v in range(start, self.s.steps):
            rows = self.batch(v)
            metrics = self.step(v, rows)
            self.after_step(v, rows, metrics)
            if self.ckpt is not None and self.checkpoint(v + 1):
                break
        return self.history

    def batch(self, v: int) -> list:
        return self.group.share_batch(None, v, self.clock)

    def step(self, v: int, rows: list) -> dict:
        """Train on the step's rows, publish weights v + 1 (every trainer rank: a sharded trainer gathers)."""
        from asyncflow_hpc.engines.fsdp_trainer import send_weights
        from asyncflow_hpc.workflow.rows import group_advantages_stored

        stale = [v - r.version for r in rows]
        if any(not staleness.is_fresh(v, r.version, self.s.eta) for r in rows):
            raise RuntimeError(f"trainer step {v} got a row outside the staleness bound eta={self.s.eta}: "
                               f"staleness {max(stale)}")  # the store policy must make this impossible
        if not group_advantages_stored(self.algo):  # GRPO rows carry theirs from the reward stage
            common.assign_advantages(rows, self.algo)
        tokens = sum(len(r.prompt_ids) + len(r.response_ids) for r in rows)
        with self.clock.busy("train"), span(self.recorder, SpanName.TRAIN_STEP, step=v, rows=len(rows),
                                            tokens=tokens):
            metrics = self.trainer.train_step(rows)
        with self.clock.exposed("send_wait"), span(self.recorder, SpanName.WEIGHT_SEND, version=v + 1):
            send_weights(self.trainer, self.weights, v + 1, self.bucket_mb)  # returns once packed
        metrics.update(step=float(v), reward_mean=float(np.mean([r.reward for r in rows])),
                       response_len=float(np.mean([len(r.response_ids) for r in rows])),
                       staleness_mean=float(np.mean(stale)), staleness_max=float(max(stale)))
        self.clock.count("rows", len(rows))
        self.clock.count("train_tokens", sum(len(r.response_ids) for r in rows))
        for s in stale:
            self.clock.count(f"staleness_{s}", 1)
        self.history.append(metrics)
        return metrics

    def after_step(self, v: int, rows: list, metrics: dict) -> None:
        """Followers record nothing."""

    def checkpoint(self, done: int) -> bool:
        """Agree on a stop (the leader decides), write the checkpoint if one is due. True = leave the loop."""
        ck = self.ckpt
        stop = self.group.share(ck.stop_requested(done) if self.lead else False)
        why = ck.due(done, stop=stop)
        if why is None:
            return False
        shards = ck.write_shards(done, self.trainer)  # every trainer rank, before the leader drains the store
        if self.lead:
            self.write_checkpoint(done, why, shards)
        if why != "stop":
            return False
        ck.stopped = True
        if self.lead:
            print(f"asyncflow-hpc: stopped after step {done} ({ck.flag.reason or 'checkpoint.stop_after_steps'}); "
                  f"continue with resume=auto", flush=True)
        return True

    def write_checkpoint(self, done: int, why: str, shards: str | None) -> None:
        """The leader writes; followers only contributed their shards."""


class TrainerFollower(_Trainer):
    """A trainer rank other than the leader: the leader's batch, the same (collective) train step."""


class TrainerLeader(_Trainer):
    """Feed prompt ids under the admission quota, take whole batches within eta, train, send, checkpoint."""

    lead = True

    def __init__(self, *, prompts: SampleStore, samples: SampleStore, train_columns: list[str], tokenizer: Any,
                 reward_inline: bool, bar: Any = None, **kw: Any):
        super().__init__(**kw)
        self.prompts, self.samples, self.columns, self.tokenizer = prompts, samples, train_columns, tokenizer
        self.reward_inline, self.bar = reward_inline, bar
        self.zero_signal_dropped = 0  # prompt groups dynamic sampling dropped (each replaced by a new prompt)
        self.fed = self.sched.fed

    def run(self, start: int = 0) -> list[dict]:
        if self.ckpt is not None and self.ckpt.resuming:
            self.restore()
        history = super().run(start)
        self.prompts.mark_done()  # rollout workers see EndOfStream once they drained the prompt queue
        return history

    # --- the data path ------------------------------------------------------------------------
    def feed(self, version: int) -> None:
        """Make prompt ids available up to the admission quota of `version`, plus one replacement for each group
        the store discarded as too stale or dynamic sampling dropped (so every step still gets a full batch)."""
        from asyncflow_hpc.store import RowMeta

        replaced = self.samples.stats()["tasks"]["train"]["discarded_stale"] // self.s.n + self.zero_signal_dropped
        target = min(staleness.admission_quota(version, self.s.eta, self.s.P), self.s.total_prompts) + replaced
        if target > self.fed:
            pids = np.arange(self.fed, target, dtype=np.int64)
            # The weights prompt p needs: the schedule's required_version(p), never newer than the trainer's
            # current version (a replacement fed past the quota must be generable now).
            meta = [RowMeta(index=int(p), group=int(p),
                            version=min(staleness.required_version(int(p), self.s.eta, self.s.P), version))
                    for p in pids]
            self.prompts.put({"prompt_id": pids}, meta)
            self.fed = target

    def batch(self, v: int) -> list:
        """The step's rows (whole groups, v - version <= eta), shared with the trainer group. With dynamic
        sampling, groups whose rewards are all equal are dropped and replacements drawn until the batch is full."""
        from asyncflow_hpc.errors import RankError

        self.feed(v)
        rows, want = [], self.s.P
        for _ in range(self.algo.dynamic_sampling_max_rounds if self.algo.dynamic_sampling else 1):
            got = self._drop_zero_signal(rows_from_batch(self._get_groups(v, want), self.s.n))
            rows += got
            want -= len(got) // self.s.n
            if not want:
                self.sched.consumed(rows, self.fed)
                return self.group.share_batch(rows, v, self.clock)
            self.feed(v)  # replacements for the dropped groups
        raise RankError(f"trainer step {v}: {self.s.P - want} of {self.s.P} prompt groups had different rewards "
                        f"after algorithm.dynamic_sampling_max_rounds={self.algo.dynamic_sampling_max_rounds} "
                        f"batches ({self.zero_signal_dropped} groups with equal rewards dropped so far): the task is "
                        f"too easy or too hard for the policy", role="trainer")

    def _get_groups(self, version: int, groups: int) -> Any:
        """`groups` whole prompt groups within eta, waiting in short slices (a group discarded as too stale
        meanwhile is replaced by a new prompt between slices, else the batch could never fill)."""
        from asyncflow_hpc.errors import WaitTimeout

        deadline = time.monotonic() + self.s.timeout_s
        with self.clock.idle("wait_batch"), span(self.recorder, SpanName.BATCH_WAIT, step=version):
            while True:
                left = deadline - time.monotonic()
                try:
                    b = self.samples.get("train", self.columns, groups * self.s.n, policy="version_bounded",
                                         version=version, eta=self.s.eta, group_size=self.s.n,
                                         then="asyncflow_hpc.workflow.policies:oldest_version_groups",
                                         timeout=max(0.01, min(BATCH_WAIT_SLICE_S, left)))
                    break
                except WaitTimeout:
                    if left <= BATCH_WAIT_SLICE_S:
                        raise
                    self.feed(version)
        self.clock.count("stale_discarded", int(getattr(b, "stale", 0) or 0))
        return b

    def _drop_zero_signal(self, rows: list) -> list:
        """Dynamic sampling: the rows of the groups whose rewards differ. The dropped rows were consumed by the
        train task: counted (clock, trace, step metrics), never silently lost."""
        if not self.algo.dynamic_sampling:
            return rows
        from asyncflow_hpc.algorithms.advantages import zero_signal_groups

        flat = zero_signal_groups([r.reward for r in rows], [r.prompt_id for r in rows])
        if flat:
            self.zero_signal_dropped += len(flat)
            self.clock.count("zero_signal_dropped", len(flat) * self.s.n)
            if self.recorder is not None:
                self.recorder.counter("zero_signal_dropped", float(self.zero_signal_dropped))
        return [r for r in rows if r.prompt_id not in flat]

    def after_step(self, v: int, rows: list, metrics: dict) -> None:
        if self.algo.dynamic_sampling:
            metrics["zero_signal_dropped"] = float(self.zero_signal_dropped)  # groups, since the start
        record_rows(self.recorder, rows, v, self.s.seed, self.s.P, self.s.n)
        record_step(self.recorder, v, metrics)
        if self.recorder is not None:
            self.recorder.counter("store_occupancy", float(self.samples.stats()["rows_live"]))
        if self.bar is not None:
            el = time.perf_counter() - self.t_run
            self.bar.set_postfix(reward=f"{metrics['reward_mean']:.3f}", loss=f"{metrics['loss']:+.4f}",
                                 stale=f"{metrics['staleness_mean']:.2f}",
                                 sps=f"{self.clock.counts.get('rows', 0) / max(el, 1e-9):.1f}",
                                 **algo_postfix(metrics))
            self.bar.update(1)

    # --- checkpoints: the store's rows in flight and the prompt schedule ------------------------
    def write_checkpoint(self, done: int, why: str, shards: str | None) -> None:
        self.sched.fed = self.fed
        rows = self._drain() if why == "stop" else self._snapshot()
        extra = {**self.sched.to_meta(rows), "total_prompts": self.s.total_prompts}
        self.ckpt.save(done, why, trainer=self.trainer, tokenizer=self.tokenizer, history=self.history, extra=extra,
                       rows=rows, shards=shards)

    def _drain(self) -> list:
        """Stopping checkpoint: no new prompts start, every group in generation lands, take all rows out."""
        from asyncflow_hpc.store import EndOfStream

        try:
            while self.prompts.try_get("rollout", ["prompt_id"], 1, policy="fifo") is not None:
                pass  # claimed here = never started: they stay `pending` and run after the resume
        except EndOfStream:
            pass
        self.prompts.mark_done()
        rows: list = []
        while True:
            try:
                b = self.samples.get("train", self.columns, self.s.P * self.s.n, policy="fifo")
            except EndOfStream:
                return rows
            rows.extend(rows_from_batch(b, self.s.n))

    def _snapshot(self) -> list:
        """Periodic checkpoint: a copy of the rows the train task has not consumed (nothing is claimed)."""
        return rows_from_batch(self.samples.peek("train", self.columns), self.s.n)

    def restore(self) -> None:
        """Resume: queue the checkpoint's pending prompts and put its rows back into the store."""
        from asyncflow_hpc.checkpoint.state import load_rows
        from asyncflow_hpc.store import RowMeta

        ck = self.ckpt
        rows, pending = load_rows(ck.path), [int(p) for p in ck.meta.get("pending", [])]
        if pending:
            meta = [RowMeta(index=p, group=p, version=staleness.required_version(p, self.s.eta, self.s.P))
                    for p in pending]
            self.prompts.put({"prompt_id": np.asarray(pending, dtype=np.int64)}, meta)
        groups: dict[int, list] = {}
        for r in rows:
            groups.setdefault(int(r.prompt_id), []).append(r)
        for pid in groups:  # one prompt group per put, as a rollout worker does; rewards again via reward ranks
            cols, meta = rows_to_store(groups[pid], self.reward_inline, self.s.n, self.algo)
            self.samples.put(cols, meta)
        print(f"asyncflow-hpc: resuming from {ck.path}: step {ck.start}, {len(rows)} rows restored to the store, "
              f"{len(pending)} prompts queued again, {len(self.sched.done_groups)} prompt groups already trained on",
              flush=True)


ROLE_CLASSES: dict[Role, type] = {Role.ROLLOUT: RolloutWorker, Role.REWARD: GroupScorer,
                                  Role.REFERENCE: GroupScorer, Role.TRAINER: TrainerLeader, Role.STORE: StoreServer}


def role_class(role: Role) -> type:
    """The class that runs `role`; a role without one is an error, never a rank that silently does nothing."""
    try:
        return ROLE_CLASSES[role]
    except KeyError:
        from asyncflow_hpc.errors import ConfigError

        raise ConfigError(f"role {role} has no class in workflow.roles.ROLE_CLASSES: nothing would run it") from None
