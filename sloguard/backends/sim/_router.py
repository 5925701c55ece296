"""Which replica serves a request: the routers in front of several engines.

A later round of a multi-round request goes where the round before it ran (its prompt is cached
there), when that replica can hold it. A request is placed only on a replica whose KV cache can
hold it: the blocks its whole prompt and
output take, beside the whole footprint of every request already placed there and unfinished.
When no replica can (a burst), it waits at the router, in arrival order, until one can. With one
replica there is no router: the engine queues (and preempts) as it would alone.

- ``round-robin``: the next replica in turn that can hold it.
- ``least-loaded``: the replica with the least KV footprint placed on it.
- ``slo-aware``: SLOs-Serve's centralised controller: the next replica in turn whose admission
  plan can admit the request; if none can, the next in turn, where it is served best effort
  (a replica without an admission plan, the vllm scheduler's, admits whatever it can hold).
- ``dp-balance``: vLLM's own balancer over the engines of a data-parallel server (0.32
  ``DPLBAsyncMPClient.get_core_engine_for_request``) as one API server runs it: the engine
  with the fewest requests in flight, plus 6 x its waiting requests x its KV usage over half;
  ties go to the next engine in turn. It never holds a request back (the engine queues it) and
  keeps no affinity between rounds. ``vllm serve`` starts one API server per engine by default,
  each balancing its own share on waiting counts and KV usage up to 100 ms old; here there is
  one, and its counts are current.
"""

from __future__ import annotations

from collections import deque
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from sloguard.backends.sim._engine import Engine
    from sloguard.backends.sim._requests import Requests


class Router:
    """Places requests on replicas; see the module docstring.

    Args:
        engines: The replicas.
        reqs: The load's requests.
    """

    name = ""

    def __init__(self, engines: list[Engine], reqs: Requests) -> None:
        self.engines = engines
        self.reqs = reqs
        self.load = [0] * len(engines)  # KV blocks placed on each replica and not yet freed
        self.home: dict[int, int] = {}  # request -> replica
        self.held: deque[int] = deque()  # requests no replica can hold yet
        self.history: list[list[int]] = [[] for _ in engines]  # requests placed on each
        follows = reqs.workload.follows
        self.follows = follows.tolist() if follows is not None else None
        self.where: dict[int, int] = {}  # request -> the replica it was placed on

    def __call__(self, rid: int) -> Engine | None:
        """The replica for ``rid`` (``None``: it waits at the router)."""
        engine = None if self.held else self._place(rid)
        if engine is None:
            self.held.append(rid)  # in arrival order, behind those waiting already
        return engine

    def release(self) -> list[tuple[int, Engine]]:
        """The waiting requests that can now be placed, in arrival order, with their replicas."""
        placed = []
        while self.held:
            engine = self._place(self.held[0])
            if engine is None:
                break
            placed.append((self.held.popleft(), engine))
        return placed

    def done(self, rid: int) -> None:
        """``rid`` left its replica."""
        home = self.home.pop(rid, None)
        if home is not None:
            self.load[home] -= self.reqs.footprint(rid)

    def _place(self, rid: int) -> Engine | None:
        need = self.reqs.footprint(rid)
        fits = [i for i, e in enumerate(self.engines) if self.load[i] + need <= e.total_blocks]
        if not fits:
            return None
        before = self.follows[rid] if self.follows is not None else -1
        if before >= 0 and self.where.get(before) in fits:
            index = self.where[before]  # a later round stays where its prompt is cached
        else:
            index = self.choose(rid, fits)
        self.where[rid] = index
        self.load[index] += need
        self.home[rid] = index
        self.history[index].append(rid)
        return self.engines[index]

    def choose(self, rid: int, fits: list[int]) -> int:
        """Which of the replicas ``fits`` (that can hold ``rid``) gets it."""
        raise NotImplementedError


class RoundRobin(Router):
    """The next replica in turn."""

    name = "round-robin"
    _turn = 0

    def choose(self, rid: int, fits: list[int]) -> int:
        n = len(self.engines)
        index = min(fits, key=lambda i: (i - self._turn) % n)
        self._turn = (index + 1) % n
        return index


class LeastLoaded(Router):
    """The replica with the least KV footprint placed on it."""

    name = "least-loaded"

    def choose(self, rid: int, fits: list[int]) -> int:
        return min(fits, key=lambda i: self.load[i])


class SloAware(RoundRobin):
    """The next replica in turn whose admission plan can take it, else the next in turn."""

    name = "slo-aware"

    def choose(self, rid: int, fits: list[int]) -> int:
        admit = [i for i in fits if self.engines[i].scheduler.would_admit(self.engines[i], rid)]
        return super().choose(rid, admit or fits)


class DataParallelBalance(Router):
    """vLLM's data-parallel balancer: fewest requests in flight, a queue on a full engine
    penalised; never holds a request back."""

    name = "dp-balance"
    _turn = 0

    def __init__(self, engines: list[Engine], reqs: Requests) -> None:
        super().__init__(engines, reqs)
        self.in_flight = [0] * len(engines)

    def _place(self, rid: int) -> Engine | None:
        n = len(self.engines)
        index = min(((self._turn + k) % n for k in range(n)), key=self._score)
        self._turn = (self._turn + 1) % n
        self.in_flight[index] += 1
        self.home[rid] = index
        self.history[index].append(rid)
        return self.engines[index]

    def done(self, rid: int) -> None:
        home = self.home.pop(rid, None)
        if home is not None:
            self.in_flight[home] -= 1

    def _score(self, index: int) -> float:
        engine = self.engines[index]
        usage = 1.0 - engine.free_blocks / engine.total_blocks
        return self.in_flight[index] + len(engine.waiting) * 6.0 * max(0.0, usage - 0.5)


ROUTERS: dict[str, type[Router]] = {
    cls.name: cls for cls in (RoundRobin, LeastLoaded, SloAware, DataParallelBalance)
}
