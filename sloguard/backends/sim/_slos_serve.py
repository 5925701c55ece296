"""SLOs-Serve's scheduler (arXiv 2504.08784) at the simulator's level of detail.

- **Batch-time predictor**: the engine's own step-time model, and its inverse (what chunk fits
  beside a batch within a time limit); no noise.
- **Per-step planning**: a step may take at most the tightest TPOT among admitted requests
  (times a safety margin): admitted decodes run first, then admitted prompts' chunks in order of
  their TTFT deadlines, then best-effort requests with whatever budget is left.
- **DP admission**: arrivals are admitted only if a plan exists that still meets every admitted
  request's TTFT deadline (prefill tokens, earliest deadline first, at the per-step capacity the
  TPOT limit leaves) and the whole KV footprint of every admitted request. Among the arrivals,
  the dynamic program over deadline order (Lawler and Moore's for the most jobs on time) admits
  as many as such a plan allows.
- **Soft admission**: the others wait in a best-effort queue, served with spare budget and free
  KV only (preempted when an admitted request needs the blocks); they still count in attainment.
- **Speculative decoding** (optional): per SLO tier, the speculation length is chosen by
  enumeration, as in the paper: the tightest tier's length maximises the prefill tokens per
  second its TPOT leaves; looser tiers speculate just enough for the step time that sets.
"""

from __future__ import annotations

import math
import time
from collections import deque
from typing import TYPE_CHECKING

from sloguard.backends.sim._engine import StepPlan
from sloguard.backends.sim._requests import expected_tokens

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable

    from sloguard.backends.sim._engine import Engine, StepTime

MARGIN = 0.9  # plan steps to this share of the TPOT limit: room for step-time noise
SPEC_CREDIT = 0.5  # share of the speculated tokens a step is planned on (their count varies)


class Predictor:
    """Batch time from the engine's step-time model, and the chunk that fits a time limit.

    Args:
        step_time: The engine's step-time model (any callable; its ``extra_tokens`` is used
            when it has one, else a bisection over calls).
        cap: The most tokens a step may compute (``max_num_batched_tokens``).
    """

    def __init__(self, step_time: StepTime, cap: int) -> None:
        self.step_time = step_time
        self.cap = cap
        self._inverse = getattr(step_time, "extra_tokens", None)

    def seconds(self, step: tuple[int, int, float, int]) -> float:
        """Predicted time of a step of (tokens, sampled, prefill pairs, decode context)."""
        return self.step_time(*step, 1.0)

    def extra(self, limit: float, step: tuple[int, int, float, int], context: float) -> int:
        """The most tokens, each attending ``context`` tokens, to add within ``limit`` seconds."""
        room = self.cap - step[0]
        if room <= 0 or limit <= 0:
            return 0
        if limit == math.inf:
            return room
        if self._inverse is not None:
            return max(0, min(room, self._inverse(limit, step, context)))
        tokens, sampled, pairs, ctx = step

        def fits(extra: int) -> bool:
            return self.seconds((tokens + extra, sampled, pairs + extra * context, ctx)) <= limit

        if fits(room):
            return room
        lo, hi = 0, room
        while lo < hi:
            mid = (lo + hi + 1) // 2
            lo, hi = (mid, hi) if fits(mid) else (lo, mid - 1)
        return lo


