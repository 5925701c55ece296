import math
from pathlib import Path

import numpy as np
import pytest

from sloguard.crash_classifier import CrashCategory, CrashInfo
from sloguard.metrics_collector import (
    GENERATION_TOKENS,
    KV_USAGE,
    PREEMPTIONS,
    PREFIX_HITS,
    PREFIX_QUERIES,
    RUNNING,
    WAITING,
    ServerMetrics,
    build_result,
    parse_metrics,
    parse_startup_log,
    requests_table,
    summarize,
)
from sloguard.request_class import RequestClasses
from sloguard.result import RequestRecord
from sloguard.slo_contract import SloContract


def _req(rid: int, send: float, times: list[float], error: str | None = None) -> RequestRecord:
    return RequestRecord(
        rid,
        prompt_len=10,
        target_output_len=len(times) or 3,
        scheduled_time=send,
        send_time=send,
        token_times=np.array(times),
        error=error,
    )


@pytest.fixture
def records() -> list[RequestRecord]:
    return [
        # ttft 100 ms, tokens every 50 ms: tpot 50, e2e 200
        _req(0, 0.0, [0.1, 0.15, 0.2]),
        # ttft 300 ms, gaps 100 ms: tpot 100, e2e 500
        _req(1, 0.5, [0.8, 0.9, 1.0]),
        # failed: never good, no latencies
        _req(2, 0.2, [], error="HTTP 500"),
    ]


def test_summary_by_hand(records: list[RequestRecord]) -> None:
    slo = SloContract(ttft_ms=200, itl_ms=80)
    m = summarize(records, duration_s=1.0, slo=slo)
    assert m["completed"] == 2 and m["failed"] == 1 and m["num_requests"] == 3
    assert m["ttft_mean_ms"] == pytest.approx(200.0)
    assert m["ttft_p50_ms"] == pytest.approx(200.0)
    assert m["tpot_mean_ms"] == pytest.approx(75.0)
    # pooled ITLs: 50, 50, 100, 100 -> p50 = 75
    assert m["itl_p50_ms"] == pytest.approx(75.0)
    assert m["e2el_p99_ms"] == pytest.approx(200 + 0.99 * 300)
    assert m["output_throughput_tok_s"] == pytest.approx(6.0)
    # only request 0 meets ttft<=200 and tpot<=80
    assert m["goodput_tok_s"] == pytest.approx(3.0)
    assert m["request_goodput_rps"] == pytest.approx(1.0)
    assert m["attainment"] == pytest.approx(1 / 3)


def test_result_feasibility_counts_failures(records: list[RequestRecord]) -> None:
    loose = SloContract(ttft_ms=1000, itl_ms=1000)
    result = build_result({"max_num_seqs": 4}, loose, records, 1.0)
    assert not result.feasible  # a third of the requests failed
    assert result.utility == pytest.approx(-(1 / 3 - 0.01))
    ok = build_result({"max_num_seqs": 4}, loose, records[:2], 1.0)
    assert ok.feasible and ok.utility == pytest.approx(ok.metrics["goodput_tok_s"])


def test_crash_has_no_utility_and_no_goodput(records: list[RequestRecord]) -> None:
    crash = CrashInfo(CrashCategory.OOM, "x", "CUDA out of memory", phase="load")
    result = build_result({}, SloContract(), records, 1.0, crash=crash)
    assert not result.feasible and result.utility is None
    assert result.metrics["completed"] == 2  # what finished before the crash is kept
    assert not [k for k in result.metrics if "goodput" in k]
    assert build_result({}, SloContract(), records, 1.0).metrics["goodput_tok_s"] > 0
    empty = build_result({}, SloContract(), crash=crash)
    assert empty.metrics == {}


