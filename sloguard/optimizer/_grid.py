"""vLLM's auto_tune as a baseline: a grid, with memory utilisation stepped down after an OOM."""

from __future__ import annotations

import itertools
from typing import TYPE_CHECKING, Any

from sloguard.crash_classifier import CrashCategory
from sloguard.optimizer._base import BaseOptimizer
from sloguard.space import FloatKnob, IntKnob

if TYPE_CHECKING:
    from omegaconf import DictConfig

    from sloguard.result import TrialResult
    from sloguard.space import SearchSpace


class GridOptimizer(BaseOptimizer):
    """What ``benchmarks/auto_tune`` does in vLLM, within a trial budget.

    Walks ``max_num_seqs x max_num_batched_tokens`` in order; each point starts at
    ``util_start`` and, after each out-of-memory crash, is retried ``util_step`` lower until the
    server starts or the utilisation would leave the space. Other knobs keep the space's
    defaults. After the last point the grid starts over. With several workers, a point that
    another worker is running is skipped until its result is in.

    Args:
        space: The search space (grid values outside it are dropped).
        seed: Unused: the grid is deterministic.
        max_num_seqs: Grid values of ``max_num_seqs``.
        max_num_batched_tokens: Grid values of ``max_num_batched_tokens``.
        util_start: First ``gpu_memory_utilization`` tried at each point.
        util_step: Decrement after an OOM.
    """

    name = "grid"

    def __init__(
        self,
        space: SearchSpace,
        seed: int,
        max_num_seqs: tuple[int, ...] = (32, 64, 128),
        max_num_batched_tokens: tuple[int, ...] = (512, 1024, 2048, 4096, 8192),
        util_start: float = 0.95,
        util_step: float = 0.05,
    ) -> None:
        super().__init__(space, seed)
        seqs_knob = space.knobs["max_num_seqs"]
        tokens_knob = space.knobs["max_num_batched_tokens"]
        self.points = [
            p
            for p in itertools.product(max_num_seqs, max_num_batched_tokens)
            if seqs_knob.contains(p[0]) and tokens_knob.contains(p[1])
        ]
        if not self.points:
            self.points = [(int(seqs_knob.default), int(tokens_knob.default))]
        util_knob = space.knobs["gpu_memory_utilization"]
        assert isinstance(util_knob, (FloatKnob, IntKnob))
        self.util_low = util_knob.low
        self.util_start = min(max(util_start, util_knob.low), util_knob.high)
        self.util_step = util_step
        self.utils = [self.util_start] * len(self.points)  # next utilisation of each point
        self.done = [False] * len(self.points)

    @classmethod
    def from_config(
        cls, cfg: DictConfig, space: SearchSpace, seed: int, budget: int
    ) -> GridOptimizer:
        return cls(
            space,
            seed,
            max_num_seqs=tuple(cfg.grid_max_num_seqs),
            max_num_batched_tokens=tuple(cfg.grid_max_num_batched_tokens),
            util_start=cfg.grid_util_start,
            util_step=cfg.grid_util_step,
        )

    def _ask(self) -> dict[str, Any]:
        if all(self.done):  # the whole grid is measured: start over
            self.utils = [self.util_start] * len(self.points)
            self.done = [False] * len(self.points)
        todo = [i for i, done in enumerate(self.done) if not done]
        candidates = [self._params(i) for i in todo]
        return next((p for p in candidates if p not in self.running), candidates[0])

    def _params(self, point: int) -> dict[str, Any]:
        seqs, tokens = self.points[point]
        params = {
            **self.space.defaults(),
            "max_num_seqs": seqs,
            "max_num_batched_tokens": tokens,
            "gpu_memory_utilization": round(self.utils[point], 4),
        }
        return {k: v for k, v in params.items() if self.space.is_active(k, params)}

    def _tell(self, params: dict[str, Any], result: TrialResult) -> None:
        key = (params["max_num_seqs"], params["max_num_batched_tokens"])
        if key not in self.points:
            return  # not a grid point (a trial of another optimizer)
        point = self.points.index(key)
        oom = result.crash is not None and result.crash.category is CrashCategory.OOM
        lower = round(params["gpu_memory_utilization"] - self.util_step, 4)
        if oom and lower >= self.util_low:
            self.utils[point] = min(self.utils[point], lower)
        else:
            self.done[point] = True
