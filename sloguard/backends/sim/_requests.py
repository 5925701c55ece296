"""The state of every request of a simulated load, shared by the client and the replicas."""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field

from sloguard.gpu_profile import BLOCK_SIZE
from sloguard.workload import Workload


@dataclass
class Deadlines:
    """Per-request SLOs in seconds, as a scheduler plans with them (arrays in workload order).

    Args:
        ttft_s: TTFT limit of each request.
        tpot_s: TPOT limit of its tokens before ``answer_from``.
        answer_tpot_s: TPOT limit from ``answer_from`` on.
        answer_from: Index of its first answer token.
    """

    ttft_s: list[float]
    tpot_s: list[float]
    answer_tpot_s: list[float]
    answer_from: list[int]

    @classmethod
    def of(cls, workload: Workload, ttft_ms: float, tpot_ms: float) -> Deadlines:
        """A multi-SLO workload's own limits, else one limit for all (the trial's contract)."""
        n = len(workload)
        classes = workload.classes
        if classes is None:
            return cls(
                [ttft_ms * 1e-3] * n,
                [tpot_ms * 1e-3] * n,
                [tpot_ms * 1e-3] * n,
                workload.output_lens.tolist(),
            )
        return cls(
            (classes.ttft_ms * 1e-3).tolist(),
            (classes.tpot_ms * 1e-3).tolist(),
            (classes.answer_tpot_ms * 1e-3).tolist(),
            classes.answer_from.tolist(),
        )


@dataclass
class Requests:
    """Lengths, progress, timings and prefix-cache keys of every request of one load.

    Args:
        workload: The load.
        deadlines: Per-request SLOs (``None``: no scheduler here plans with them).
        acceptance_rate: Chance that a speculated token is accepted.
        seed: Seeds the acceptance draws.
        block_size: Tokens per KV block (cache hits land on whole blocks).
    """

    workload: Workload
    deadlines: Deadlines | None = None
    acceptance_rate: float = 1.0
    seed: int = 0
    block_size: int = BLOCK_SIZE
    prompt: list[int] = field(init=False)
    target: list[int] = field(init=False)
    due: list[float] = field(init=False)
    computed: list[int] = field(init=False)
    generated: list[int] = field(init=False)
    blocks: list[int] = field(init=False)
    token_times: list[list[float]] = field(init=False)
    send: list[float] = field(init=False)
    errors: list[str | None] = field(init=False)
    hits: list[list[tuple[int, int]]] = field(init=False)
    pubs: list[list[tuple[int, int]]] = field(init=False)
    pub_at: list[float] = field(init=False)

    def __post_init__(self) -> None:
        workload = self.workload
        n = len(workload)
        self.prompt = workload.prompt_lens.tolist()
        self.target = workload.output_lens.tolist()
        self.due = workload.arrival_times.tolist()
        self.computed = [0] * n
        self.generated = [0] * n
        self.blocks = [0] * n
        self.token_times = [[] for _ in range(n)]
        self.send = [0.0] * n
        self.errors = [None] * n
        self.hits, self.pubs = _prefix_keys(workload, self.block_size)
        self.pub_at = [p[0][0] if p else math.inf for p in self.pubs]  # next publication
        self._rng = random.Random(self.seed)
        self.spec_drafted = self.spec_accepted = 0
        rate = self.acceptance_rate
        self._log_rate = math.log(rate) if 0.0 < rate < 1.0 else -math.inf  # see accepted
        # the lists a step reads, in one tuple: one attribute load in the hot loops
        self.state = (self.prompt, self.target, self.computed, self.generated, self.blocks)

    def footprint(self, rid: int) -> int:
        """KV blocks ``rid`` holds once its whole prompt and output are computed."""
        return -(-(self.prompt[rid] + self.target[rid]) // self.block_size)

    def accepted(self, spec: int) -> int:
        """How many of ``spec`` speculated tokens the target model accepts (a fresh draw,
        counted in ``spec_drafted`` and ``spec_accepted`` as vLLM's counters count them)."""
        self.spec_drafted += spec
        if self.acceptance_rate >= 1.0:
            kept = spec
        else:
            u = 1.0 - self._rng.random()  # in (0, 1]
            kept = min(spec, int(math.log(u) / self._log_rate))
        self.spec_accepted += kept
        return kept


def _prefix_keys(
    workload: Workload, block: int
) -> tuple[list[list[tuple[int, int]]], list[list[tuple[int, int]]]]:
    """Per request, the cached prefixes it may reuse and those it puts in the cache.

    Each is a list of (tokens, key), shortest first. A group's shared prefix is key ``group``;
    the prompt of a round that another round follows is key ``-1 - index`` (whole blocks only).
    """
    prefix = (workload.shared_prefix_len // block) * block
    groups = workload.prefix_groups.tolist()
    follows = workload.follows.tolist() if workload.follows is not None else [-1] * len(workload)
    chained = {f for f in follows if f >= 0}
    whole = [(p // block) * block for p in workload.prompt_lens.tolist()]
    hits: list[list[tuple[int, int]]] = []
    pubs: list[list[tuple[int, int]]] = []
    for rid, group in enumerate(groups):
        shared = [(prefix, group)] if group >= 0 and prefix else []
        before = follows[rid]
        hits.append(sorted(shared + ([(whole[before], -1 - before)] if before >= 0 else [])))
        own = [(whole[rid], -1 - rid)] if rid in chained and whole[rid] else []
        pubs.append(sorted(shared + own))
    return hits, pubs


def expected_tokens(spec: int, acceptance_rate: float) -> float:
    """Tokens a decode step emits on average when it speculates ``spec`` tokens."""
    if acceptance_rate >= 1.0:
        return float(spec + 1)
    return (1.0 - acceptance_rate ** (spec + 1)) / (1.0 - acceptance_rate)
