"""The trial step of a benchmark problem (config overrides), built once per process."""

from __future__ import annotations

from functools import cache

from sloguard.evaluation import TrialStep, slo_from_config
from sloguard.space import SearchSpace
from sloguard.tune import compose_config


@cache
def trial_step(overrides: tuple[str, ...], noise: bool) -> TrialStep:
    """The problem's trial step, with the backend's noise or noise-free (callers must not mutate
    it; ``dataclasses.replace`` gives a copy with another seed)."""
    cfg = compose_config([*overrides, "progress=false"] + ([] if noise else ["backend.noise=0"]))
    space = SearchSpace.from_config(cfg.space)
    return TrialStep.from_config(cfg, space, slo_from_config(cfg))