def test_requests_table_rows(records: list[RequestRecord]) -> None:
    rows = requests_table(records, SloContract(ttft_ms=200, itl_ms=80))
    assert [r["good"] for r in rows] == [True, False, False]
    assert rows[1]["ttft_ms"] == pytest.approx(300.0)
    assert rows[1]["max_itl_ms"] == pytest.approx(100.0)
    assert rows[2]["error"] == "HTTP 500" and rows[2]["ttft_ms"] is None
    assert not math.isnan(rows[0]["e2el_ms"])


DATA = Path(__file__).parent / "data"


def test_parse_metrics_reads_a_real_vllm_scrape() -> None:
    values = parse_metrics((DATA / "vllm_cpu_metrics_under_load.txt").read_text())
    assert values[RUNNING] == 4.0 and values[WAITING] == 0.0
    assert values[KV_USAGE] == pytest.approx(0.000791922, rel=1e-6)
    assert values[GENERATION_TOKENS] == 8623.0
    assert values["vllm:prompt_tokens_total"] == 34829.0
    assert values[PREEMPTIONS] == 0.0 and values[PREFIX_QUERIES] == 0.0
    assert all(name.startswith("vllm:") for name in values)  # histograms etc. are left out


def test_parse_metrics_sums_engines_counts_and_takes_the_fullest_kv_cache() -> None:
    text = (
        "# TYPE vllm:num_preemptions counter\n"
        'vllm:num_preemptions_total{engine="0",model_name="m"} 3.0\n'
        'vllm:num_preemptions_total{engine="1",model_name="m"} 4.0\n'
        "# TYPE vllm:kv_cache_usage_perc gauge\n"
        'vllm:kv_cache_usage_perc{engine="0",model_name="m"} 0.8\n'
        'vllm:kv_cache_usage_perc{engine="1",model_name="m"} 0.6\n'
        "# TYPE vllm:num_requests_running gauge\n"
        'vllm:num_requests_running{engine="0",model_name="m"} 5.0\n'
        'vllm:num_requests_running{engine="1",model_name="m"} 2.0\n'
    )
    assert parse_metrics(text) == {PREEMPTIONS: 7.0, KV_USAGE: 0.8, RUNNING: 7.0}


def test_speculations_acceptance_is_accepted_over_drafted_tokens_in_the_window() -> None:
    def scrape(drafted: float, accepted: float) -> dict[str, float]:
        return parse_metrics(
            "# TYPE vllm:spec_decode_num_draft_tokens counter\n"
            f'vllm:spec_decode_num_draft_tokens_total{{engine="0",model_name="m"}} {drafted}\n'
            "# TYPE vllm:spec_decode_num_accepted_tokens counter\n"
            f'vllm:spec_decode_num_accepted_tokens_total{{engine="0",model_name="m"}} {accepted}\n'
            "# TYPE vllm:spec_decode_num_accepted_tokens_per_pos counter\n"
            'vllm:spec_decode_num_accepted_tokens_per_pos_total{engine="0",position="0"} 99.0\n'
        )

    s = ServerMetrics(before=scrape(100, 40), after=scrape(300, 190)).summary()
    assert s["spec_draft_tokens"] == 200 and s["spec_acceptance_rate"] == 0.75
    idle = ServerMetrics(before=scrape(300, 190), after=scrape(300, 190)).summary()
    assert idle["spec_draft_tokens"] == 0 and idle["spec_acceptance_rate"] == 0.0
    assert "spec_acceptance_rate" not in ServerMetrics(before={RUNNING: 1}, after={}).summary()


def test_server_metrics_deltas_peaks_and_hit_rate() -> None:
    metrics = ServerMetrics(
        before={PREEMPTIONS: 5, PREFIX_QUERIES: 100, PREFIX_HITS: 10, GENERATION_TOKENS: 0},
        samples=[{KV_USAGE: 0.2, WAITING: 3, RUNNING: 8}, {KV_USAGE: 0.7, WAITING: 1, RUNNING: 6}],
        after={PREEMPTIONS: 9, PREFIX_QUERIES: 300, PREFIX_HITS: 160, GENERATION_TOKENS: 640,
               KV_USAGE: 0.0, WAITING: 0, RUNNING: 0},
    )  # fmt: skip
    s = metrics.summary()
    assert s["num_preemptions"] == 4 and s["server_generation_tokens"] == 640
    assert s["prefix_cache_hit_rate"] == pytest.approx(150 / 200)
    assert s["peak_kv_usage"] == 0.7 and s["max_running"] == 8
    assert s["max_waiting"] == 3 and s["mean_waiting"] == pytest.approx(4 / 3)
    assert s["metrics_scrapes"] == 3
    assert ServerMetrics().summary() == {}


