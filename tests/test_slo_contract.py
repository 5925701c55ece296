import math

import numpy as np
import pytest

from sloguard import slo_contract
from sloguard.slo_contract import SloContract


def test_percentiles_match_linear_interpolation_by_hand() -> None:
    # 1..10: p50 = 5.5; p95 = 9 + 0.55 * 1 = 9.55; p99 = 9 + 0.91 = 9.91
    got = slo_contract.percentiles(list(range(1, 11)))
    assert got[50] == pytest.approx(5.5)
    assert got[95] == pytest.approx(9.55)
    assert got[99] == pytest.approx(9.91)


def test_percentiles_of_nothing_are_nan() -> None:
    assert all(math.isnan(v) for v in slo_contract.percentiles([]).values())


def test_tpot_excludes_the_first_token() -> None:
    # e2e 1000 ms, ttft 100 ms, 10 tokens -> 900 ms over 9 gaps
    assert slo_contract.tpot_ms(100.0, 1000.0, 10) == pytest.approx(100.0)
    assert slo_contract.tpot_ms(100.0, 100.0, 1) == 0.0


def test_request_is_good_needs_every_slo() -> None:
    slo = SloContract(ttft_ms=200, itl_ms=50, e2el_ms=1000)
    assert slo.request_is_good(200.0, 50.0, 1000.0)
    assert not slo.request_is_good(200.1, 10.0, 500.0)
    assert not slo.request_is_good(100.0, 50.1, 500.0)
    assert not slo.request_is_good(100.0, 10.0, 1000.1)
    assert SloContract(ttft_ms=200, itl_ms=50).request_is_good(100.0, 10.0, 1e9)


def test_goodput_and_attainment() -> None:
    assert slo_contract.goodput(3000, 2.0) == 1500.0
    assert slo_contract.goodput(3000, 0.0) == 0.0
    assert slo_contract.attainment(3, 4) == 0.75
    assert slo_contract.attainment(0, 0) == 0.0


def test_feasibility_bounds_percentiles_and_failures() -> None:
    slo = SloContract(ttft_ms=500, itl_ms=100, percentile=99)
    assert slo_contract.is_feasible(500.0, 100.0, 0.01, slo)
    assert not slo_contract.is_feasible(501.0, 100.0, 0.0, slo)
    assert not slo_contract.is_feasible(400.0, 101.0, 0.0, slo)
    assert not slo_contract.is_feasible(400.0, 50.0, 0.02, slo)  # more than 1% failed


def test_utility_ranks_feasible_above_infeasible_and_closer_above_farther() -> None:
    slo = SloContract(ttft_ms=500, itl_ms=100)
    feasible = slo_contract.utility(10.0, 400.0, 50.0, 0.0, slo)
    near = slo_contract.utility(9999.0, 550.0, 50.0, 0.0, slo)
    far = slo_contract.utility(9999.0, 1000.0, 150.0, 0.0, slo)
    assert feasible == 10.0
    assert near == pytest.approx(-0.1)
    assert far == pytest.approx(-(1.0 + 0.5))
    assert feasible > near > far
    assert slo_contract.utility(1.0, np.nan, np.nan, 1.0, slo) == -1e3
