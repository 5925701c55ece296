"""Per-request SLOs of a multi-SLO workload, and the SLOs-Serve rule that judges a request.

Each request (one prefill/decode round) carries its class, its session (the user request a
tool-calling loop's rounds belong to), a TTFT limit and TPOT limits for two stages: tokens before
``answer_from`` (thinking, or the only stage) and from it on (the answer). Deadlines are
cumulative, as in SLOs-Serve: token ``j`` is due by ``t0 + sum of the TPOT limits of tokens 1..j``
with ``t0 = max(send + TTFT limit, first token)``, so a request that gets its first token early
banks the slack and one long stall can miss a deadline even when the mean TPOT is fine.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class RequestClasses:
    """The SLO class of every request of a workload (arrays in workload order).

    Args:
        names: Class names; ``class_ids`` index them.
        class_ids: Class of each request.
        sessions: Session of each request: the index of its session's first round.
        ttft_ms: TTFT limit of each request.
        tpot_ms: TPOT limit of the tokens before ``answer_from``.
        answer_tpot_ms: TPOT limit of the tokens from ``answer_from`` on.
        answer_from: Index of each request's first answer token (its output length when it has
            one stage).
    """

    names: tuple[str, ...]
    class_ids: np.ndarray
    sessions: np.ndarray
    ttft_ms: np.ndarray
    tpot_ms: np.ndarray
    answer_tpot_ms: np.ndarray
    answer_from: np.ndarray

    def meets_slo(self, index: int, send_time: float, token_times: np.ndarray) -> bool:
        """Whether request ``index``, sent at ``send_time``, met its TTFT and every deadline."""
        return meets_deadlines(
            send_time,
            token_times,
            float(self.ttft_ms[index]),
            float(self.tpot_ms[index]),
            float(self.answer_tpot_ms[index]),
            int(self.answer_from[index]),
        )


def meets_deadlines(
    send_time: float,
    token_times: np.ndarray,
    ttft_ms: float,
    tpot_ms: float,
    answer_tpot_ms: float,
    answer_from: int,
) -> bool:
    """SLOs-Serve's rule: first token within ``ttft_ms``; token ``j`` by its cumulative deadline.

    Args:
        send_time: When the request was sent (seconds).
        token_times: When each output token arrived (seconds, same clock).
        ttft_ms: TTFT limit.
        tpot_ms: Per-token limit of tokens ``1 .. answer_from - 1``.
        answer_tpot_ms: Per-token limit of tokens ``answer_from ..``.
        answer_from: Index of the first answer token.
    """
    if token_times.size == 0 or (token_times[0] - send_time) * 1e3 > ttft_ms:
        return False
    start = max(send_time + ttft_ms * 1e-3, float(token_times[0]))
    gaps = token_times.size - 1
    if answer_from > gaps:  # every token in the first tier
        steps = np.full(gaps, tpot_ms * 1e-3)
    else:
        steps = np.where(np.arange(1, token_times.size) < answer_from, tpot_ms, answer_tpot_ms)
        steps *= 1e-3
    return bool(np.all(token_times[1:] <= start + np.cumsum(steps) + 1e-9))
