import numpy as np
import pytest

from sloguard.exceptions import ConfigError
from sloguard.workload import Workload, arrival_times, build_workload, read_trace
from tests.conftest import with_limits


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


def _trace(path, rows: str, azure: bool = False):
    header = (
        "TIMESTAMP,ContextTokens,GeneratedTokens"
        if azure
        else ("arrived_at,num_prefill_tokens,num_decode_tokens")
    )
    path.write_text(header + "\n" + rows)
    return path


def test_read_trace_both_column_conventions(tmp_path) -> None:
    vidur = _trace(tmp_path / "v.csv", "0.5,10,3\n1.0,20,4\n2.0,30,5\n")
    arrivals, prompts, outputs = read_trace(vidur)
    assert arrivals.tolist() == [0.0, 0.5, 1.5] and prompts.tolist() == [10, 20, 30]
    assert outputs.tolist() == [3, 4, 5]
    azure = _trace(
        tmp_path / "a.csv",
        "2023-11-16 18:15:46.6805900,374,44\n2023-11-16 18:15:50.9951690,396,109\n"
        "2023-11-16 18:15:51.2,100,7\n",
        azure=True,
    )
    arrivals, prompts, _ = read_trace(azure, time_scale=0.5)
    assert arrivals == pytest.approx([0.0, 4.3145790 / 2, 4.51941 / 2], abs=1e-6)
    assert prompts.tolist() == [374, 396, 100]
    later, _, _ = read_trace(vidur, start_s=0.5)
    assert later.tolist() == [0.0, 1.0]  # from the first request at or after 0.5 s in


def test_trace_workload_replays_scaled_and_clipped(compose, tmp_path) -> None:
    rows = "".join(f"{0.1 * i},{100 + i},{5000 if i == 3 else 10}\n" for i in range(20))
    trace = _trace(tmp_path / "t.csv", rows)
    cfg = compose(
        "workload=trace",
        f"workload.trace_path={trace}",
        "workload.num_requests=10",
        "workload.trace_time_scale=2.0",
    )
    wl = build_workload(cfg.workload)
    assert len(wl) == 10 and wl.concurrency == 0
    assert wl.arrival_times == pytest.approx(np.arange(10) * 0.2)
    assert wl.prompt_lens.tolist() == list(range(100, 110))
    assert wl.output_lens[3] == 2048 and wl.output_lens[0] == 10  # clipped to output_len.high


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ((), "workload.trace_path is required for workload.arrival=trace"),
        (("workload.trace_path=/no/trace.csv",), "workload.trace_path='/no/trace.csv' does not"),
        (("BADCOLS",), "has columns ['a', 'b']; a trace needs (arrived_at, num_prefill_tokens"),
        (
            ("FEW", "workload.num_requests=5"),
            "workload.num_requests=5 is more than the 3 requests",
        ),
        (("FEW", "workload.trace_time_scale=0"), "workload.trace_time_scale=0.0 is invalid"),
    ],
)
def test_bad_trace_input_is_one_clear_error(compose, tmp_path, overrides, message) -> None:
    bad = tmp_path / "bad.csv"
    bad.write_text("a,b\n1,2\n")
    few = _trace(tmp_path / "few.csv", "0,1,1\n1,1,1\n2,1,1\n")
    swap = {"BADCOLS": f"workload.trace_path={bad}", "FEW": f"workload.trace_path={few}"}
    with pytest.raises(ConfigError) as info:
        compose("workload=trace", *[swap.get(o, o) for o in overrides])
    assert message in str(info.value)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize(
    ("name", "rate", "cv", "prompt_mean", "output_mean"),
    [("azure-code", 2.57, 13.2, 2048, 28), ("azure-conv", 5.53, 1.09, 1155, 211)],
)
def test_azure_shaped_workloads_match_the_published_statistics(
    compose, name, rate, cv, prompt_mean, output_mean
) -> None:
    # many requests so the sample statistics settle (the configs draw 800 and 1000)
    wl = build_workload(
        compose(f"workload={name}", "workload.num_requests=200000", "allow_large=true").workload
    )
    gaps = np.diff(wl.arrival_times)
    assert len(wl) / wl.arrival_times[-1] == pytest.approx(rate, rel=0.1)
    assert gaps.std() / gaps.mean() == pytest.approx(cv, rel=0.15)
    # clipping to [low, high] trims the lognormal tail a little
    assert wl.prompt_lens.mean() == pytest.approx(prompt_mean, rel=0.06)
    assert wl.output_lens.mean() == pytest.approx(output_mean, rel=0.06)


def _zero_load(compose, *overrides):
    from functools import partial

    from sloguard.backends.sim import zero_load_ttft_ms

    cfg = compose(*overrides)
    return cfg, partial(zero_load_ttft_ms, cfg.model, cfg.hardware)


