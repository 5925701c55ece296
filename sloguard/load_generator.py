"""Drive a workload against an OpenAI-compatible server and record what every request saw.

Requests go to ``/v1/completions`` with ``stream: true``; prompts are token-id lists of the
workload's exact lengths and ``max_tokens`` with ``ignore_eos`` fixes output lengths, so the real
server serves the same request sequence the simulator does. Each request is sent at its due time
(open loop: Poisson or gamma arrivals as the workload drew them) or, under a concurrency cap,
when a slot frees (closed loop). Every streamed chunk is timestamped. A multi-round request (tool
calling) sends each later round once the round before has ended and the tool's latency passed;
its prompt is the previous round's prompt, then tokens standing for that round's output and the
tool's result, so the server's prefix cache can reuse the previous prompt as the simulator
assumes. The session holds its concurrency slot through all its rounds.

A request that fails (HTTP error, connection reset, a stream that stops producing tokens for
``stall_timeout_s``, a stream cut before ``[DONE]``, fewer tokens than asked) is recorded with
its error and is never good.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import json
import time
from collections.abc import AsyncIterator, Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import numpy as np

from sloguard.result import ABORT_ERROR, RequestRecord, unsent_round_error
from sloguard.workload import Workload, rounds_after

TIMEOUT_ERROR = "timeout"  # prefix of errors of requests cut by the load-phase limit
HUNG_ERROR = "hung"  # prefix of errors of streams that stopped producing tokens
_FIRST_ID = 16  # token ids below this are left alone (special tokens sit low in small vocabs)


@dataclass(frozen=True)
class LoadSettings:
    """Where and how to send a workload.

    Args:
        base_url: Server root, e.g. ``http://127.0.0.1:8000``.
        model: The served model name.
        vocab_size: Prompt token ids are drawn below this.
        seed: Seeds the prompt token ids (the same seed gives the same prompts).
        stall_timeout_s: A stream with no data for this long is hung.
        load_timeout_s: The whole load phase's limit; unfinished requests then fail.
        connect_timeout_s: Limit for opening a connection.
        abort_check_s: How often an early-abort rule is asked during the load.
        api_key: Sent as a bearer token where the server requires one (never shown in repr).
        priority: Send each request's priority (:meth:`~sloguard.workload.Workload.priorities`;
            for a server launched with ``--scheduling-policy priority``).
    """

    base_url: str
    model: str
    vocab_size: int
    seed: int = 0
    stall_timeout_s: float = 60.0
    load_timeout_s: float = 600.0
    connect_timeout_s: float = 10.0
    abort_check_s: float = 0.25
    api_key: str | None = field(default=None, repr=False)
    priority: bool = False

    @property
    def headers(self) -> dict[str, str]:
        """What every request to the server carries (its API key, where one is set)."""
        return {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}

    @property
    def completions_url(self) -> str:
        return f"{self.base_url.rstrip('/')}/v1/completions"


@dataclass
class LoadResult:
    """The records of one load phase.

    Args:
        records: One per workload request, in workload order.
        duration_s: First send to last token (the benchmark duration).
        timed_out: The load-phase limit cut some requests.
        aborted: Why the load was stopped early (its SLO verdict was certain), or ``None``.
    """

    records: list[RequestRecord]
    duration_s: float
    timed_out: bool = False
    aborted: str | None = None

    @property
    def finished(self) -> list[RequestRecord]:
        """The records an early abort did not cut short (all of them without one)."""
        return [r for r in self.records if not (r.error or "").startswith(ABORT_ERROR)]

    @property
    def errors(self) -> list[str]:
        return [r.error for r in self.records if r.error]

    @property
    def schedule_lag_s(self) -> np.ndarray:
        """How late each sent request left against its due time (closed loop: slot wait too)."""
        return np.array([r.send_time - r.scheduled_time for r in self.records if r.send_time >= 0])


def build_prompts(workload: Workload, vocab_size: int, seed: int) -> list[list[int]]:
    """Token-id prompts of the workload's lengths.

    Requests of a prefix group share a prefix; a later round starts with the prompt of the
    round it follows.
    """
    if vocab_size <= _FIRST_ID + 1:
        raise ValueError(f"vocab_size={vocab_size} is too small; it must be > {_FIRST_ID + 1}")
    rng = np.random.default_rng([seed, 7])
    groups = sorted({int(g) for g in workload.prefix_groups if g >= 0})
    prefixes = {
        g: rng.integers(_FIRST_ID, vocab_size, workload.shared_prefix_len).tolist() for g in groups
    }
    follows = workload.follows if workload.follows is not None else np.full(len(workload), -1)
    prompts: list[list[int]] = []
    for length, group, before in zip(
        workload.prompt_lens, workload.prefix_groups, follows, strict=True
    ):
        head = prompts[before] if before >= 0 else prefixes.get(int(group), [])
        head = head[: int(length)]
        tail = rng.integers(_FIRST_ID, vocab_size, int(length) - len(head)).tolist()
        prompts.append(head + tail)
    return prompts


def request_payload(
    model: str, prompt: list[int], max_tokens: int, priority: int | None = None
) -> dict[str, Any]:
    """The /v1/completions body of one streamed request with a fixed output length (and a
    scheduling priority: lower is served first)."""
    payload = {
        "model": model,
        "prompt": prompt,
        "max_tokens": max_tokens,
        "ignore_eos": True,
        "stream": True,
        "stream_options": {"include_usage": True},
        "temperature": 0.0,
    }
    if priority is not None:
        payload["priority"] = priority
    return payload


def run_load(workload: Workload, settings: LoadSettings) -> LoadResult:
    """Send ``workload`` to the server and return its records (blocking)."""
    return asyncio.run(generate(workload, settings))


async def generate(
    workload: Workload,
    settings: LoadSettings,
    *,
    monitor: Callable[[], Coroutine[Any, Any, None]] | None = None,
    abort: Callable[[list[RequestRecord]], str | None] | None = None,
) -> LoadResult:
    """Send ``workload`` to the server; ``monitor`` runs beside the load and is then cancelled.

    ``abort`` is asked every ``settings.abort_check_s`` while the load runs; once it gives a
    reason, the load stops: requests in flight or unsent fail as ``aborted`` and the duration
    ends at the last completion.
    """
    prompts = build_prompts(workload, settings.vocab_size, settings.seed)
    n = len(workload)
    records = [
        RequestRecord(i, int(workload.prompt_lens[i]), int(workload.output_lens[i]), 0.0, -1.0)
        for i in range(n)
    ]
    for record, due in zip(records, workload.arrival_times, strict=True):
        record.scheduled_time = float(due)
    timeout = aiohttp.ClientTimeout(
        total=None, sock_connect=settings.connect_timeout_s, sock_read=settings.stall_timeout_s
    )
    connector = aiohttp.TCPConnector(limit=workload.concurrency or 0, force_close=False)
    slots = asyncio.Semaphore(workload.concurrency) if workload.concurrency else None
    monitor_task = asyncio.ensure_future(monitor()) if monitor else None
    async with (
        aiohttp.ClientSession(timeout=timeout, connector=connector) as session,
        _frozen_heap(),
    ):
        t0 = time.perf_counter()
        sender = _Sender(
            session, settings, t0, workload.priorities() if settings.priority else None
        )
        tasks: list[asyncio.Task[None]] = []
        next_round = workload.next_rounds().tolist()

        async def run_session(rid: int) -> None:
            """Send request ``rid`` and the rounds that follow it, then free the slot."""
            try:
                while True:
                    await sender.send(records[rid], prompts[rid])
                    nxt = next_round[rid]
                    if nxt < 0:
                        return
                    if records[rid].error is not None:
                        for unsent in rounds_after(next_round, rid):
                            records[unsent].error = unsent_round_error(rid)
                        return
                    records[nxt].scheduled_time = records[rid].token_times[-1] + float(
                        workload.arrival_times[nxt]
                    )
                    delay = records[nxt].scheduled_time - (time.perf_counter() - t0)
                    if delay > 0:
                        await asyncio.sleep(delay)
                    rid = nxt
            finally:
                if slots is not None:
                    slots.release()

        async def dispatch() -> None:
            for record in records[: workload.num_first]:
                delay = record.scheduled_time - (time.perf_counter() - t0)
                if delay > 0:
                    await asyncio.sleep(delay)
                if slots is not None:
                    await slots.acquire()
                tasks.append(asyncio.ensure_future(run_session(record.request_id)))
            if tasks:
                await asyncio.wait(tasks)

        timed_out, aborted = False, None

        async def watch() -> str:
            assert abort is not None
            while (reason := abort(records)) is None:
                await asyncio.sleep(settings.abort_check_s)
            return reason

        load = asyncio.ensure_future(asyncio.wait_for(dispatch(), settings.load_timeout_s))
        running = [load] + ([asyncio.ensure_future(watch())] if abort is not None else [])
        try:
            await asyncio.wait(running, return_when=asyncio.FIRST_COMPLETED)
            if load.done():
                load.result()
            else:
                aborted = running[1].result()
        except asyncio.TimeoutError:
            timed_out = True
        finally:
            for task in (*tasks, *running):
                task.cancel()
            await asyncio.gather(*tasks, *running, return_exceptions=True)
            if monitor_task is not None:
                monitor_task.cancel()
                await asyncio.gather(monitor_task, return_exceptions=True)
    for record in records:
        if record.error is None and not record.success:
            sent = record.send_time >= 0
            if aborted is not None:
                record.error = f"{ABORT_ERROR}: {'unfinished' if sent else 'not sent'}"
            else:
                record.error = (
                    f"{TIMEOUT_ERROR}: {'unfinished' if sent else 'not sent'} after "
                    f"{settings.load_timeout_s:g} s of load"
                )
    return LoadResult(records, _duration(records), timed_out, aborted)


@contextlib.asynccontextmanager
async def _frozen_heap() -> AsyncIterator[None]:
    """Keep collections to objects made during the load (``gc.freeze``), then unfreeze.

    A tuner process holds a large heap (MLflow, Hydra, pandas); full collections over it stall
    the event loop for tens of milliseconds, which shows up as arrival-schedule lag.
    """
    gc.freeze()
    try:
        yield
    finally:
        gc.unfreeze()


def _duration(records: list[RequestRecord]) -> float:
    sends = [r.send_time for r in records if r.send_time >= 0]
    ends = [r.token_times[-1] for r in records if r.success]
    return max(ends) - min(sends) if sends and ends else 0.0


class _Sender:
    """Sends one request and fills in its record (times relative to ``t0``)."""

    def __init__(
        self,
        session: aiohttp.ClientSession,
        settings: LoadSettings,
        t0: float,
        priorities: list[int] | None = None,
    ) -> None:
        self.session = session
        self.settings = settings
        self.t0 = t0
        self.priorities = priorities

    async def send(self, record: RequestRecord, prompt: list[int]) -> None:
        times: list[float] = []
        try:
            record.error = await self._stream(record, prompt, times)
        except asyncio.CancelledError:
            raise
        except asyncio.TimeoutError:
            record.error = (
                f"{HUNG_ERROR}: no data for {self.settings.stall_timeout_s:g} s "
                f"after {len(times)} tokens"
            )
        except aiohttp.ClientConnectorError as e:
            record.error = f"connect: {e}"
        except (aiohttp.ClientError, ConnectionError) as e:
            record.error = f"reset: {type(e).__name__}: {e}"
        if record.error is not None:
            record.token_times = np.empty(0)

    async def _stream(
        self, record: RequestRecord, prompt: list[int], times: list[float]
    ) -> str | None:
        priority = None if self.priorities is None else self.priorities[record.request_id]
        payload = request_payload(self.settings.model, prompt, record.target_output_len, priority)
        clock, t0 = time.perf_counter, self.t0
        usage_tokens = -1
        record.send_time = clock() - t0
        async with self.session.post(
            self.settings.completions_url,
            json=payload,
            headers={**self.settings.headers, "X-Request-Id": f"sloguard-{record.request_id}"},
        ) as resp:
            if resp.status != 200:
                body = (await resp.text())[:300].replace("\n", " ")
                return f"http {resp.status}: {body}"
            done = False
            async for line in resp.content:
                if not line.startswith(b"data: "):
                    continue
                data = line[6:].strip()
                if data == b"[DONE]":
                    done = True
                    break
                now = clock() - t0
                if b'"usage"' not in data and b'"error"' not in data:
                    times.append(now)  # a token chunk: no need to parse it
                    continue
                chunk = json.loads(data)  # JSON-escaped text can't fake these keys
                if "error" in chunk:
                    return f"stream error: {str(chunk['error'])[:300]}"
                if chunk.get("choices"):
                    times.append(now)
                if chunk.get("usage"):
                    usage_tokens = int(chunk["usage"].get("completion_tokens", -1))
        if not done:
            return f"reset: stream ended before [DONE] after {len(times)} tokens"
        produced = usage_tokens if usage_tokens >= 0 else len(times)
        if produced > len(times) and times:  # several tokens in one chunk arrived together
            times.extend([times[-1]] * (produced - len(times)))
        record.token_times = np.asarray(times[:produced])
        if produced < record.target_output_len:
            return f"short: {produced} of {record.target_output_len} tokens"
        return None
