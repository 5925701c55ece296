"""Capacity: the highest request rate at which a configuration meets the attainment target.

DistServe and SLOs-Serve rank serving systems by it: the rate at which at least 90% of requests
(a configurable target) meet their SLOs. One configuration's capacity is searched on one server
launch: from the workload's own rate, double or halve the rate until a passing and a failing
rate bracket the capacity, then bisect the bracket geometrically. Halving stops early when a
lower rate does not raise the attainment although the server kept up with the higher one: the
shortfall then is not the load's doing (requests longer than ``max_model_len``, SLOs the hardware
cannot meet even alone). No rate is tried whose
arrivals alone would outlast half the load-phase limit. Every probe serves the same requests with
arrivals rescaled (:meth:`~sloguard.workload.Workload.at_rate`), so the shape of
the arrivals (Poisson, bursty, a trace) is kept.

A probe stops early (``stop_early``) once it certainly fails and its exact attainment cannot
change what the search does next or reports: once some rate has passed (only pass or fail
matters then), or once it has certainly not kept up with its arrivals (the halving rule reads
only loads that kept up). A probe at the lowest rate allowed runs to its end, so a configuration
that passes nowhere is reported by a load that ran in full. The capacity found is the same as
without stopping; an overloaded probe stops instead of draining its backlog.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, NamedTuple

from sloguard.crash_classifier import CrashCategory
from sloguard.early_abort import ATTAINMENT_MAX
from sloguard.result import TrialResult

if TYPE_CHECKING:
    from omegaconf import DictConfig

    from sloguard.workload import Workload

_FLAT = 0.005  # halving the rate raised attainment by no more than this: load is not the cause
_KEPT_UP = 1.5  # a load that ended within this factor of its arrival span was kept up with


class Probe(NamedTuple):
    """One load of the search: its rate, its attainment, whether the server kept up with it,
    and whether it stopped early (its attainment is then that of the requests ended by then)."""

    rate: float
    attainment: float
    kept_up: bool = False
    stopped: bool = False


@dataclass(frozen=True)
class CapacitySearch:
    """Where to look for the capacity and when to stop.

    Args:
        start_rps: The first rate tried (the workload's own).
        min_rps: No rate below this is tried; failing here means no capacity.
        max_rps: No rate above this is tried; passing here reports it as the capacity.
        rel_tol: Stop once the failing rate is within this factor of the passing one.
        max_probes: Stop after this many loads.
        target: Share of requests that must meet their SLOs for a rate to pass.
        stop_early: Stop a load once its failure is certain and cannot change the search.
        serve_rps: A rate to serve with copies of the configuration (``objective=
            gpus_for_rate``): the search then bisects over the rates at which one more or one
            fewer copy serves it, so the copies needed come out exact, and never probes above
            it.
    """

    start_rps: float
    min_rps: float = 0.05
    max_rps: float = 1000.0
    rel_tol: float = 0.05
    max_probes: int = 10
    target: float = 0.9
    stop_early: bool = True
    serve_rps: float | None = None

    @classmethod
    def from_config(cls, cfg: DictConfig, workload: Workload) -> CapacitySearch:
        """The search of the ``capacity`` config group, from the workload's own rate.

        That is its configured rate for drawn arrivals, a trace's mean rate for a trace.
        """
        cap = cfg.capacity
        spread = workload.num_first / (0.5 * cfg.backend.timeout_s)  # slowest rate that can end
        drawn = cfg.workload.arrival in ("poisson", "gamma")
        serve = cap.target_rps if cfg.objective == "gpus_for_rate" else None
        top = cap.max_rps if serve is None else min(cap.max_rps, serve)  # one server is enough
        return cls(
            start_rps=cfg.workload.request_rate if drawn else workload.offered_rate(),
            min_rps=min(max(cap.min_rps, spread), top),
            max_rps=top,
            rel_tol=cap.rel_tol,
            max_probes=cap.max_probes,
            target=cfg.slo.attainment_target,
            stop_early=cap.stop_early,
            serve_rps=serve,
        )

    def next_rate(self, probes: Sequence[Probe]) -> float | None:
        """The next rate to try given the probes so far; ``None`` when the search is done."""
        if not probes:
            return min(max(self.start_rps, self.min_rps), self.max_rps)
        if len(probes) >= self.max_probes:
            return None
        low = max((p.rate for p in probes if self._passed(p)), default=None)
        if low is None:
            lowest, *rest = sorted(probes)
            flat = (
                bool(rest)
                and rest[0].kept_up
                and not lowest.stopped
                and lowest.attainment <= rest[0].attainment + _FLAT
            )
            if flat or lowest.rate <= self.min_rps:
                return None
            return max(lowest.rate / 2.0, self.min_rps)
        failed = [p.rate for p in probes if not self._passed(p) and p.rate > low]
        high = min(failed, default=None)
        if high is None:
            return None if low >= self.max_rps else min(low * 2.0, self.max_rps)
        if self.serve_rps is not None:
            return _copies_threshold(self.serve_rps, low, high)
        return None if high <= low * (1.0 + self.rel_tol) else math.sqrt(low * high)

    def passes(self, share: float) -> bool:
        """Whether an attainment meets the target."""
        return share >= self.target - 1e-12

    def _passed(self, probe: Probe) -> bool:
        """Whether a load passed (one that stopped early failed)."""
        return not probe.stopped and self.passes(probe.attainment)

    def stop_after(self, probes: Sequence[Probe], rate: float, workload: Workload) -> float | None:
        """When a load at ``rate`` may stop once it certainly fails (seconds after its first
        send): at once after a pass; else once it has certainly not kept up with its arrivals.
        ``None`` (it runs to its end) without ``stop_early`` and at the lowest rate allowed."""
        if not self.stop_early or rate <= self.min_rps:
            return None
        if any(self._passed(p) for p in probes):
            return 0.0
        return _KEPT_UP * _span(workload, rate)


def copies_needed(serve_rps: float, capacity: float) -> int:
    """Copies of a server with ``capacity`` that together serve ``serve_rps`` (each taking an
    equal share of the arrivals); a rate probed at exactly ``serve_rps / k`` needs ``k``."""
    return math.ceil(serve_rps / capacity * (1.0 - 1e-12))


def _copies_threshold(serve_rps: float, low: float, high: float) -> float | None:
    """The rate ``serve_rps / k`` strictly between a passing ``low`` and a failing ``high``
    nearest their geometric middle; ``None`` when there is none (the copies are then known)."""
    middle = math.sqrt(low * high)
    ideal = serve_rps / middle
    near = {math.floor(ideal), math.ceil(ideal)}
    ends = {math.floor(serve_rps / high) + 1, math.ceil(serve_rps / low) - 1}
    inside = [
        k for k in near | ends if k >= 1 and low * (1 + 1e-9) < serve_rps / k < high * (1 - 1e-9)
    ]
    if not inside:
        return None
    return serve_rps / min(inside, key=lambda k: abs(math.log(serve_rps / k / middle)))


def attainment(result: TrialResult) -> float:
    """A probe's attainment; 0 when it crashed; the most it could have reached when it stopped
    early."""
    if result.crash is not None:
        return 0.0
    if result.aborted_early is not None and ATTAINMENT_MAX in result.metrics:
        return result.metrics[ATTAINMENT_MAX]
    return result.metrics.get("attainment", 0.0)


def probe(rate: float, workload: Workload, result: TrialResult) -> Probe:
    """What the search needs of one load's result at ``rate``."""
    duration = result.metrics.get("duration_s", math.inf)
    stopped = result.aborted_early is not None
    kept_up = result.crash is None and not stopped and duration <= _KEPT_UP * _span(workload, rate)
    return Probe(rate, attainment(result), kept_up, stopped)


def _span(workload: Workload, rate: float) -> float:
    """Seconds from the first arrival to the last at ``rate``."""
    return (workload.num_first - 1) / rate


def search_capacity(
    search: CapacitySearch,
    workload: Workload,
    serve: Callable[[Callable[[list[TrialResult]], Workload | None]], list[TrialResult]],
) -> TrialResult:
    """Run the search through ``serve`` and fold its probes into one trial result.

    Args:
        search: Where to look and when to stop.
        workload: The requests; each probe rescales their arrivals.
        serve: Serves loads chosen one by one from the results so far (a backend's
            ``evaluate_adaptive`` bound to a configuration).

    Returns:
        The result of the highest passing rate (the best attainment when none passed) with
        ``capacity_rps``, ``capacity_probes`` and each probe's rate and attainment added to its
        metrics. The trial is feasible when some rate passed, and its utility is the capacity;
        otherwise the utility is minus the attainment shortfall. A crash other than a load
        timeout (which only means the rate was too high) makes the trial a crash.
    """
    rates: list[float] = []

    def next_workload(results: list[TrialResult]) -> Workload | None:
        probes = [probe(r, workload, res) for r, res in zip(rates, results, strict=True)]
        rate = search.next_rate(probes)
        if rate is None or (results and _fatal(results[-1])):
            return None
        rates.append(rate)
        after = search.stop_after(probes, rate, workload)
        return dataclasses.replace(workload.at_rate(rate), stop_lost_after_s=after)

    results = serve(next_workload)
    if len(results) > len(rates):  # the server failed before it asked for a load (startup)
        failed = results[-1]
        failed.metrics.update(capacity_rps=0.0, capacity_probes=0.0)
        return failed
    probes = list(zip(rates, results, strict=True))
    fatal = next((res for _, res in probes if _fatal(res)), None)
    ran = [(rate, res) for rate, res in probes if res.aborted_early is None]
    passed = [(rate, res) for rate, res in ran if search.passes(attainment(res))]
    best = max(ran or probes, key=lambda p: (attainment(p[1]), -p[0]))
    rate, chosen = max(passed, key=lambda p: p[0]) if passed else best
    capacity = rate if passed else 0.0
    metrics = dict(chosen.metrics)
    metrics.update(capacity_rps=capacity, capacity_probes=float(len(probes)))
    for i, (r, res) in enumerate(probes):
        metrics[f"capacity/probe_{i}/rate_rps"] = r
        metrics[f"capacity/probe_{i}/attainment"] = attainment(res)
        if res.aborted_early is not None:
            metrics[f"capacity/probe_{i}/stopped_early"] = 1.0
    result = TrialResult(
        config=chosen.config,
        metrics=metrics,
        server=chosen.server,
        requests=chosen.requests,
        server_log=chosen.server_log,
    )
    if fatal is not None:
        result.crash = fatal.crash
    elif passed:
        result.feasible, result.utility = True, capacity
    else:
        result.utility = -(search.target - metrics.get("attainment", 0.0))
    return result


def per_gpu(result: TrialResult, gpus: int) -> TrialResult:
    """A capacity search's result scored per GPU (``objective=capacity_per_gpu``).

    Adds ``gpus`` and ``capacity_per_gpu_rps`` to its metrics; a feasible trial's utility
    becomes its capacity divided by its GPUs (an infeasible one keeps its attainment shortfall).
    """
    capacity = result.metrics.get("capacity_rps", 0.0)
    result.metrics.update(gpus=float(gpus), capacity_per_gpu_rps=capacity / gpus)
    if result.feasible:
        result.utility = capacity / gpus
    return result


def gpus_for_rate(result: TrialResult, gpus: int, target_rps: float) -> TrialResult:
    """A capacity search's result scored by the GPUs that serving ``target_rps`` takes
    (``objective=gpus_for_rate``): replicas of the configuration, each on ``gpus`` GPUs, enough
    that their capacities add up to the target.

    Adds ``gpus``, ``replicas_needed``, ``gpus_needed`` and ``target_per_gpu_rps`` (the target
    over the GPUs needed) to its metrics. A feasible trial's utility is that last figure, so
    fewer GPUs score higher and configurations needing as many tie; an infeasible one (no rate
    passed) keeps its attainment shortfall and needs no finite number of GPUs.
    """
    capacity = result.metrics.get("capacity_rps", 0.0)
    result.metrics["gpus"] = float(gpus)
    if capacity <= 0:
        result.metrics["target_per_gpu_rps"] = 0.0
        return result
    replicas = copies_needed(target_rps, capacity)
    needed = gpus * replicas
    result.metrics.update(
        replicas_needed=float(replicas),
        gpus_needed=float(needed),
        target_per_gpu_rps=target_rps / needed,
    )
    if result.feasible:
        result.utility = target_rps / needed
    return result


def _fatal(result: TrialResult) -> bool:
    """A crash that ends the search: anything but a load that timed out or hung (overload)."""
    crash = result.crash
    overload = (
        crash is not None and crash.category is CrashCategory.TIMEOUT and crash.phase == "load"
    )
    return crash is not None and not overload
