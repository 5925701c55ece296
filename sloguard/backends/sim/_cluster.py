"""A simulated load served by one engine, or by several replicas behind a router.

The client sends each request when it is due (a closed loop waits for a free slot); a later round
of a multi-round request is sent when the round before ends plus its delay, and the session keeps
its client slot until its last round ends. A sent request reaches a replica after the frontend's
delay. Replicas are stepped in time order: always the one furthest behind, so that what one
replica does (a finished round sends the next) reaches the others in time.
"""

from __future__ import annotations

import heapq
import math
from collections import deque
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from sloguard.backends.sim._engine import Engine, EngineSettings, Scheduler, StepTime
from sloguard.backends.sim._requests import Deadlines, Requests
from sloguard.backends.sim._router import ROUTERS, Router
from sloguard.backends.sim._scheduler import VllmScheduler
from sloguard.backends.sim._slos_serve import SlosServeScheduler
from sloguard.config import SpecDecodeConfig
from sloguard.result import ABORT_ERROR, RequestRecord, unsent_round_error
from sloguard.workload import rounds_after

if TYPE_CHECKING:
    from sloguard.early_abort import AttainmentWatch
    from sloguard.workload import Workload


@dataclass(frozen=True)
class ServingSettings:
    """How the engines schedule and how requests reach them.

    Args:
        scheduler: ``vllm`` (vLLM's FCFS policy) or ``slos-serve`` (deadline planning with
            admission control).
        replicas: Independent engines, each with its own KV cache and scheduler.
        router: How a request picks its replica (:data:`~sloguard.backends.sim._router.ROUTERS`).
        soft_admission: SLOs-Serve: requests its plan cannot admit wait in a best-effort queue
            (off: every request is admitted, as without burst handling).
        spec: Speculative decoding (the backend config's own section).
        ttft_ms: TTFT limit planned with for requests without a class of their own.
        tpot_ms: TPOT limit planned with for requests without a class of their own.
    """

    scheduler: str = "vllm"
    replicas: int = 1
    router: str = "round-robin"
    soft_admission: bool = True
    spec: SpecDecodeConfig = field(default_factory=SpecDecodeConfig)
    ttft_ms: float = 500.0
    tpot_ms: float = 100.0


@dataclass
class ReplicaStats:
    """What one replica did (``best_effort_ids``: requests its plan did not admit)."""

    requests: int
    output_tokens: int
    num_steps: int
    num_preemptions: int
    peak_kv_usage: float
    best_effort_ids: list[int] = field(default_factory=list)
    planner_ms_mean: float = 0.0
    planner_ms_max: float = 0.0

    @property
    def best_effort(self) -> int:
        """How many requests were served best effort."""
        return len(self.best_effort_ids)


@dataclass
class EngineRun:
    """What one simulated load phase produced."""

    records: list[RequestRecord]
    duration_s: float
    timed_out: bool
    num_steps: int
    num_preemptions: int
    peak_kv_usage: float
    mean_batch_tokens: float
    prefix_cache_hit_rate: float
    replicas: list[ReplicaStats] = field(default_factory=list)
    spec_draft_tokens: int = 0  # tokens speculated, and of those accepted
    spec_accepted_tokens: int = 0
    stopped: str | None = None  # why the load stopped once its attainment target was lost


