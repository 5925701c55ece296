"""A discrete-event model of vLLM's v1 engine loop.

Each step schedules running requests first (one token per decode, the next chunk of a partial
prefill), then admits waiting ones in arrival order while there is room under ``max_num_seqs``
and the token budget ``max_num_batched_tokens``. Without chunked prefill a prompt is prefilled
whole or waits. KV lives in blocks of 16 tokens; when a running request needs a block and none is
free, the newest running request is preempted and recomputed later, and no waiting request is
admitted that step. With prefix caching, a request whose shared prefix is already cached skips
computing it: a group's shared prefix, or for a later round of a multi-round request the prompt
of the round before (whose prompt it starts with). A later round is sent when the round before
ends plus its delay; the session keeps its client slot until its last round ends.

Stretches of pure decode, where nothing can join or leave the batch and no block can run out,
are advanced in one vectorised jump with the same arithmetic as step by step (the same floats).
"""

from __future__ import annotations

import heapq
import math
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from sloguard.gpu_profile import BLOCK_SIZE
from sloguard.result import RequestRecord, unsent_round_error
from sloguard.workload import Workload, rounds_after

_MIN_JUMP = 4  # shorter pure-decode stretches are cheaper step by step than vectorised


@dataclass(frozen=True)
class EngineSettings:
    """The knobs the scheduler reads, and the KV cache it has."""

    max_num_seqs: int
    max_num_batched_tokens: int
    max_model_len: int
    enable_chunked_prefill: bool
    enable_prefix_caching: bool
    num_blocks: int


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


