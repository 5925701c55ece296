"""One simulated engine (replica) of a vLLM-like server: its KV cache, queues and step loop.

The engine runs steps; a :class:`~sloguard.backends.sim._scheduler.Scheduler` decides what each
step computes (:class:`StepPlan`), the engine times it with the step-time model and applies it:
computed tokens advance, a sequence whose prompt and outputs are all computed samples a token,
finished requests free their KV blocks. KV lives in blocks of ``block_size`` tokens. With
prefix caching, a request whose shared prefix is already cached skips computing it: a group's
shared prefix, or for a later round of a multi-round request the prompt of the round before
(whose prompt it starts with), in whole blocks.

Stretches of pure decode, where nothing can join or leave the batch and no block can run out,
are advanced in one vectorised jump with the same arithmetic as step by step (the same floats).
"""

from __future__ import annotations

import heapq
import math
from collections import deque
from collections.abc import Callable, Sequence
from collections.abc import Set as AbstractSet
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from sloguard.gpu_profile import BLOCK_SIZE

if TYPE_CHECKING:
    from sloguard.backends.sim._requests import Requests

_MIN_JUMP = 4  # shorter pure-decode stretches are cheaper step by step than vectorised

StepTime = Callable[[int, int, float, int, float], float]


@dataclass(frozen=True)
class EngineSettings:
    """The knobs the scheduler reads, and the KV cache it has."""

    max_num_seqs: int
    max_num_batched_tokens: int
    max_model_len: int
    enable_chunked_prefill: bool
    enable_prefix_caching: bool
    num_blocks: int
    long_prefill_token_threshold: int = 0  # prefill tokens per request per step (0: no cap)
    scheduling_policy: str = "fcfs"  # or "priority": waiting order and preemption by priority
    block_size: int = BLOCK_SIZE  # tokens per KV block

    @classmethod
    def of(cls, knobs: dict[str, Any], num_blocks: int, block_size: int) -> EngineSettings:
        """The scheduler's knobs of a complete configuration, with its KV blocks."""
        return cls(
            max_num_seqs=knobs["max_num_seqs"],
            max_num_batched_tokens=knobs["max_num_batched_tokens"],
            max_model_len=knobs["max_model_len"],
            enable_chunked_prefill=knobs["enable_chunked_prefill"],
            enable_prefix_caching=knobs["enable_prefix_caching"],
            num_blocks=num_blocks,
            long_prefill_token_threshold=knobs.get("long_prefill_token_threshold", 0),
            scheduling_policy=knobs.get("scheduling_policy", "fcfs"),
            block_size=block_size,
        )


@dataclass(slots=True)
class StepPlan:
    """What one step computes: tokens per request, and the totals the step time depends on.

    Args:
        ids: The requests the step computes, in order.
        tokens: Tokens computed for each (a prefill chunk, or 1 plus its speculated tokens).
        num_sampled: LM-head rows (one per sequence that samples, plus speculated positions).
        attn_pairs: Query-key pairs attended by prefill chunks and speculated positions.
        decode_context: Summed context of the decoding sequences (KV read once each).
        spec: Tokens speculated for each of ``ids`` (``None``: no speculation this step).
        draft_s: Seconds the draft model takes to propose them (before the verifying step).
    """

    ids: list[int]
    tokens: list[int]
    num_sampled: int
    attn_pairs: float
    decode_context: int
    spec: list[int] | None = None
    draft_s: float = 0.0