class _Client:
    """Sends requests when due (and a slot is free), later rounds after the round before."""

    def __init__(
        self,
        reqs: Requests,
        max_model_len: int,
        delay_s: float,
        delay_per_running_s: float,
    ) -> None:
        self.reqs = reqs
        workload = reqs.workload
        self.n_first = workload.num_first
        self.next_round = workload.next_rounds().tolist()
        self.slots = deque([0.0] * workload.concurrency) if workload.concurrency else None
        self.later: list[tuple[float, int]] = []  # heap of (when it is due, later round)
        self.next_send = self.finished = 0
        self.max_model_len = max_model_len
        self.delay_s = delay_s
        self.delay_per_running_s = delay_per_running_s
        self.next_at = self.next_time()  # kept up to date by every send and every finish
        # where requests go, once the engines exist: the one engine, or a router before several
        self.direct: Engine | None = None
        self.delivered: list[int] = []  # requests sent to the one engine
        self.route: Router | None = None
        self.watch: AttainmentWatch | None = None  # counts each request that ends, if set
        self.stop_at = math.inf  # no stop before this time (with a watch)
        self.stopped: str | None = None
        self.ttft_due: list[tuple[float, int]] = []  # open loop: (first token due by, request)
        self.ttft_seen = 0  # those checked so far

    def watch_for(self, watch: AttainmentWatch, after_s: float) -> None:
        """Stop once ``watch`` says the target is lost, ``after_s`` after the first arrival."""
        reqs = self.reqs
        workload = reqs.workload
        first = np.flatnonzero(workload.follows < 0) if workload.follows is not None else None
        rids = range(len(workload)) if first is None else first.tolist()
        self.watch = watch
        self.stop_at = min(reqs.due[r] for r in rids) + after_s
        if workload.concurrency == 0:  # sent when due: a first token is late from a known time
            assert reqs.deadlines is not None
            self.ttft_due = sorted((reqs.due[r] + reqs.deadlines.ttft_s[r], r) for r in rids)

    def lost(self, clock: float) -> bool:
        """Whether the load stops at ``clock``: past the stop time, its target lost.

        Requests end in their own time; a request whose first token is overdue has missed
        already, so it counts from then (a margin of a microsecond over its TTFT limit)."""
        if clock <= self.stop_at or self.watch is None:
            return False
        due, reqs, i = self.ttft_due, self.reqs, self.ttft_seen
        while i < len(due) and due[i][0] + 1e-6 < clock:
            rid = due[i][1]
            if not reqs.token_times[rid] and reqs.errors[rid] is None:
                self.watch.miss(rid)
            i += 1
        self.ttft_seen = i
        self.stopped = self.watch.lost()
        return self.stopped is not None

    def next_time(self) -> float:
        """When the client next sends something (``inf``: nothing until a round ends)."""
        due, slots = self.reqs.due, self.slots
        first = (
            due[self.next_send]
            if self.next_send < self.n_first and (slots is None or slots)
            else math.inf
        )
        return min(first, self.later[0][0] if self.later else math.inf)

    def send_until(self, clock: float) -> None:
        """Send every request due by ``clock`` (with a free slot), then every later round."""
        reqs, slots = self.reqs, self.slots
        due, send = reqs.due, reqs.send
        while (
            self.next_send < self.n_first
            and due[self.next_send] <= clock
            and (slots is None or slots)
        ):
            rid = self.next_send
            self.next_send += 1
            send[rid] = max(due[rid], slots.popleft()) if slots is not None else due[rid]
            self._send(rid)
        later = self.later
        while later and later[0][0] <= clock:
            send_at, rid = heapq.heappop(later)
            due[rid] = send[rid] = send_at
            self._send(rid)
        if self.route is not None and self.route.held:
            for rid, engine in self.route.release():
                self._deliver(rid, engine, max(send[rid], clock))
        self.next_at = self.next_time()

    def _send(self, rid: int) -> None:
        """The client sends ``rid``: to a replica, or refused."""
        reqs = self.reqs
        need = reqs.prompt[rid] + reqs.target[rid]
        if need <= self.max_model_len:
            if self.direct is not None:
                self.delivered.append(rid)
                self._deliver(rid, self.direct, reqs.send[rid])
                return
            assert self.route is not None
            engine = self.route(rid)
            if engine is not None:  # else it waits at the router
                self._deliver(rid, engine, reqs.send[rid])
            return
        reqs.errors[rid] = (
            f"HTTP 400: This model's maximum context length is {self.max_model_len} "
            f"tokens. However, you requested {need} tokens."
        )
        self.finish(rid, reqs.send[rid])

    def _deliver(self, rid: int, engine: Engine, when: float) -> None:
        """``rid`` leaves the frontend at ``when`` for ``engine``: there after the delay."""
        delay = self.delay_s + self.delay_per_running_s * len(engine.running)
        heapq.heappush(engine.inbox, (when + delay, rid))

    def finish(self, rid: int, when: float) -> None:
        """``rid`` ended at ``when``: send its next round later, or free the client's slot.

        A failed round fails the rounds after it.
        """
        self.finished += 1
        if self.watch is not None:
            self.watch.ended(_record(self.reqs, rid))
        if self.route is not None:
            self.route.done(rid)
        nxt = self.next_round[rid]
        reqs = self.reqs
        if nxt >= 0 and reqs.errors[rid] is None:
            heapq.heappush(self.later, (when + reqs.due[nxt], nxt))
            self.next_at = min(self.next_at, self.later[0][0])
            return
        unsent = rounds_after(self.next_round, rid)
        for nxt in unsent:
            reqs.errors[nxt] = unsent_round_error(rid)
        self.finished += len(unsent)
        if self.slots is not None:
            self.slots.append(when)
            self.next_at = self.next_time()


