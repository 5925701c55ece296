import math

import numpy as np
import pytest

from sloguard.crash_classifier import CrashCategory, CrashInfo
from sloguard.metrics_collector import build_result, requests_table, summarize
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


def test_crash_has_no_utility(records: list[RequestRecord]) -> None:
    crash = CrashInfo(CrashCategory.OOM, "x", "CUDA out of memory", phase="load")
    result = build_result({}, SloContract(), records, 1.0, crash=crash)
    assert not result.feasible and result.utility is None
    assert result.metrics["completed"] == 2  # what finished before the crash is kept
    empty = build_result({}, SloContract(), crash=crash)
    assert empty.metrics == {}


def test_requests_table_rows(records: list[RequestRecord]) -> None:
    rows = requests_table(records, SloContract(ttft_ms=200, itl_ms=80))
    assert [r["good"] for r in rows] == [True, False, False]
    assert rows[1]["ttft_ms"] == pytest.approx(300.0)
    assert rows[1]["max_itl_ms"] == pytest.approx(100.0)
    assert rows[2]["error"] == "HTTP 500" and rows[2]["ttft_ms"] is None
    assert not math.isnan(rows[0]["e2el_ms"])
