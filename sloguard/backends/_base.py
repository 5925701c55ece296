"""The Backend extension point: evaluate one configuration on one workload."""

from __future__ import annotations

import abc
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

from omegaconf import OmegaConf

from sloguard.config import BackendConfig, HardwareConfig, ModelConfig
from sloguard.result import TrialResult

T = TypeVar("T")

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence
    from pathlib import Path

    from omegaconf import DictConfig

    from sloguard.slo_contract import SloContract
    from sloguard.workload import Workload


@dataclass(frozen=True)
class BackendSettings:
    """All a backend reads, typed: the model, the hardware and its own section."""

    model: ModelConfig
    hardware: HardwareConfig
    backend: BackendConfig

    @classmethod
    def of(cls, cfg: DictConfig) -> BackendSettings:
        """The sections of a composed root configuration, as their dataclasses."""
        return cls(
            model=_typed(ModelConfig, cfg.model),
            hardware=_typed(HardwareConfig, cfg.hardware),
            backend=_typed(BackendConfig, cfg.backend),
        )


def _typed(kind: type[T], section: Any) -> T:
    """A config section as its dataclass (also a section composed without the schema)."""
    typed = OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(kind), section))
    assert isinstance(typed, kind)
    return typed


class BaseBackend(abc.ABC):
    """Serves a workload under one configuration and measures it.

    Subclasses implement :meth:`evaluate`; they never raise for a configuration that fails, they
    return a :class:`~sloguard.result.TrialResult` whose ``crash`` says why.

    Args:
        settings: The model, hardware and backend sections (:meth:`BackendSettings.of`).
    """

    name: str = ""
    probes_device: bool = False  # True: the memory guard reads the real device's VRAM

    def __init__(self, settings: BackendSettings) -> None:
        self.settings = settings

    @classmethod
    def preflight(cls, settings: BackendSettings) -> None:
        """Check this machine can run the backend as configured, before any trial.

        Raises:
            ConfigError: One line naming what is missing.
        """
        return None  # the simulator needs nothing

    def gpus(self, config: dict[str, Any]) -> int:
        """The GPUs a server launched with ``config`` runs on: vLLM's tensor x data parallel
        sizes (one GPU when the config sets neither)."""
        return int(config.get("tensor_parallel_size", 1)) * int(
            config.get("data_parallel_size", 1)
        )

    @abc.abstractmethod
    def evaluate(
        self,
        config: dict[str, Any],
        workload: Workload,
        slo: SloContract,
        *,
        seed: int,
        log_path: Path | None = None,
    ) -> TrialResult:
        """Run ``workload`` against a server launched with ``config``.

        Args:
            config: A complete, repaired knob configuration.
            workload: The requests to serve.
            slo: The contract that turns latencies into goodput and feasibility.
            seed: Seeds everything random in this evaluation.
            log_path: Where a real server's log goes (kept as the trial's artifact).
        """

    def evaluate_adaptive(
        self,
        config: dict[str, Any],
        next_workload: Callable[[list[TrialResult]], Workload | None],
        slo: SloContract,
        *,
        seed: int,
        log_path: Path | None = None,
    ) -> list[TrialResult]:
        """Serve loads one after another under one ``config``, each chosen from the results so far.

        ``next_workload`` gets the results so far and returns the next load, or ``None`` to
        stop; serving also stops at the first crash. A real backend launches the server once
        for all of them (capacity search bisects the rate on one launch); by default each load
        is an :meth:`evaluate` of its own.
        """
        return serve_in_turn(
            lambda load: self.evaluate(config, load, slo, seed=seed, log_path=log_path),
            next_workload,
        )

    def evaluate_many(
        self,
        config: dict[str, Any],
        workloads: Sequence[Workload],
        slo: SloContract,
        *,
        seed: int,
        log_path: Path | None = None,
    ) -> list[TrialResult]:
        """Serve each of ``workloads`` in turn under one ``config``; one result each.

        Once one crashes, the later ones are not served and share its crash.
        """
        pending = iter(workloads)
        results = self.evaluate_adaptive(
            config, lambda _: next(pending, None), slo, seed=seed, log_path=log_path
        )
        if results and results[-1].crash is not None:
            last = results[-1]
            results += [
                TrialResult(
                    dict(config),
                    crash=last.crash,
                    server=dict(last.server),
                    server_log=last.server_log,
                )
                for _ in range(len(workloads) - len(results))
            ]
        return results


def serve_in_turn(
    serve: Callable[[Workload], TrialResult],
    next_workload: Callable[[list[TrialResult]], Workload | None],
) -> list[TrialResult]:
    """Serve the loads ``next_workload`` picks one after another until it says stop or a crash."""
    results: list[TrialResult] = []
    while (workload := next_workload(results)) is not None:
        results.append(serve(workload))
        if results[-1].crash is not None:
            break
    return results