def run_engine(
    workload: Workload,
    settings: EngineSettings,
    step_time: StepTime,
    jitter: np.ndarray,
    timeout_s: float,
    *,
    arrival_delay_s: float = 0.0,
    arrival_delay_per_running_s: float = 0.0,
    fast_decode: bool = True,
    serving: ServingSettings | None = None,
    seed: int = 0,
    stop: tuple[float, AttainmentWatch] | None = None,
) -> EngineRun:
    """Serve ``workload`` and return per-request records and engine counters.

    Args:
        workload: Requests with their due times and the client's in-flight cap.
        settings: Scheduler limits and KV blocks of each replica.
        step_time: Seconds for a step given (tokens, sampled seqs, prefill attention pairs,
            decode context, jitter); see :class:`~sloguard.backends.sim._roofline.StepTimeModel`.
        jitter: Step-time noise factors (mean 1), cycled over steps.
        timeout_s: Simulated time after which unfinished requests fail and the run stops.
        arrival_delay_s: Frontend latency: a request reaches the scheduler this long after it
            was sent (HTTP, tokenisation, the hop from the API server to the engine).
        arrival_delay_per_running_s: Frontend latency added per sequence running when the
            request is sent: an API server busy streaming their tokens takes longer to pass a
            new request on.
        fast_decode: Jump over pure-decode stretches (off: every step on its own; same result).
        serving: Scheduler, replicas, router and speculation (default: one vLLM engine).
        seed: Seeds what is random beyond ``jitter`` (speculated tokens' acceptance).
        stop: Stop the load once the watch says the attainment target is lost and this many
            seconds have passed since the first arrival (unfinished requests are ``aborted``).
    """
    serving = serving or ServingSettings()
    reqs = Requests(
        workload,
        Deadlines.of(workload, serving.ttft_ms, serving.tpot_ms),
        serving.spec.acceptance_rate,
        seed,
        settings.block_size,
    )
    engines: list[Engine] = []
    client = _Client(reqs, settings.max_model_len, arrival_delay_s, arrival_delay_per_running_s)
    if stop is not None:
        client.watch_for(stop[1], stop[0])
    for _ in range(serving.replicas):
        engines.append(
            Engine(reqs, settings, step_time, jitter, _scheduler(serving), client.finish)
        )
    if len(engines) == 1:
        client.direct = engines[0]
    else:
        client.route = ROUTERS[serving.router](engines, reqs)
    _serve(client, engines, timeout_s, fast_decode)
    return _summary(reqs, client, engines)


def _scheduler(serving: ServingSettings) -> Scheduler:
    spec = serving.spec
    tokens = spec.max_tokens if spec.enabled else 0
    if serving.scheduler == "vllm":
        return VllmScheduler(tokens, spec.draft_ratio)
    return SlosServeScheduler(tokens, spec.acceptance_rate, spec.draft_ratio,
                              soft_admission=serving.soft_admission)  # fmt: skip


def _serve(client: _Client, engines: list[Engine], timeout_s: float, fast_decode: bool) -> None:
    """Step the replicas in time order until every request ended or time ran out."""
    if len(engines) == 1:
        _serve_one(client, engines[0], timeout_s, fast_decode)
        return
    n = len(client.reqs.prompt)
    while client.finished < n:
        busy = [e for e in engines if e.busy]
        clock = min(e.now for e in busy) if busy else min(e.now for e in engines)
        client.send_until(clock)
        for engine in engines:
            engine.receive(clock)
        # the next arrival: a request due to be sent, or one reaching a replica
        horizon = min(client.next_at, min(e.inbox[0][0] if e.inbox else math.inf
                                            for e in engines))  # fmt: skip
        busy = [e for e in engines if e.busy]
        if not busy:
            if horizon == math.inf:
                break
            for engine in engines:
                engine.now = max(engine.now, horizon)  # idle until then
            continue
        engine = min(busy, key=lambda e: e.now)
        if engine.now > timeout_s or client.lost(engine.now):
            break
        bound = min([horizon] + [e.now for e in busy if e is not engine])
        if not (fast_decode and engine.running and engine.jump(bound, timeout_s)):
            engine.step()