class SlosServeScheduler:
    """Deadline-planned steps, DP admission and a best-effort queue; see the module docstring.

    Args:
        spec_tokens: The longest speculation (0: no speculative decoding).
        acceptance_rate: Chance that a speculated token is accepted.
        draft_ratio: One draft step's time as a share of the target's decode step.
        soft_admission: Requests the plan cannot admit go to the best-effort queue (off: all
            are admitted, the ablation without burst handling).
    """

    def __init__(
        self,
        spec_tokens: int = 0,
        acceptance_rate: float = 1.0,
        draft_ratio: float = 0.0,
        *,
        soft_admission: bool = True,
    ) -> None:
        self.spec_tokens = spec_tokens
        self.acceptance_rate = acceptance_rate
        self.draft_ratio = draft_ratio
        self.soft_admission = soft_admission
        self.pending: list[int] = []
        self.admitted: set[int] = set()
        self.be_waiting: deque[int] = deque()
        self.reserved = 0  # KV blocks admitted requests hold once complete
        self.best_effort_ids: set[int] = set()  # every request this replica served best effort
        self.planner_s: list[float] = []
        self.unclaimed = 0  # KV blocks admitted requests are promised and do not hold yet
        self.planned = 0  # tokens in the step being planned
        self._limits: dict[tuple[float, int], tuple[float, int]] = {}  # see _limit
        self._specs: dict[tuple[float, float, int], int] = {}  # see _spec_for

    # --- the Scheduler protocol

    def attach(self, engine: Engine) -> None:
        self.predictor = Predictor(engine.step_time, engine.settings.max_num_batched_tokens)
        self._limits.clear()
        self._specs.clear()

    def arrive(self, engine: Engine, rid: int) -> None:
        self.pending.append(rid)

    def queued(self, engine: Engine) -> int:
        return len(self.pending) + len(self.be_waiting)

    def may_jump(self, engine: Engine) -> bool:
        return not (self.spec_tokens or self.pending or engine.waiting or self.be_waiting)

    def retire(self, engine: Engine, rid: int) -> None:
        if rid in self.admitted:
            self.admitted.discard(rid)
            self.reserved -= engine.reqs.footprint(rid)

    def schedule(self, engine: Engine) -> StepPlan:
        start = time.perf_counter()
        if self.pending:
            self.admit_pending(engine)
        plan = self._plan_step(engine)
        self.planner_s.append(time.perf_counter() - start)
        return plan

    def admit_pending(self, engine: Engine) -> None:
        """Decide the arrivals: admitted (queued by deadline) or best effort."""
        chosen = self.plan_admission(engine, self.pending) if self.soft_admission else None
        for rid in sorted(self.pending, key=lambda r: self._deadline(engine, r)):
            if chosen is None or rid in chosen:
                self.admitted.add(rid)
                self.reserved += engine.reqs.footprint(rid)
                engine.waiting.append(rid)
            else:
                self.be_waiting.append(rid)
                self.best_effort_ids.add(rid)
        self.pending.clear()

    # --- admission

    def would_admit(self, engine: Engine, rid: int) -> bool:
        """Whether ``rid``, arriving now, would be admitted here (the SLO-aware router asks)."""
        return rid in self.plan_admission(engine, [*self.pending, rid])

    def plan_admission(self, engine: Engine, arrivals: Iterable[int]) -> set[int]:
        """The most ``arrivals`` that a plan can serve beside the admitted requests.

        For each TPOT level the arrivals may set (loosest first), a binary search finds the
        largest count the dynamic program can place; the level admitting the most wins.
        """
        reqs = engine.reqs
        cands = [r for r in arrivals if reqs.footprint(r) <= engine.total_blocks]
        if not cands:
            return set()
        tiers = self._tpots(engine, self.admitted)
        late = self.late_prompts(engine)
        seats = engine.settings.max_num_seqs - len(self.admitted)
        room = engine.total_blocks - self.reserved
        tightest = min(tiers, default=math.inf)
        best: set[int] = set()
        for level in sorted({min(self._tpot(engine, r), tightest) for r in cands}, reverse=True):
            allowed = [r for r in cands if self._tpot(engine, r) >= level]
            lo, hi = 0, min(len(allowed), seats)
            found: set[int] = set()
            while lo < hi:
                k = (lo + hi + 1) // 2
                picked = self._place(engine, allowed, k, [*tiers, level], late)
                if picked is not None and sum(reqs.footprint(r) for r in picked) <= room:
                    lo, found = k, picked
                else:
                    hi = k - 1
            if len(found) > len(best):
                best = found
        return best

    def late_prompts(self, engine: Engine) -> set[int]:
        """Admitted prompts the plan cannot complete by their TTFT deadlines (lost already)."""
        tiers = self._tpots(engine, self.admitted)
        limit, spec = self._limit(engine, tiers, len(self.admitted))
        jobs = self._prompts(engine)
        by = self._tokens_by(engine, limit, len(self.admitted), spec, [r for _, r in jobs])
        late = set()
        done = 0
        for deadline, rid in jobs:
            done += self._work(engine, rid)
            if done > by(deadline - engine.now):
                late.add(rid)
        return late

    def _prompts(self, engine: Engine) -> list[tuple[float, int]]:
        """The admitted requests still prefilling, by deadline."""
        reqs = engine.reqs
        return sorted(
            (self._deadline(engine, r), r)
            for r in self.admitted
            if reqs.computed[r] < reqs.prompt[r] + reqs.generated[r] - 1
        )

    @staticmethod
    def _work(engine: Engine, rid: int) -> int:
        """Prompt tokens ``rid`` has left to compute."""
        reqs = engine.reqs
        return reqs.prompt[rid] + reqs.generated[rid] - reqs.computed[rid]

    def _place(
        self,
        engine: Engine,
        arrivals: list[int],
        count: int,
        tiers: list[float],
        late: set[int],
    ) -> set[int] | None:
        """``count`` of ``arrivals`` whose prompts, with the admitted ones, meet their deadlines.

        Jobs in deadline order; state: number of arrivals taken -> least prefill tokens so far
        (and which). A job is on time if the tokens up to it fit the plan before its deadline;
        admitted prompts in ``late`` are served in their turn but have no deadline left to keep.
        """
        decodes = len(self.admitted) + count
        limit, spec = self._limit(engine, tiers, decodes)
        jobs = [(d, r, True) for d, r in self._prompts(engine)]
        jobs += [(self._deadline(engine, r), r, False) for r in arrivals]
        jobs.sort()
        by = self._tokens_by(engine, limit, decodes, spec, [r for _, r, _ in jobs])
        now = engine.now
        states: dict[int, tuple[int, tuple | None]] = {0: (0, None)}
        for deadline, rid, mandatory in jobs:
            work = self._work(engine, rid)
            limit_here = math.inf if rid in late else by(deadline - now)
            nxt: dict[int, tuple[int, tuple | None]] = {}
            for taken, (done, chain) in states.items():
                if not mandatory and (taken not in nxt or done < nxt[taken][0]):
                    nxt[taken] = (done, chain)
                key = taken if mandatory else taken + 1
                if done + work <= limit_here and (key not in nxt or done + work < nxt[key][0]):
                    nxt[key] = (done + work, chain if mandatory else (rid, chain))
            states = nxt
        if count not in states:
            return None
        picked: set[int] = set()
        chain = states[count][1]
        while chain is not None:
            picked.add(chain[0])
            chain = chain[1]
        return picked

    def _tokens_by(
        self, engine: Engine, limit: float, decodes: int, spec: int, prefills: list[int]
    ) -> Callable[[float], float]:
        """How many prefill tokens the plan completes within a given time from now.

        Steps carry ``decodes`` decoding sequences (every one at its longest context: an upper
        bound) and as many prefill tokens as fit in ``limit`` seconds; the last step before a
        deadline may be a shorter one.
        """
        reqs = engine.reqs
        everyone = [*prefills, *self.admitted]
        longest = max((reqs.prompt[r] + reqs.target[r] for r in everyone), default=0)
        verify = decodes * (1 + spec)
        if verify > engine.settings.max_num_batched_tokens:
            return lambda slack: 0.0
        context = decodes * longest
        draft = self._draft_s(engine, decodes, context, spec)
        base = (verify, verify, 0.0, context)
        predictor = self.predictor
        per_step = predictor.extra(limit - draft, base, longest)
        if per_step <= 0:
            return lambda slack: 0.0
        full = draft + predictor.seconds((verify + per_step, verify, per_step * longest, context))

        def by(slack: float) -> float:
            if slack <= 0:
                return 0.0
            steps = math.floor(slack / full)
            last = predictor.extra(slack - steps * full - draft, base, longest)
            return steps * per_step + min(per_step, last)

        return by

    # --- one step

    def _plan_step(self, engine: Engine, unlimited: bool = False) -> StepPlan:
        """Admitted decodes, admitted prompts by deadline, then best effort with what is left.

        A step that the limit leaves empty (a batch too slow for its tightest TPOT) runs
        without the limit, so that the engine always makes progress.
        """
        reqs = engine.reqs
        prompt, generated, computed = reqs.prompt, reqs.generated, reqs.computed
        admitted = self.admitted
        decoding = [r for r in engine.running if computed[r] == prompt[r] + generated[r] - 1]
        decoding_set = set(decoding)
        ours = [r for r in decoding if r in admitted]
        tiers = self._tpots(engine, admitted)
        limit, spec_max = self._limit(engine, tiers, len(ours))
        if unlimited:
            limit = math.inf
        plan = StepPlan([], [], 0, 0.0, 0, [] if self.spec_tokens else None)
        self.unclaimed = self.reserved - sum(reqs.blocks[r] for r in admitted)
        self.planned = 0  # tokens in the plan so far
        self._decode_admitted(engine, plan, ours, self._tpots(engine, ours), limit, spec_max)
        if plan.spec:
            plan.draft_s = self._draft_s(engine, len(ours), plan.decode_context, max(plan.spec))
        started = [r for r in engine.running if r not in decoding_set]
        prefills = [r for r in started if r in admitted] + list(engine.waiting)
        prefills.sort(key=lambda r: self._deadline(engine, r))
        for rid in prefills:  # a step that completes a prompt ends by its TTFT deadline
            limit = self._prefill(engine, plan, rid, limit, admitted=True)[0]
        for rid in decoding:  # best effort (an evicted one has nothing computed)
            if rid not in admitted and computed[rid] == prompt[rid] + generated[rid] - 1:
                self._decode(engine, plan, rid, 0, limit=limit)
        for rid in started:
            if rid not in admitted and rid in engine.running:
                self._prefill(engine, plan, rid, limit, admitted=False)
        for rid in list(self.be_waiting):
            if not self._prefill(engine, plan, rid, limit, admitted=False)[1]:
                break
        if not plan.ids and not unlimited:
            return self._plan_step(engine, unlimited=True)
        return plan

    def _decode_admitted(
        self,
        engine: Engine,
        plan: StepPlan,
        ours: list[int],
        tpots: list[float],
        limit: float,
        spec_max: int,
    ) -> None:
        """:meth:`_decode` for each admitted decode (no time limit applies to them), with
        the speculation length of its tier; the step's hot loop, kept in locals."""
        reqs = engine.reqs
        prompt, generated, computed, target, blocks = (
            reqs.prompt, reqs.generated, reqs.computed, reqs.target, reqs.blocks
        )  # fmt: skip
        block = engine.settings.block_size
        ids, tokens, specs = plan.ids, plan.tokens, plan.spec
        sampled, context, pairs = plan.num_sampled, plan.decode_context, plan.attn_pairs
        tier_spec: dict[float, int] = {}
        for rid, tpot in zip(ours, tpots, strict=True):
            spec = tier_spec.get(tpot)
            if spec is None:
                spec = tier_spec[tpot] = self._spec_for(tpot, limit, spec_max)
            spec = min(spec, target[rid] - generated[rid] - 1)
            upto = computed[rid] + 1 + spec
            if -(-upto // block) > blocks[rid] and not self._blocks(engine, rid, upto, True):
                continue
            seq = prompt[rid] + generated[rid]
            ids.append(rid)
            tokens.append(1 + spec)
            sampled += 1 + spec
            context += seq
            pairs += spec * seq
            if specs is not None:
                specs.append(spec)
        self.planned += sampled - plan.num_sampled
        plan.num_sampled, plan.decode_context, plan.attn_pairs = sampled, context, pairs

    def _decode(
        self, engine: Engine, plan: StepPlan, rid: int, spec: int, limit: float = math.inf
    ) -> None:
        """Add ``rid``'s next token (and ``spec`` speculated ones) to the step, if it fits."""
        reqs = engine.reqs
        spec = min(spec, reqs.target[rid] - reqs.generated[rid] - 1)
        seq = reqs.prompt[rid] + reqs.generated[rid]
        if limit < math.inf:
            step = (self.planned, plan.num_sampled, plan.attn_pairs, plan.decode_context + seq)
            if self.predictor.extra(limit - plan.draft_s, step, seq) < 1 + spec:
                return  # a best-effort decode waits for a step with time to spare
        upto = reqs.computed[rid] + 1 + spec
        grows = -(-upto // engine.settings.block_size) > reqs.blocks[rid]
        if grows and not self._blocks(engine, rid, upto, rid in self.admitted):
            return
        plan.ids.append(rid)
        plan.tokens.append(1 + spec)
        self.planned += 1 + spec
        plan.num_sampled += 1 + spec
        plan.decode_context += seq
        plan.attn_pairs += spec * seq
        if plan.spec is not None:
            plan.spec.append(spec)

    def _prefill(
        self, engine: Engine, plan: StepPlan, rid: int, limit: float, *, admitted: bool
    ) -> tuple[float, bool]:
        """Add the next chunk of ``rid``'s prompt to the step, as much as fits in ``limit``.

        An admitted prompt that can be completed before its TTFT deadline is, and the step's
        limit becomes that deadline. Returns the step's limit and whether budget is left.
        """
        reqs = engine.reqs
        settings = engine.settings
        starting = rid not in engine.running
        full = starting and len(engine.running) >= settings.max_num_seqs
        if full and not (admitted and self._evict(engine)):
            return limit, False  # no seat for it, nor for the best-effort ones after it
        start = engine.begin(rid) if starting else reqs.computed[rid]
        need = reqs.prompt[rid] + reqs.generated[rid] - start
        step = (self.planned, plan.num_sampled, plan.attn_pairs, plan.decode_context)
        context = start + need / 2 + 1
        fit = self.predictor.extra(limit - plan.draft_s, step, context)
        own = self._deadline(engine, rid) - engine.now if admitted else math.inf
        if own < limit and need <= self.predictor.extra(own - plan.draft_s, step, context):
            limit = own
        ntok = min(need, fit)
        if ntok <= 0 or (not settings.enable_chunked_prefill and ntok < need):
            return limit, fit > 0
        if not self._blocks(engine, rid, start + ntok, admitted, held=0 if starting else None):
            return limit, True
        if starting:
            engine.admitted(rid, start)
            if admitted:
                engine.waiting.remove(rid)
            else:
                self.be_waiting.remove(rid)
            engine.running.append(rid)
            reqs.computed[rid] = start
        plan.ids.append(rid)
        plan.tokens.append(ntok)
        self.planned += ntok
        plan.attn_pairs += ntok * (start + (ntok + 1) / 2)
        if ntok == need:
            plan.num_sampled += 1
        if plan.spec is not None:
            plan.spec.append(0)
        return limit, fit > ntok

    def _blocks(
        self, engine: Engine, rid: int, upto: int, admitted: bool, held: int | None = None
    ) -> bool:
        """Give ``rid`` the blocks for ``upto`` tokens; a best-effort request only free ones."""
        reqs = engine.reqs
        have = reqs.blocks[rid] if held is None else held
        new = -(-upto // engine.settings.block_size) - have
        if admitted:
            while new > engine.free_blocks and self._evict(engine):
                pass
        elif new > engine.free_blocks - self.unclaimed:
            return False
        if new > engine.free_blocks:
            return False
        engine.free_blocks -= new
        reqs.blocks[rid] = have + new
        if admitted:  # the blocks it takes were promised to it
            self.unclaimed -= min(new, max(reqs.footprint(rid) - have, 0))
        return True

    def _evict(self, engine: Engine) -> bool:
        """Preempt the newest running best-effort request; whether there was one."""
        for i in range(len(engine.running) - 1, -1, -1):
            victim = engine.running[i]
            if victim not in self.admitted:
                del engine.running[i]
                engine.preempt(victim)
                self.be_waiting.appendleft(victim)
                return True
        return False

    # --- helpers

    def _deadline(self, engine: Engine, rid: int) -> float:
        """When ``rid``'s first token is due."""
        reqs = engine.reqs
        assert reqs.deadlines is not None
        return reqs.send[rid] + reqs.deadlines.ttft_s[rid]

    @staticmethod
    def _tpots(engine: Engine, rids: Iterable[int]) -> list[float]:
        """The TPOT limit of each of ``rids``' next token."""
        reqs = engine.reqs
        dl = reqs.deadlines
        assert dl is not None
        generated, answer_from = reqs.generated, dl.answer_from
        return [
            dl.tpot_s[r] if generated[r] < answer_from[r] else dl.answer_tpot_s[r] for r in rids
        ]

    def _tpot(self, engine: Engine, rid: int) -> float:
        """The TPOT limit of ``rid``'s next token."""
        return self._tpots(engine, (rid,))[0]

    def _limit(self, engine: Engine, tiers: list[float], decodes: int) -> tuple[float, int]:
        """The step-time limit the tightest tier sets, and its speculation length.

        Without speculation: the margin times the tightest TPOT. With it, each length up to the
        longest is tried for the tightest tier, and the one leaving the most prefill tokens per
        second wins (a step may then last as long as the tokens it emits on average allow).
        """
        if not tiers:
            return math.inf, 0
        tightest = min(tiers)
        if not self.spec_tokens:
            return MARGIN * tightest, 0
        known = self._limits.get((tightest, decodes))
        if known is not None:  # the same tier and batch give the same plan (noise-free model)
            return known
        best, best_rate = (MARGIN * tightest, 0), -1.0
        for spec in range(self.spec_tokens + 1):
            limit = MARGIN * tightest * self._credited(spec)
            verify = decodes * (1 + spec)
            draft = self._draft_s(engine, decodes, 0, spec)
            fit = self.predictor.extra(limit - draft, (verify, verify, 0.0, 0), 0.0)
            if fit / limit > best_rate:
                best, best_rate = (limit, spec), fit / limit
        self._limits[tightest, decodes] = best
        return best

    def _spec_for(self, tpot: float, limit: float, spec_max: int) -> int:
        """The fewest speculated tokens that let a tier's TPOT keep up with ``limit``."""
        key = (tpot, limit, spec_max)
        known = self._specs.get(key)
        if known is not None:
            return known
        found = next(
            (s for s in range(spec_max + 1) if MARGIN * tpot * self._credited(s) >= limit),
            spec_max,
        )
        self._specs[key] = found
        return found

    def _credited(self, spec: int) -> float:
        """Tokens a speculating decode is planned to emit per step: the sure one, and half of
        the speculated ones it emits on average (cumulative deadlines fail on unlucky streaks).
        """
        return 1.0 + SPEC_CREDIT * (expected_tokens(spec, self.acceptance_rate) - 1.0)

    def _draft_s(self, engine: Engine, decodes: int, context: int, spec: int) -> float:
        """Seconds the draft model takes to propose ``spec`` tokens for ``decodes`` sequences."""
        if not spec or not decodes:
            return 0.0
        return spec * self.draft_ratio * self.predictor.seconds((decodes, decodes, 0.0, context))
