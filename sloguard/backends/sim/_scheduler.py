"""vLLM's scheduling policy for the simulated engine."""

from __future__ import annotations

from typing import TYPE_CHECKING

from sloguard.backends.sim._engine import StepPlan

if TYPE_CHECKING:
    from sloguard.backends.sim._engine import Engine


class VllmScheduler:
    """vLLM v1's policy: running requests first, then waiting ones in their queue's order.

    Each step schedules running requests first (one token per decode, the next chunk of a partial
    prefill), then admits waiting ones in arrival order (by priority under the priority policy,
    below) while there is room under
    ``max_num_seqs`` and the token budget ``max_num_batched_tokens``. Without chunked prefill a
    prompt is prefilled whole or waits. When a running request needs a block and none is free,
    the newest running request is preempted and recomputed later, and no waiting request is
    admitted that step. A ``long_prefill_token_threshold`` caps the tokens one request is given
    per step whenever more than one request is running or waiting (vLLM 0.32
    ``v1/core/sched/scheduler.py``), with or without chunked prefill.

    Under the ``priority`` scheduling policy (vLLM's ``--scheduling-policy priority``) each
    request carries its SLO class's rank (:meth:`~sloguard.workload.Workload.priorities`):
    waiting requests are admitted by (priority, arrival) instead of arrival alone, and the
    request preempted for blocks is the running one last in that order, taken out of the step
    if it was already scheduled (vLLM 0.32 ``RequestQueue`` and ``Scheduler.schedule``). A
    request waiting behind a full batch never preempts a running one.

    Args:
        spec_tokens: Tokens each decode speculates (vLLM's ``num_speculative_tokens``; 0: off).
        draft_ratio: Time of one draft-model step as a share of the target's decode step.
    """

    def __init__(self, spec_tokens: int = 0, draft_ratio: float = 0.0) -> None:
        self.spec_tokens = spec_tokens
        self.draft_ratio = draft_ratio
        self.priorities: list[int] | None = None  # per request, under the priority policy
        self.arrived: dict[int, int] = {}  # request -> arrival order, under the priority policy

    def attach(self, engine: Engine) -> None:
        if engine.settings.scheduling_policy == "priority":
            self.priorities = engine.reqs.workload.priorities()

    def arrive(self, engine: Engine, rid: int) -> None:
        if self.priorities is None:
            engine.waiting.append(rid)
        else:
            self.arrived[rid] = len(self.arrived)
            self._requeue(engine, rid)

    def queued(self, engine: Engine) -> int:
        return 0

    def may_jump(self, engine: Engine) -> bool:
        return not self.spec_tokens and (
            not engine.waiting or len(engine.running) >= engine.settings.max_num_seqs
        )

    def retire(self, engine: Engine, rid: int) -> None:
        return None

    def would_admit(self, engine: Engine, rid: int) -> bool:
        return True  # no plan: whatever arrives is queued alike

    best_effort_ids: frozenset[int] = frozenset()  # none: every request is served alike
    planner_s: tuple[float, ...] = ()  # nothing is planned

    def schedule(self, engine: Engine) -> StepPlan:
        plan = self._plan(engine)
        while plan is None:  # it preempted all it reached (priority): vLLM's next step is now
            plan = self._plan(engine)
        return plan

    def _plan(self, engine: Engine) -> StepPlan | None:
        """One step's plan; ``None`` when preemption left it empty."""
        reqs = engine.reqs
        prompt, target, computed, generated, blocks = reqs.state
        running, waiting = engine.running, engine.waiting
        spec_tokens = self.spec_tokens
        budget = engine.settings.max_num_batched_tokens
        cap = _cap(engine)
        ids: list[int] = []
        tokens: list[int] = []
        spec: list[int] | None = [] if spec_tokens else None
        num_sampled = decode_ctx = 0
        attn_pairs = 0.0
        free_blocks = engine.free_blocks
        block = engine.settings.block_size
        preempted = unscheduled = False
        idx = 0
        while idx < len(running) and budget > 0:
            rid = running[idx]
            seq = prompt[rid] + generated[rid]
            need = seq - computed[rid]
            if spec_tokens and need == 1:
                need += min(spec_tokens, target[rid] - generated[rid] - 1)
            ntok = need if need <= budget else budget
            if ntok > cap:
                ntok = cap
            new_blocks = -(-(computed[rid] + ntok) // block) - blocks[rid]
            victim = -1
            while new_blocks > free_blocks and victim != rid:
                if self.priorities is None:
                    victim = running.pop()  # the newest request is recomputed later
                    waiting.appendleft(victim)
                else:
                    at = max(range(len(running)), key=lambda i: self._order(running[i]))
                    victim = running.pop(at)
                    if at < idx:  # already in this step: give back its tokens
                        idx -= 1
                        budget += self._unschedule(ids, tokens, spec, victim)
                        unscheduled = True
                    self._requeue(engine, victim)
                free_blocks += blocks[victim]
                engine.preempt(victim)
                preempted = True
            if victim == rid:
                break
            free_blocks -= new_blocks
            blocks[rid] += new_blocks
            ids.append(rid)
            tokens.append(ntok)
            budget -= ntok
            if computed[rid] == seq - 1:  # a decode (with its speculated tokens)
                decode_ctx += seq
                num_sampled += ntok
                if spec is not None:
                    attn_pairs += (ntok - 1) * seq
                    spec.append(ntok - 1)
            else:
                attn_pairs += ntok * (computed[rid] + (ntok + 1) / 2)
                if ntok == need:
                    num_sampled += 1
                if spec is not None:
                    spec.append(0)
            idx += 1
        engine.free_blocks = free_blocks
        if not ids and preempted:
            return None
        if unscheduled:
            num_sampled, attn_pairs, decode_ctx = _totals(engine, ids, tokens, spec is not None)
        plan = StepPlan(ids, tokens, num_sampled, attn_pairs, decode_ctx, spec)
        if not preempted:
            self._admit(engine, plan, budget, cap)
        if spec:
            decoding = sum(1 for n in spec if n)
            plan.draft_s = (
                max(spec)
                * self.draft_ratio
                * engine.step_time(decoding, decoding, 0.0, plan.decode_context, 1.0)
            )
        return plan

    def _admit(self, engine: Engine, plan: StepPlan, budget: int, cap: int) -> None:
        """Start waiting requests in their queue's order while they fit the budget, seats and
        KV (each given at most ``cap`` tokens)."""
        reqs = engine.reqs
        waiting, running, settings = engine.waiting, engine.running, engine.settings
        while waiting and len(running) < settings.max_num_seqs and budget > 0:
            rid = waiting[0]
            seq = reqs.prompt[rid] + reqs.generated[rid]
            start = engine.begin(rid) if reqs.computed[rid] == 0 else reqs.computed[rid]
            need = seq - start
            if not settings.enable_chunked_prefill and min(need, cap) > budget:
                break
            ntok = min(need, budget, cap)
            new_blocks = -(-(start + ntok) // settings.block_size)
            if new_blocks > engine.free_blocks:
                break
            engine.admitted(rid, start)
            waiting.popleft()
            running.append(rid)
            reqs.computed[rid] = start
            engine.free_blocks -= new_blocks
            reqs.blocks[rid] = new_blocks
            plan.ids.append(rid)
            plan.tokens.append(ntok)
            if plan.spec is not None:
                plan.spec.append(0)
            budget -= ntok
            plan.attn_pairs += ntok * (start + (ntok + 1) / 2)
            if ntok == need:
                plan.num_sampled += 1

    def _order(self, rid: int) -> tuple[int, int]:
        """Where ``rid`` stands under the priority policy: lower goes first."""
        assert self.priorities is not None
        return self.priorities[rid], self.arrived[rid]

    def _requeue(self, engine: Engine, rid: int) -> None:
        """Put ``rid`` in the waiting queue behind every request that goes before it."""
        waiting = engine.waiting
        at = len(waiting)
        order = self._order(rid)
        while at and self._order(waiting[at - 1]) > order:
            at -= 1
        waiting.insert(at, rid)

    @staticmethod
    def _unschedule(ids: list[int], tokens: list[int], spec: list[int] | None, rid: int) -> int:
        """Take ``rid`` out of the step being planned; the tokens it had."""
        at = ids.index(rid)
        ntok = tokens[at]
        del ids[at], tokens[at]
        if spec is not None:
            del spec[at]
        return ntok


def _totals(
    engine: Engine, ids: list[int], tokens: list[int], speculating: bool
) -> tuple[int, float, int]:
    """A step's sampled rows, attention pairs and decode context, counted afresh."""
    prompt, _, computed, generated, _ = engine.reqs.state
    num_sampled = decode_ctx = 0
    attn_pairs = 0.0
    for rid, ntok in zip(ids, tokens, strict=True):
        seq = prompt[rid] + generated[rid]
        if computed[rid] == seq - 1:
            decode_ctx += seq
            num_sampled += ntok
            if speculating:
                attn_pairs += (ntok - 1) * seq
        else:
            attn_pairs += ntok * (computed[rid] + (ntok + 1) / 2)
            if computed[rid] + ntok == seq:
                num_sampled += 1
    return num_sampled, attn_pairs, decode_ctx


def _cap(engine: Engine) -> int:
    """Tokens one request may get this step: vLLM lifts ``long_prefill_token_threshold`` when
    only one request is running or waiting (nobody to starve)."""
    threshold = engine.settings.long_prefill_token_threshold
    if threshold <= 0 or len(engine.running) + len(engine.waiting) <= 1:
        return 1 << 62
    return threshold
