import numpy as np
import pytest

from sloguard.workload import arrival_times, build_workload


def test_same_seed_same_requests(compose) -> None:
    a = build_workload(compose().workload)
    b = build_workload(compose().workload)
    assert np.array_equal(a.prompt_lens, b.prompt_lens)
    assert np.array_equal(a.arrival_times, b.arrival_times)
    c = build_workload(compose("workload.seed=1").workload)
    assert not np.array_equal(a.prompt_lens, c.prompt_lens)


def test_lengths_follow_the_config(compose) -> None:
    wl = build_workload(compose("workload.num_requests=20000").workload)
    assert wl.prompt_lens.min() >= 16 and wl.prompt_lens.max() <= 1024
    assert np.median(wl.prompt_lens) == pytest.approx(256, rel=0.05)
    fixed = build_workload(compose("workload=smoke").workload)
    assert set(fixed.output_lens.tolist()) == {16}


def test_closed_loop_ramps_up(compose) -> None:
    wl = build_workload(compose().workload)  # 32 users over 2 s
    assert wl.concurrency == 32
    assert wl.arrival_times[0] == 0.0
    assert wl.arrival_times[31] == pytest.approx(31 * 2.0 / 32)
    assert np.all(wl.arrival_times[32:] == wl.arrival_times[31])


@pytest.mark.parametrize(
    ("kind", "burstiness", "cv"), [("poisson", 1.0, 1.0), ("gamma", 0.25, 2.0)]
)
def test_open_loop_rate_and_burstiness(kind: str, burstiness: float, cv: float) -> None:
    times = arrival_times(kind, 40000, 10.0, burstiness, np.random.default_rng(0))
    gaps = np.diff(times)
    assert 1.0 / gaps.mean() == pytest.approx(10.0, rel=0.03)
    assert gaps.std() / gaps.mean() == pytest.approx(cv, rel=0.05)  # gamma CV = 1/sqrt(shape)