class Scheduler(Protocol):
    """Decides what an engine computes in each step; one instance per engine."""

    def attach(self, engine: Engine) -> None:
        """Called once, by the engine this scheduler serves."""

    def arrive(self, engine: Engine, rid: int) -> None:
        """``rid`` reached the engine: queue it (or decide now whether to admit it)."""

    def queued(self, engine: Engine) -> int:
        """Requests held in the scheduler's own queues (beyond ``engine.waiting``)."""

    def may_jump(self, engine: Engine) -> bool:
        """Whether, with every running request decoding, nothing else could join the batch."""

    def schedule(self, engine: Engine) -> StepPlan:
        """The next step's plan (never empty while the engine is busy)."""

    def retire(self, engine: Engine, rid: int) -> None:
        """``rid`` finished on the engine."""

    def would_admit(self, engine: Engine, rid: int) -> bool:
        """Whether ``rid``, arriving now, would be admitted (served with its SLOs planned for)."""

    @property
    def best_effort_ids(self) -> AbstractSet[int]:
        """Requests this scheduler served best effort (not admitted)."""

    @property
    def planner_s(self) -> Sequence[float]:
        """Seconds each planning took (empty where nothing is planned)."""


class Engine:
    """One replica: its own KV blocks, prefix cache, queues, scheduler and clock.

    Args:
        reqs: The per-request state every replica shares (a request lives on one replica).
        settings: Scheduler limits and KV blocks.
        step_time: Seconds for a step (see
            :class:`~sloguard.backends.sim._roofline.StepTimeModel`).
        jitter: Step-time noise factors (mean 1), cycled over steps.
        scheduler: Decides what each step computes.
        finish: Called with (request, time) when a request's last token is out.
    """

    def __init__(
        self,
        reqs: Requests,
        settings: EngineSettings,
        step_time: StepTime,
        jitter: np.ndarray,
        scheduler: Scheduler,
        finish: Callable[[int, float], None],
    ) -> None:
        self.reqs = reqs
        self.settings = settings
        self.step_time = step_time
        self.decode_times = getattr(step_time, "decode", None) or _step_by_step(step_time)
        self.jitter = jitter
        self.jitter_steps = jitter.tolist()  # plain floats: cheaper in the step loop
        self.n_jitter = len(self.jitter_steps)
        self.scheduler = scheduler
        self.finish = finish
        self.free_blocks = self.total_blocks = settings.num_blocks
        self.cached: set[int] = set()  # prefix keys whose blocks are in the cache
        self.inbox: list[tuple[float, int]] = []  # heap of (when the engine has it, request)
        self.waiting: deque[int] = deque()
        self.running: list[int] = []
        self.now = 0.0
        self.last_step = 0.0
        self.steps = self.preemptions = self.batch_tokens = self.peak_used = 0
        self.prefix_queries = self.prefix_hits = 0
        self.recomputed: set[int] = set()  # requests preempted once: out of the cache counters
        scheduler.attach(self)

    @property
    def busy(self) -> bool:
        """Whether a request is waiting or running here."""
        return bool(self.running or self.waiting or self.scheduler.queued(self))

    def receive(self, clock: float) -> None:
        """Take every request that reached this engine by now (an idle one wakes by ``clock``)."""
        inbox = self.inbox
        if inbox and not self.busy and inbox[0][0] <= clock:
            self.now = max(self.now, inbox[0][0])
        while inbox and inbox[0][0] <= self.now:
            self.scheduler.arrive(self, heapq.heappop(inbox)[1])

    def begin(self, rid: int) -> int:
        """The first token to compute of a request that has none: past its cached prefix."""
        reqs = self.reqs
        seq = reqs.prompt[rid] + reqs.generated[rid]
        hits = reqs.hits[rid]
        if not (self.settings.enable_prefix_caching and hits):
            return 0
        cached = self.cached
        hit = max((length for length, key in hits if key in cached), default=0)
        return min(hit, seq - 1)

    def admitted(self, rid: int, start: int) -> None:
        """Count ``rid``'s prefix-cache lookup as vLLM's exported counters do: when it is
        admitted, all its tokens queried and ``start`` of them hit; not again after a preemption
        (vLLM 0.32 ``Scheduler.schedule`` records lookups at admission, a preempted request's
        apart)."""
        if self.settings.enable_prefix_caching and rid not in self.recomputed:
            self.prefix_queries += self.reqs.prompt[rid] + self.reqs.generated[rid]
            self.prefix_hits += start

    def preempt(self, victim: int) -> None:
        """Free ``victim``'s blocks; it is recomputed from its first token later."""
        reqs = self.reqs
        self.free_blocks += reqs.blocks[victim]
        reqs.blocks[victim] = reqs.computed[victim] = 0
        self.preemptions += 1
        self.recomputed.add(victim)

    def jump(self, horizon: float, timeout_s: float) -> bool:
        """Advance every running request by k tokens at once, if nothing can change meanwhile.

        Returns whether it did: every running request decoding, no arrival before ``horizon``,
        the scheduler letting nothing join, and a stretch long enough to pay.
        """
        running = self.running
        nrun = len(running)
        free_blocks = self.free_blocks
        if not (
            nrun
            and nrun <= self.settings.max_num_batched_tokens
            and free_blocks >= nrun
            and horizon > self.now + _MIN_JUMP * self.last_step  # else too short to pay
            and self.scheduler.may_jump(self)
        ):
            return False
        reqs = self.reqs
        prompt, target, computed, generated, blocks = reqs.state
        if not all(computed[r] == prompt[r] + generated[r] - 1 for r in running):
            return False
        # no request finishes before the last step, none needs more than ceil(k/block) blocks
        block = self.settings.block_size
        k = min(min(target[r] - generated[r] for r in running), 4096)
        k = min(k, block * (free_blocks // nrun))
        if k < _MIN_JUMP:
            return False
        ctx0 = sum(prompt[r] + generated[r] for r in running)
        offsets = np.arange(k)
        durations = self.decode_times(
            nrun, ctx0 + nrun * offsets, self.jitter[(self.steps + offsets) % self.n_jitter]
        )
        ends = np.cumsum(np.concatenate(([self.now], durations)))[1:]
        # a step starts only if nothing was due to be sent or to reach the engine by then,
        # and before the timeout
        k = min(k, 1 + int(np.searchsorted(ends[: k - 1], horizon, "left")))
        k = min(k, 1 + int(np.searchsorted(ends[: k - 1], timeout_s, "right")))
        times = ends[:k].tolist()
        now = self.now = times[-1]
        self.last_step = float(durations[k - 1])
        token_times, pub_at, pubs = reqs.token_times, reqs.pub_at, reqs.pubs
        for rid in running:
            token_times[rid].extend(times)
            generated[rid] += k
            computed[rid] += k
            grown = -(-computed[rid] // block)
            free_blocks -= grown - blocks[rid]
            blocks[rid] = grown
            if computed[rid] >= pub_at[rid]:
                pub_at[rid] = _publish(pubs[rid], computed[rid], self.cached)
        self.free_blocks = free_blocks
        self.steps += k
        self.batch_tokens += nrun * k
        self.peak_used = max(self.peak_used, self.total_blocks - free_blocks)
        finished_now = [r for r in running if generated[r] == target[r]]
        for rid in finished_now:
            self._retire(rid, now)
        if finished_now:
            self.running = [r for r in running if generated[r] < target[r]]
        return True

    def step(self) -> None:
        """One step: the scheduler's plan, timed and applied."""
        plan = self.scheduler.schedule(self)
        if not plan.ids:
            raise RuntimeError("scheduler made no progress")  # startup checks rule this out
        num_tokens = sum(plan.tokens)
        steps = self.steps
        took = self.step_time(
            num_tokens,
            plan.num_sampled,
            plan.attn_pairs,
            plan.decode_context,
            self.jitter_steps[steps % self.n_jitter],
        )
        self.last_step = took = took + plan.draft_s if plan.draft_s else took
        self.now += took
        self.steps = steps + 1
        self.batch_tokens += num_tokens
        used = self.total_blocks - self.free_blocks
        if used > self.peak_used:
            self.peak_used = used
        if plan.spec is None:
            self._apply(plan)
        else:
            self._apply_speculative(plan)

    def _apply(self, plan: StepPlan) -> None:
        """Advance computed tokens, emit tokens, retire finished requests."""
        reqs = self.reqs
        prompt, target, computed, generated, _ = reqs.state
        pub_at, token_times, now = reqs.pub_at, reqs.token_times, self.now
        done_any = False
        for rid, ntok in zip(plan.ids, plan.tokens, strict=True):
            computed[rid] += ntok
            if computed[rid] == prompt[rid] + generated[rid]:
                generated[rid] += 1
                token_times[rid].append(now)
                if computed[rid] >= pub_at[rid]:
                    pub_at[rid] = _publish(reqs.pubs[rid], computed[rid], self.cached)
                if generated[rid] == target[rid]:
                    self._retire(rid, now)
                    done_any = True
        if done_any:
            self.running = [r for r in self.running if generated[r] < target[r]]

    def _apply_speculative(self, plan: StepPlan) -> None:
        """As :meth:`_apply`, where a decode verifies its speculated tokens and keeps a prefix."""
        reqs = self.reqs
        assert plan.spec is not None
        prompt, target, computed, generated, blocks = reqs.state
        pub_at, token_times, accepted = reqs.pub_at, reqs.token_times, reqs.accepted
        block = self.settings.block_size
        now = self.now
        done_any = False
        for rid, ntok, spec in zip(plan.ids, plan.tokens, plan.spec, strict=True):
            seq = prompt[rid] + generated[rid]
            if spec and computed[rid] == seq - 1:  # a decode that speculated
                kept = 1 + accepted(spec)
                left = target[rid] - generated[rid]
                if kept > left:
                    kept = left
                computed[rid] += kept
                generated[rid] += kept
                token_times[rid].extend([now] * kept)
                held = -(-computed[rid] // block)  # rejected tokens give their blocks back
                self.free_blocks += blocks[rid] - held
                blocks[rid] = held
            else:
                computed[rid] += ntok
                if computed[rid] != seq:
                    continue
                generated[rid] += 1
                token_times[rid].append(now)
            if computed[rid] >= pub_at[rid]:
                pub_at[rid] = _publish(reqs.pubs[rid], computed[rid], self.cached)
            if generated[rid] == target[rid]:
                self._retire(rid, now)
                done_any = True
        if done_any:
            self.running = [r for r in self.running if generated[r] < target[r]]

    def _retire(self, rid: int, when: float) -> None:
        """``rid`` is done: free its blocks, tell the scheduler and the client."""
        self.free_blocks += self.reqs.blocks[rid]
        self.reqs.blocks[rid] = 0
        self.scheduler.retire(self, rid)
        self.finish(rid, when)


def _publish(pubs: list[tuple[int, int]], computed: int, cached: set[int]) -> float:
    """Cache every prefix of ``pubs`` that ``computed`` tokens cover; the next threshold."""
    for length, key in pubs:
        if length > computed:
            return length
        cached.add(key)
    return math.inf


def _step_by_step(step_time: StepTime) -> Callable[[int, np.ndarray, np.ndarray], np.ndarray]:
    """Decode-step times from a model without a vectorised ``decode`` method."""

    def decode(num_seqs: int, contexts: np.ndarray, jitters: np.ndarray) -> np.ndarray:
        return np.array(
            [
                step_time(num_seqs, num_seqs, 0.0, int(c), float(j))
                for c, j in zip(contexts, jitters, strict=True)
            ]
        )

    return decode


def make_jitter(rng: np.random.Generator, sigma: float, size: int = 4096) -> np.ndarray:
    """Per-step multiplicative noise, lognormal with median 1 (ones when ``sigma`` is 0).

    The C library's ``exp``, not numpy's: numpy's own AVX-512 ``exp`` rounds a few values an
    ulp apart from the C library's, so a run would differ between CPUs with and without it.
    """
    if sigma <= 0:
        return np.ones(1)
    shift = 0.5 * sigma * sigma
    return np.array([math.exp(z - shift) for z in rng.normal(0.0, sigma, size).tolist()])