def _serve_one(client: _Client, engine: Engine, timeout_s: float, fast_decode: bool) -> None:
    """:func:`_serve` for one engine: the same loop, with less to look at in each turn."""
    n = len(client.reqs.prompt)
    inbox, waiting, scheduler = engine.inbox, engine.waiting, engine.scheduler
    # a speculating scheduler never lets a stretch be jumped (its tokens per step vary)
    fast_decode = fast_decode and not getattr(scheduler, "spec_tokens", 0)
    while client.finished < n:
        now = engine.now
        if client.next_at <= now:
            client.send_until(now)
        horizon = client.next_at
        while inbox and inbox[0][0] <= now:
            scheduler.arrive(engine, heapq.heappop(inbox)[1])
        if inbox and inbox[0][0] < horizon:
            horizon = inbox[0][0]
        if not (engine.running or waiting or scheduler.queued(engine)):
            if horizon == math.inf:
                break
            engine.now = max(now, horizon)  # idle until then
            continue
        if now > timeout_s or (now > client.stop_at and client.lost(now)):
            break
        if not (fast_decode and engine.running and engine.jump(horizon, timeout_s)):
            engine.step()


def _summary(reqs: Requests, client: _Client, engines: list[Engine]) -> EngineRun:
    records = []
    unfinished = (
        f"{ABORT_ERROR}: the attainment target was lost"
        if client.stopped
        else "timeout: request unfinished when the load phase ended"
    )
    for rid in range(len(reqs.prompt)):
        record = _record(reqs, rid)
        if record.error is None and reqs.generated[rid] < reqs.target[rid]:
            record.error, record.token_times = unfinished, np.empty(0)
        records.append(record)
    first_send = min((r.send_time for r in records), default=0.0)
    steps = sum(e.steps for e in engines)
    batch_tokens = sum(e.batch_tokens for e in engines)
    queries = sum(e.prefix_queries for e in engines)
    total_blocks = engines[0].total_blocks
    placed = client.route.history if client.route is not None else [client.delivered]
    stats = [_replica_stats(reqs, e, placed[i]) for i, e in enumerate(engines)]
    return EngineRun(
        records=records,
        duration_s=max(max(e.now for e in engines) - first_send, 0.0),
        timed_out=client.finished < len(records) and client.stopped is None,
        num_steps=steps,
        num_preemptions=sum(e.preemptions for e in engines),
        peak_kv_usage=max(e.peak_used for e in engines) / total_blocks if total_blocks else 0.0,
        mean_batch_tokens=batch_tokens / steps if steps else 0.0,
        prefix_cache_hit_rate=sum(e.prefix_hits for e in engines) / queries if queries else 0.0,
        replicas=stats,
        stopped=client.stopped,
        spec_draft_tokens=reqs.spec_drafted,
        spec_accepted_tokens=reqs.spec_accepted,
    )


def _record(reqs: Requests, rid: int) -> RequestRecord:
    """``rid`` as the client saw it so far (its tokens, unless it failed)."""
    error = reqs.errors[rid]
    return RequestRecord(
        request_id=rid,
        prompt_len=reqs.prompt[rid],
        target_output_len=reqs.target[rid],
        scheduled_time=reqs.due[rid],
        send_time=reqs.send[rid],
        token_times=np.asarray(reqs.token_times[rid]) if error is None else np.empty(0),
        error=error,
    )


def _replica_stats(reqs: Requests, engine: Engine, placed: list[int]) -> ReplicaStats:
    planner = engine.scheduler.planner_s
    return ReplicaStats(
        requests=len(placed),
        output_tokens=sum(reqs.generated[r] for r in placed),
        num_steps=engine.steps,
        num_preemptions=engine.preemptions,
        peak_kv_usage=engine.peak_used / engine.total_blocks if engine.total_blocks else 0.0,
        best_effort_ids=sorted(engine.scheduler.best_effort_ids),
        planner_ms_mean=1e3 * float(np.mean(planner)) if planner else 0.0,
        planner_ms_max=1e3 * max(planner) if planner else 0.0,
    )
