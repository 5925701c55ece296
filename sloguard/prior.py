"""The calibrated simulator as a prior for a real study (a cheap first fidelity).

With ``prior=sim`` a study first runs ``prior.trials`` trials of its own optimizer on the
simulator, with the study's model, hardware (the config ``sloguard calibrate`` fitted),
workload, SLO and space. The real study then starts with the simulated study's
``prior.top_k`` best feasible configurations and primes its optimizer with every simulated
trial (:meth:`~sloguard.optimizer.BaseOptimizer.prime`: TBA's feasibility surrogate learns
where the simulator crashed or missed the SLO). The simulated study is seeded by the study's
seed, so every worker of a study, and a resumed study, computes the same prior.
"""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from omegaconf import OmegaConf, open_dict

from sloguard.config import CONF_DIR, PRIORS, BackendConfig
from sloguard.evaluation import TrialStep, slo_from_config
from sloguard.optimizer import BaseOptimizer, WarmStart, create_optimizer
from sloguard.space import SearchSpace

__all__ = ["PRIORS", "Prior", "simulate_prior"]

if TYPE_CHECKING:
    from omegaconf import DictConfig

    from sloguard.result import TrialRecord


@dataclass(frozen=True)
class Prior:
    """A simulated study's trials and its best feasible configurations (best first)."""

    records: tuple[TrialRecord, ...]
    top: tuple[dict[str, Any], ...]
    seconds: float

    def warm_start(self, optimizer: BaseOptimizer) -> WarmStart:
        """``optimizer`` primed with the simulated trials, the top configurations first."""
        history = [(r.params, r.result) for r in self.records]
        return WarmStart(optimizer, self.top, history)

    def describe(self) -> str:
        """One line for the study's output."""
        feasible = sum(1 for r in self.records if r.result.feasible)
        return (
            f"prior: {len(self.records)} simulated trials in {self.seconds:.1f} s, "
            f"{feasible} feasible; the real study starts with its best {len(self.top)}"
        )


def simulate_prior(cfg: DictConfig) -> Prior | None:
    """Run the simulated study that ``cfg.prior`` asks for (``None`` for ``prior=none``)."""
    if cfg.prior.name == "none":
        return None
    sim_cfg = _on_simulator(cfg)
    space = SearchSpace.from_config(sim_cfg.space)
    step = TrialStep.from_config(sim_cfg, space, slo_from_config(sim_cfg))
    optimizer = create_optimizer(sim_cfg.optimizer, space, sim_cfg.seed, cfg.prior.trials)
    start = time.perf_counter()
    records = step.run_untracked(optimizer, cfg.prior.trials)
    return Prior(tuple(records), _top(records, cfg.prior.top_k), time.perf_counter() - start)


def _on_simulator(cfg: DictConfig) -> DictConfig:
    """``cfg`` with the ``sim`` backend in place of the study's (its speculation settings kept:
    they say how often the real server's drafts are accepted)."""
    sim = OmegaConf.merge(
        OmegaConf.structured(BackendConfig), OmegaConf.load(CONF_DIR / "backend" / "sim.yaml")
    )
    sim.spec_decode = copy.deepcopy(cfg.backend.spec_decode)
    sim_cfg = copy.deepcopy(cfg)
    with open_dict(sim_cfg):
        sim_cfg.backend = sim
    return sim_cfg


def _top(records: list[TrialRecord], k: int) -> tuple[dict[str, Any], ...]:
    """The ``k`` best distinct feasible configurations, best first (earliest on ties)."""
    feasible = [r for r in records if r.result.feasible and r.result.utility is not None]
    feasible.sort(key=lambda r: (-(r.result.utility or 0.0), r.number))
    top: list[dict[str, Any]] = []
    for record in feasible:
        if record.params not in top:
            top.append(record.params)
    return tuple(top[:k])
