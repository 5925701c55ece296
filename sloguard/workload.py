"""Workloads: request lengths and arrival processes, seeded so every trial serves the same.

The same :class:`Workload` drives the simulator and the real load generator, so a configuration
is judged on identical requests by both backends.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from omegaconf import DictConfig

ARRIVALS: tuple[str, ...] = ("closed", "poisson", "gamma")
LENGTH_DISTS: tuple[str, ...] = ("fixed", "uniform", "lognormal")


@dataclass(frozen=True)
class Workload:
    """A fixed request sequence.

    Args:
        prompt_lens: Prompt tokens per request.
        output_lens: Output tokens per request (sent as ``max_tokens`` with ``ignore_eos``).
        arrival_times: When each request is due, seconds from the start (all 0 for a closed
            loop). A request is sent at its due time or, with a cap, when a slot frees.
        concurrency: In-flight cap (a closed loop is all-due-at-0 with a cap); 0 is uncapped.
        prefix_groups: Shared-prefix group per request (-1 for none).
        shared_prefix_len: Tokens of the prefix shared inside a group.
    """

    prompt_lens: np.ndarray
    output_lens: np.ndarray
    arrival_times: np.ndarray
    concurrency: int
    prefix_groups: np.ndarray
    shared_prefix_len: int = 0

    def __len__(self) -> int:
        return len(self.prompt_lens)


def sample_lengths(cfg: DictConfig, n: int, rng: np.random.Generator) -> np.ndarray:
    """Draw ``n`` token lengths from a ``LengthConfig`` and clip them to ``[low, high]``."""
    if cfg.dist == "fixed":
        values = np.full(n, cfg.mean)
    elif cfg.dist == "uniform":
        values = rng.uniform(cfg.low, cfg.high, n)
    elif cfg.dist == "lognormal":
        median = cfg.median if cfg.median is not None else cfg.mean / 1.25
        sigma = math.sqrt(2.0 * math.log(max(cfg.mean / median, 1.0 + 1e-9)))
        values = rng.lognormal(math.log(median), sigma, n)
    else:
        raise ValueError(f"length dist {cfg.dist!r} is not one of {', '.join(LENGTH_DISTS)}")
    return np.clip(np.rint(values), cfg.low, cfg.high).astype(np.int64)


def arrival_times(
    kind: str,
    n: int,
    rate: float,
    burstiness: float,
    rng: np.random.Generator,
    ramp_up: tuple[int, float] = (0, 0.0),
) -> np.ndarray:
    """Due times as vllm bench serve draws them; zero for a closed loop.

    Gaps are gamma(shape=burstiness, scale=1/(rate*burstiness)): burstiness 1 is Poisson, lower
    is burstier at the same mean rate. A closed loop may ramp up: its first ``ramp_up[0]``
    requests are spread evenly over ``ramp_up[1]`` seconds instead of all starting at once.
    """
    if kind == "closed":
        due = np.zeros(n)
        count, seconds = ramp_up
        if count > 1 and seconds > 0:
            head = min(count, n)
            due[:head] = np.arange(head) * (seconds / head)
            due[head:] = due[head - 1]
        return due
    shape = 1.0 if kind == "poisson" else burstiness
    gaps = rng.gamma(shape, 1.0 / (rate * shape), n)
    gaps[0] = 0.0
    return np.cumsum(gaps)


def build_workload(cfg: DictConfig) -> Workload:
    """Materialise a ``WorkloadConfig`` into its request sequence (deterministic in its seed)."""
    rng = np.random.default_rng(cfg.seed)
    n = int(cfg.num_requests)
    prompts = sample_lengths(cfg.prompt_len, n, rng)
    outputs = sample_lengths(cfg.output_len, n, rng)
    arrivals = arrival_times(
        cfg.arrival,
        n,
        cfg.request_rate,
        cfg.burstiness,
        rng,
        ramp_up=(int(cfg.concurrency), float(cfg.ramp_up_s)),
    )
    groups = (
        rng.integers(0, cfg.num_prefix_groups, n) if cfg.num_prefix_groups > 0 else np.full(n, -1)
    )
    prefix = int(cfg.shared_prefix_len) if cfg.num_prefix_groups > 0 else 0
    if prefix:
        prompts = np.maximum(prompts, prefix + 1)
    return Workload(prompts, outputs, arrivals, max(int(cfg.concurrency), 0), groups, prefix)