def test_mixed_classes_draw_their_own_lengths_and_slowdown_ttft_limits(compose) -> None:
    cfg, zero_load = _zero_load(compose, "workload=mixed")
    wl = build_workload(cfg.workload, zero_load)
    classes = wl.classes
    assert classes.names == ("chat", "code", "summary") and len(wl) == 300 and wl.follows.max() < 0
    shares = np.bincount(classes.class_ids, minlength=3) / len(wl)
    assert shares == pytest.approx([1 / 3] * 3, abs=0.08)
    summary = classes.class_ids == 2
    assert wl.prompt_lens[summary].min() >= 256 and wl.prompt_lens[summary].mean() > 1000
    assert wl.prompt_lens[~summary].mean() < 700
    slowdown = np.array([5.0, 5.0, 3.0])[classes.class_ids]
    assert classes.ttft_ms == pytest.approx(slowdown * zero_load(wl.prompt_lens))
    assert classes.tpot_ms.tolist() == [[100.0, 50.0, 100.0][k] for k in classes.class_ids]
    assert (classes.answer_from == wl.output_lens).all()  # one decode stage
    again = build_workload(cfg.workload, zero_load)
    assert (again.prompt_lens == wl.prompt_lens).all()
    assert (again.classes.ttft_ms == classes.ttft_ms).all()


def test_tool_calling_rounds_extend_the_previous_prompt_and_take_the_final_slos(compose) -> None:
    cfg, zero_load = _zero_load(compose, "workload=tool-calling", "workload.num_requests=50")
    wl = build_workload(cfg.workload, zero_load)
    c = wl.classes
    assert len(wl) == 150 and wl.num_first == 50 and (wl.follows[:50] == -1).all()
    nxt = wl.next_rounds()
    for s in range(50):
        second = nxt[s]
        third = nxt[second]
        assert nxt[third] == -1 and (c.sessions[[s, second, third]] == s).all()
        for before, after in ((s, second), (second, third)):
            assert wl.follows[after] == before
            added = wl.prompt_lens[after] - wl.prompt_lens[before] - wl.output_lens[before]
            assert 8 <= added <= 512  # round_prompt_len: the tool's result
            assert wl.arrival_times[after] == pytest.approx(0.2)  # tool latency
        assert c.tpot_ms[[s, second, third]].tolist() == [50.0, 50.0, 100.0]
    assert c.ttft_ms == pytest.approx(3.0 * zero_load(wl.prompt_lens))


def test_reasoning_streams_thinking_then_answer_tokens(compose) -> None:
    cfg, zero_load = _zero_load(compose, "workload=reasoning", "workload.num_requests=40")
    wl = build_workload(cfg.workload, zero_load)
    c = wl.classes
    thinking = c.answer_from
    answer = wl.output_lens - thinking
    assert (thinking >= 32).all() and (answer >= 8).all() and (answer <= 512).all()
    assert set(c.tpot_ms) == {50.0} and set(c.answer_tpot_ms) == {100.0}


def test_rescaling_the_rate_keeps_the_requests_and_the_tool_latencies(compose) -> None:
    cfg, zero_load = _zero_load(compose, "workload=tool-calling", "workload.num_requests=50")
    wl = build_workload(cfg.workload, zero_load)
    fast = wl.at_rate(3 * wl.offered_rate())
    assert fast.offered_rate() == pytest.approx(3 * wl.offered_rate())
    assert (fast.arrival_times[50:] == wl.arrival_times[50:]).all()
    assert np.diff(fast.arrival_times[:50]) == pytest.approx(np.diff(wl.arrival_times[:50]) / 3)
    assert (fast.prompt_lens == wl.prompt_lens).all() and fast.classes is wl.classes


def test_a_slowdown_ttft_needs_a_zero_load_model(compose) -> None:
    with pytest.raises(ValueError, match="ttft_slowdown"):
        build_workload(compose("workload=chatbot").workload)


def test_priorities_rank_the_classes_tightest_first() -> None:
    plain = Workload.plain(8, 4, np.zeros(4), 0)
    assert plain.priorities() == [0, 0, 0, 0]
    classed = with_limits(plain, [500, 100, 500, 2000], [50, 50, 20, 50])
    # (TTFT, TPOT): (100, 50) first, then (500, 20), (500, 50), (2000, 50)
    assert classed.priorities() == [2, 0, 1, 3]


def test_priorities_rank_classes_by_their_median_limits_not_each_request(compose) -> None:
    """``mixed`` sets TTFT limits as slowdowns of each prompt's zero-load TTFT: a class's
    requests have different limits, and each request takes its class's rank."""
    from sloguard.evaluation import workload_from_config

    workload = workload_from_config(compose("workload=mixed"))
    classes = workload.classes
    ranks = workload.priorities()
    assert len(set(classes.ttft_ms.tolist())) > len(classes.names)  # per-request limits
    by_class = {}
    for c, rank in zip(classes.class_ids.tolist(), ranks, strict=True):
        by_class.setdefault(c, set()).add(rank)
    assert all(len(r) == 1 for r in by_class.values())  # one rank a class
    rank = {c: r.pop() for c, r in by_class.items()}
    medians = {c: np.median(classes.ttft_ms[classes.class_ids == c]) for c in rank}
    assert len(set(medians.values())) == len(medians)
    assert [rank[c] for c in sorted(rank, key=medians.__getitem__)] == list(range(len(rank)))