def test_parse_startup_log_of_a_real_server() -> None:
    facts = parse_startup_log((DATA / "vllm_cpu_logs" / "served_ok.log").read_text())
    assert facts == {"kv_cache_tokens": 425088.0, "max_concurrency": 415.12, "init_engine_s": 0.84}
    assert parse_startup_log("nothing here") == {}


def _classes(**arrays) -> RequestClasses:
    n = len(arrays["class_ids"])
    base = {
        "ttft_ms": np.full(n, 100.0),
        "tpot_ms": np.full(n, 50.0),
        "answer_tpot_ms": np.full(n, 50.0),
        "answer_from": np.full(n, 10),
    }
    return RequestClasses(names=("chat", "agent"), **{**base, **arrays})


def _record(rid: int, send: float, ttft: float, gaps: list[float]) -> RequestRecord:
    times = np.cumsum([send + ttft, *gaps])
    return RequestRecord(rid, 8, len(times), send, send, token_times=times)


def test_multi_slo_attainment_counts_sessions_per_class() -> None:
    # chat requests 0 and 1 (1 misses its TTFT); agent session 2 has rounds 2 and 3 (3 stalls)
    # and agent session 4 a single good round
    records = [
        _record(0, 0.0, 0.05, [0.01, 0.01]),
        _record(1, 0.0, 0.15, [0.01, 0.01]),
        _record(2, 0.0, 0.05, [0.01]),
        _record(3, 1.0, 0.05, [0.4, 0.01]),
        _record(4, 0.0, 0.05, [0.01, 0.01, 0.01]),
    ]
    classes = _classes(class_ids=np.array([0, 0, 1, 1, 1]), sessions=np.array([0, 1, 2, 2, 4]))
    m = summarize(records, 2.0, SloContract(), classes)
    assert m["attainment"] == pytest.approx(2 / 4)  # sessions 0 and 4 of 0, 1, 2, 4
    assert m["request_goodput_rps"] == pytest.approx(2 / 2.0)
    assert m["goodput_tok_s"] == pytest.approx((3 + 4) / 2.0)
    assert m["class/chat/attainment"] == 0.5 and m["class/chat/sessions"] == 2
    assert m["class/agent/attainment"] == 0.5 and m["class/agent/sessions"] == 2
    assert m["class/agent/goodput_tok_s"] == pytest.approx(4 / 2.0)
    assert m["class/chat/ttft_p50_ms"] == pytest.approx(100.0)
    rows = requests_table(records, SloContract(), classes)
    assert [r["good"] for r in rows] == [True, False, False, False, True]
    assert [r["class"] for r in rows] == ["chat", "chat", "agent", "agent", "agent"]
    assert [r["session"] for r in rows] == [0, 1, 2, 2, 4]


def test_a_multi_slo_trial_is_feasible_at_the_attainment_target() -> None:
    records = [_record(i, 0.0, 0.05 if i < 9 else 0.5, [0.01]) for i in range(10)]
    classes = _classes(class_ids=np.zeros(10, int), sessions=np.arange(10))
    at_90 = build_result({}, SloContract(attainment_target=0.9), records, 1.0, classes=classes)
    assert at_90.feasible and at_90.utility == pytest.approx(18.0)  # 9 good x 2 tokens / 1 s
    at_95 = build_result({}, SloContract(attainment_target=0.95), records, 1.0, classes=classes)
    assert not at_95.feasible and at_95.utility == pytest.approx(-0.05)