def run_engine(
    workload: Workload,
    settings: EngineSettings,
    step_time: Callable[[int, int, float, int, float], float],
    jitter: np.ndarray,
    timeout_s: float,
    *,
    arrival_delay_s: float = 0.0,
    arrival_delay_per_running_s: float = 0.0,
    fast_decode: bool = True,
) -> EngineRun:
    """Serve ``workload`` and return per-request records and engine counters.

    Args:
        workload: Requests with their due times and the client's in-flight cap.
        settings: Scheduler limits and KV blocks.
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
    """
    n = len(workload)
    n_first = workload.num_first
    prompt = workload.prompt_lens.tolist()
    target = workload.output_lens.tolist()
    due = workload.arrival_times.tolist()
    next_round = workload.next_rounds().tolist()
    hits, pubs = _prefix_keys(workload)
    pub_at = [p[0][0] if p else math.inf for p in pubs]  # next publication threshold
    computed = [0] * n
    generated = [0] * n
    blocks = [0] * n
    token_times: list[list[float]] = [[] for _ in range(n)]
    send = [0.0] * n
    errors: list[str | None] = [None] * n

    budget_cap = settings.max_num_batched_tokens
    free_blocks = total_blocks = settings.num_blocks
    slots = deque([0.0] * workload.concurrency) if workload.concurrency else None
    cached: set[int] = set()  # prefix keys whose blocks are in the cache
    inbox: list[tuple[float, int]] = []  # heap of (when the engine has it, request)
    later: list[tuple[float, int]] = []  # heap of (when it is due, later round)
    waiting: deque[int] = deque()
    running: list[int] = []
    now = 0.0
    next_send = finished = steps = preemptions = 0
    batch_tokens = 0
    peak_used = 0
    prefix_queries = prefix_hits = 0
    jitter_steps = jitter.tolist()  # plain floats: cheaper in the step loop, same values
    n_jitter = len(jitter_steps)
    decode_times = getattr(step_time, "decode", None) or _step_by_step(step_time)
    last_step = 0.0

    def end_session(rid: int, when: float) -> int:
        """``rid`` ended at ``when``: send its next round later, or free the client's slot.

        A failed round fails the rounds after it; returns how many that is.
        """
        nxt = next_round[rid]
        if nxt >= 0 and errors[rid] is None:
            heapq.heappush(later, (when + due[nxt], nxt))
            return 0
        unsent = rounds_after(next_round, rid)
        for nxt in unsent:
            errors[nxt] = unsent_round_error(rid)
        if slots is not None:
            slots.append(when)
        return len(unsent)

    def send_request(rid: int) -> int:
        """The client sends ``rid``: to the engine, or refused; returns how many rounds ended."""
        if prompt[rid] + target[rid] <= settings.max_model_len:
            delay = arrival_delay_s + arrival_delay_per_running_s * len(running)
            heapq.heappush(inbox, (send[rid] + delay, rid))
            return 0
        errors[rid] = (
            f"HTTP 400: This model's maximum context length is {settings.max_model_len} "
            f"tokens. However, you requested {prompt[rid] + target[rid]} tokens."
        )
        return 1 + end_session(rid, send[rid])

    while finished < n:
        # the client sends every request that is due (and has a free slot), then later rounds
        while next_send < n_first and due[next_send] <= now and (slots is None or slots):
            rid = next_send
            next_send += 1
            send[rid] = max(due[rid], slots.popleft()) if slots is not None else due[rid]
            finished += send_request(rid)
        while later and later[0][0] <= now:
            send_at, rid = heapq.heappop(later)
            due[rid] = send[rid] = send_at
            finished += send_request(rid)
        while inbox and inbox[0][0] <= now:
            waiting.append(heapq.heappop(inbox)[1])
        # the next arrival: a first round due (with a free slot), the engine receiving a sent
        # request, or a later round due
        horizon = min(
            due[next_send] if next_send < n_first and (slots is None or slots) else math.inf,
            inbox[0][0] if inbox else math.inf,
            later[0][0] if later else math.inf,
        )
        if not running and not waiting:
            if horizon == math.inf:
                break
            now = max(now, horizon)  # idle until then
            continue
        if now > timeout_s:
            break

        # --- a stretch of pure decode: advance every running request by k tokens at once
        nrun = len(running)
        k = 0
        if (
            fast_decode
            and nrun
            and nrun <= budget_cap
            and (not waiting or nrun >= settings.max_num_seqs)
            and free_blocks >= nrun
            and horizon > now + _MIN_JUMP * last_step  # else the jump is too short to pay
            and all(computed[r] == prompt[r] + generated[r] - 1 for r in running)
        ):
            # no request finishes before the last step, none needs more than ceil(k/16) blocks
            k = min(min(target[r] - generated[r] for r in running), 4096)
            k = min(k, BLOCK_SIZE * (free_blocks // nrun))
        if k >= _MIN_JUMP:
            ctx0 = sum(prompt[r] + generated[r] for r in running)
            offsets = np.arange(k)
            durations = decode_times(
                nrun, ctx0 + nrun * offsets, jitter[(steps + offsets) % n_jitter]
            )
            ends = np.cumsum(np.concatenate(([now], durations)))[1:]
            # a step starts only if nothing was due to be sent or to reach the engine by then,
            # and before the timeout
            k = min(k, 1 + int(np.searchsorted(ends[: k - 1], horizon, "left")))
            k = min(k, 1 + int(np.searchsorted(ends[: k - 1], timeout_s, "right")))
            times = ends[:k].tolist()
            now = times[-1]
            last_step = float(durations[k - 1])
            for rid in running:
                token_times[rid].extend(times)
                generated[rid] += k
                computed[rid] += k
                grown = -(-computed[rid] // BLOCK_SIZE)
                free_blocks -= grown - blocks[rid]
                blocks[rid] = grown
                if computed[rid] >= pub_at[rid]:
                    pub_at[rid] = _publish(pubs[rid], computed[rid], cached)
            steps += k
            batch_tokens += nrun * k
            peak_used = max(peak_used, total_blocks - free_blocks)
            finished_now = [r for r in running if generated[r] == target[r]]
            for rid in finished_now:
                free_blocks += blocks[rid]
                blocks[rid] = 0
                finished += 1 + end_session(rid, now)
            if finished_now:
                running = [r for r in running if generated[r] < target[r]]
            continue

        # --- schedule one step: running first, then waiting
        budget = budget_cap
        sched_ids: list[int] = []
        sched_tokens: list[int] = []
        num_sampled = 0
        attn_pairs = 0.0
        decode_ctx = 0
        preempted = False
        idx = 0
        while idx < len(running) and budget > 0:
            rid = running[idx]
            seq = prompt[rid] + generated[rid]
            need = seq - computed[rid]
            ntok = need if need <= budget else budget
            new_blocks = -(-(computed[rid] + ntok) // BLOCK_SIZE) - blocks[rid]
            victim = -1
            while new_blocks > free_blocks and victim != rid:
                victim = running.pop()  # the newest request is recomputed later
                free_blocks += blocks[victim]
                blocks[victim] = computed[victim] = 0
                waiting.appendleft(victim)
                preemptions += 1
                preempted = True
            if victim == rid:
                break
            free_blocks -= new_blocks
            blocks[rid] += new_blocks
            sched_ids.append(rid)
            sched_tokens.append(ntok)
            budget -= ntok
            if need == 1:
                decode_ctx += seq
            else:
                attn_pairs += ntok * (computed[rid] + (ntok + 1) / 2)
            if ntok == need:
                num_sampled += 1
            idx += 1
        if not preempted:
            while waiting and len(running) < settings.max_num_seqs and budget > 0:
                rid = waiting[0]
                seq = prompt[rid] + generated[rid]
                start = computed[rid]
                if settings.enable_prefix_caching and start == 0 and hits[rid]:
                    prefix_queries += hits[rid][-1][0]
                    hit = max((length for length, key in hits[rid] if key in cached), default=0)
                    start = min(hit, seq - 1)
                need = seq - start
                if not settings.enable_chunked_prefill and need > budget:
                    break
                ntok = need if need <= budget else budget
                new_blocks = -(-(start + ntok) // BLOCK_SIZE)
                if new_blocks > free_blocks:
                    break
                if start:
                    prefix_hits += start
                waiting.popleft()
                running.append(rid)
                computed[rid] = start
                free_blocks -= new_blocks
                blocks[rid] = new_blocks
                sched_ids.append(rid)
                sched_tokens.append(ntok)
                budget -= ntok
                attn_pairs += ntok * (start + (ntok + 1) / 2)
                if ntok == need:
                    num_sampled += 1

        if not sched_ids:
            raise RuntimeError("scheduler made no progress")  # startup checks rule this out
        num_tokens = budget_cap - budget
        last_step = step_time(
            num_tokens, num_sampled, attn_pairs, decode_ctx, jitter_steps[steps % n_jitter]
        )
        now += last_step
        steps += 1
        batch_tokens += num_tokens
        peak_used = max(peak_used, total_blocks - free_blocks)

        # --- apply the step: advance computed tokens, emit tokens, retire finished requests
        done_any = False
        for rid, ntok in zip(sched_ids, sched_tokens, strict=True):
            computed[rid] += ntok
            if computed[rid] == prompt[rid] + generated[rid]:
                generated[rid] += 1
                token_times[rid].append(now)
                if computed[rid] >= pub_at[rid]:
                    pub_at[rid] = _publish(pubs[rid], computed[rid], cached)
                if generated[rid] == target[rid]:
                    free_blocks += blocks[rid]
                    blocks[rid] = 0
                    finished += 1 + end_session(rid, now)
                    done_any = True
        if done_any:
            running = [r for r in running if generated[r] < target[r]]

    timed_out = finished < n
    records = []
    for rid in range(n):
        error = errors[rid]
        if error is None and generated[rid] < target[rid]:
            error = "timeout: request unfinished when the load phase ended"
        records.append(
            RequestRecord(
                request_id=rid,
                prompt_len=prompt[rid],
                target_output_len=target[rid],
                scheduled_time=due[rid],
                send_time=send[rid],
                token_times=np.asarray(token_times[rid]) if error is None else np.empty(0),
                error=error,
            )
        )
    first_send = min((r.send_time for r in records), default=0.0)
    return EngineRun(
        records=records,
        duration_s=max(now - first_send, 0.0),
        timed_out=timed_out,
        num_steps=steps,
        num_preemptions=preemptions,
        peak_kv_usage=peak_used / total_blocks if total_blocks else 0.0,
        mean_batch_tokens=batch_tokens / steps if steps else 0.0,
        prefix_cache_hit_rate=prefix_hits / prefix_queries if prefix_queries else 0.0,
    )


def _prefix_keys(
    workload: Workload,
) -> tuple[list[list[tuple[int, int]]], list[list[tuple[int, int]]]]:
    """Per request, the cached prefixes it may reuse and those it puts in the cache.

    Each is a list of (tokens, key), shortest first. A group's shared prefix is key ``group``;
    the prompt of a round that another round follows is key ``-1 - index`` (whole blocks only).
    """
    prefix = (workload.shared_prefix_len // BLOCK_SIZE) * BLOCK_SIZE
    groups = workload.prefix_groups.tolist()
    follows = workload.follows.tolist() if workload.follows is not None else [-1] * len(workload)
    chained = {f for f in follows if f >= 0}
    whole = [(p // BLOCK_SIZE) * BLOCK_SIZE for p in workload.prompt_lens.tolist()]
    hits: list[list[tuple[int, int]]] = []
    pubs: list[list[tuple[int, int]]] = []
    for rid, group in enumerate(groups):
        shared = [(prefix, group)] if group >= 0 and prefix else []
        before = follows[rid]
        hits.append(sorted(shared + ([(whole[before], -1 - before)] if before >= 0 else [])))
        own = [(whole[rid], -1 - rid)] if rid in chained and whole[rid] else []
        pubs.append(sorted(shared + own))
    return hits, pubs


def _publish(pubs: list[tuple[int, int]], computed: int, cached: set[int]) -> float:
    """Cache every prefix of ``pubs`` that ``computed`` tokens cover; the next threshold."""
    for length, key in pubs:
        if length > computed:
            return length
        cached.add(key)
    return math.inf


def _step_by_step(
    step_time: Callable[[int, int, float, int, float], float],
) -> Callable[[int, np.ndarray, np.ndarray], np.ndarray]:
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
    """Per-step multiplicative noise, lognormal with median 1 (ones when ``sigma`` is 0)."""
    if sigma <= 0:
        return np.ones(1)
    return np.exp(rng.normal(0.0, sigma, size) - 0.5 * sigma * sigma)
