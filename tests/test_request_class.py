import numpy as np

from sloguard.request_class import meets_deadlines


def _times(first: float, gaps: list[float]) -> np.ndarray:
    return np.cumsum([first, *gaps])


def test_the_first_token_must_come_within_the_ttft_limit() -> None:
    assert meets_deadlines(0.0, _times(0.2, [0.01]), 200.0, 50.0, 50.0, 2)
    assert not meets_deadlines(0.0, _times(0.201, [0.01]), 200.0, 50.0, 50.0, 2)
    assert not meets_deadlines(0.0, np.empty(0), 200.0, 50.0, 50.0, 0)


def test_deadlines_accumulate_from_the_ttft_limit_so_an_early_start_banks_slack() -> None:
    # first token at 50 ms against a 200 ms limit: token j is due by 0.2 + j * 0.05
    assert meets_deadlines(0.0, _times(0.05, [0.2, 0.01, 0.01]), 200.0, 50.0, 50.0, 4)
    # the same stall after an on-time-but-late first token misses token 1's deadline
    assert not meets_deadlines(0.0, _times(0.2, [0.06, 0.01, 0.01]), 200.0, 50.0, 50.0, 4)


def test_a_stall_misses_even_when_the_mean_tpot_is_within_the_limit() -> None:
    gaps = [0.3] + [0.01] * 8  # mean gap 42 ms < 50 ms, but token 1 is 250 ms late
    assert np.mean(gaps) < 0.05
    assert not meets_deadlines(0.0, _times(0.2, gaps), 200.0, 50.0, 50.0, 10)


def test_thinking_and_answer_tokens_have_their_own_tpot() -> None:
    # 5 thinking tokens at 50 ms then 5 answer tokens at 100 ms: due 0.2 + 0.2 + k * 0.1
    times = _times(0.2, [0.05] * 4 + [0.1] * 5)
    assert meets_deadlines(0.0, times, 200.0, 50.0, 100.0, 5)
    slower = _times(0.2, [0.05] * 4 + [0.1] * 4 + [0.11])
    assert not meets_deadlines(0.0, slower, 200.0, 50.0, 100.0, 5)
    # with one stage at 50 ms the same stream is late
    assert not meets_deadlines(0.0, times, 200.0, 50.0, 50.0, 10)


def test_the_send_time_is_the_origin() -> None:
    assert meets_deadlines(5.0, _times(5.1, [0.05]), 100.0, 50.0, 50.0, 2)
    assert not meets_deadlines(5.0, _times(5.1, [0.05]), 99.0, 50.0, 50.0, 2)
