"""Property-based fuzzing of every config field and of trace files.

Every value either runs (one configuration evaluated on the simulator) or is refused with one
line naming the field; no traceback, and nothing written either way.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from omegaconf import OmegaConf

from sloguard.cli import evaluate
from sloguard.exceptions import ConfigError
from sloguard.tracking import flatten
from sloguard.tune import check_overrides, compose_config
from sloguard.workload import build_workload

# a small base, so a value that is accepted is also run (on the simulator, in well under 1 s)
BASE = ["workload=smoke", "workload.num_requests=8"]
# a multi-SLO base, so the request-class fields are fuzzed too
CLASSES = ["workload=tool-calling", "workload.num_requests=8"]
FUZZ = settings(
    max_examples=int(os.environ.get("SLOGUARD_FUZZ_EXAMPLES", "120")),
    deadline=None,
    derandomize=os.environ.get("SLOGUARD_FUZZ_RANDOM") != "1",  # CI: the same cases each run
    database=None,  # nothing written, not even hypothesis's example database
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
# every field but these: the server's launch command and environment (the sim has no server),
# and the sim's stand-in for a launch, which sleeps as long as it is told (up to a day)
SKIP = {"backend.command", "backend.python", "backend.env", "backend.startup_sleep_s"}


def _fields(base: list[str]) -> list[tuple[str, Any]]:
    data = OmegaConf.to_container(compose_config(base), resolve=True)
    assert isinstance(data, dict)
    flat = flatten(data)
    out = []
    for key, value in flat.items():
        if any(key == s or key.startswith(s + ".") for s in SKIP):
            continue
        if isinstance(value, list) and value and isinstance(value[0], dict):
            for i, item in enumerate(value):  # request classes: every field of the first
                out += [(f"{key}.{i}.{k}", v) for k, v in flatten(item).items() if i == 0]
        else:
            out.append((key, value))
    return out


FIELDS = sorted(
    {**dict(_fields(BASE)), **{k: v for k, v in _fields(CLASSES) if ".classes." in k}}.items()
)

_SPECIAL = [math.nan, math.inf, -math.inf, 0, -1, -0.5, 1e300, -1e300, 2**63, 1e-300, 0.5, 3]
numbers = st.one_of(
    st.sampled_from(_SPECIAL),
    st.integers(-1000, 5000),
    st.floats(allow_nan=True, allow_infinity=True, width=64),
)
texts = st.text(st.characters(codec="utf-8", exclude_characters="\x00"), max_size=30)


def _literal(value: Any) -> str:
    """A Hydra override value: numbers as written, text quoted."""
    if isinstance(value, str):
        return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"
    if isinstance(value, float) and math.isnan(value):
        return "nan"
    if isinstance(value, float) and math.isinf(value):
        return "inf" if value > 0 else "-inf"
    if isinstance(value, list):
        return "[" + ",".join(_literal(v) for v in value) + "]"
    return repr(value)


@st.composite
def overrides(draw: st.DrawFn) -> tuple[list[str], str]:
    key, default = draw(st.sampled_from(FIELDS))
    if isinstance(default, bool):
        value: Any = draw(st.one_of(st.booleans(), numbers, texts))
    elif isinstance(default, str):
        value = draw(st.one_of(texts, numbers))
    elif isinstance(default, list):
        value = draw(st.lists(st.one_of(numbers, texts), max_size=3))
    else:  # numbers, and the optional fields (null by default)
        value = draw(st.one_of(numbers, numbers, texts))
    base = CLASSES if ".classes." in key else BASE
    return [*base, f"{key}={_literal(value)}"], key


def _files(root: Path) -> set[Path]:
    return {p for p in root.rglob("*")}


@FUZZ
@given(case=overrides())
def test_every_field_runs_or_is_refused_with_one_line(case, study_env, tmp_path: Path) -> None:
    args, key = case
    before = _files(tmp_path)
    try:
        check_overrides(args)
    except ConfigError as e:
        message = str(e)
        assert "\n" not in message, message
        assert key.split(".")[-1] in message or "Error merging override" in message, message
        event("refused")
    else:
        result = evaluate(args)  # accepted: it runs, on the simulator
        assert "metrics" in result
        event("ran")
    assert _files(tmp_path) == before  # nothing written


_ROW = st.tuples(
    st.one_of(st.floats(allow_nan=True, allow_infinity=True), st.integers(-100, 10**6)),
    st.one_of(st.integers(-5, 5000), st.floats(allow_nan=True), st.just("x")),
    st.one_of(st.integers(-5, 5000), st.floats(allow_nan=True), st.just("")),
)


@st.composite
def traces(draw: st.DrawFn) -> bytes:
    kind = draw(st.sampled_from(["valid", "valid", "rows", "bytes", "header"]))
    if kind == "bytes":
        return draw(st.binary(max_size=200))
    header = "arrived_at,num_prefill_tokens,num_decode_tokens"
    if kind == "header":
        header = draw(st.sampled_from(["", "a,b,c", "TIMESTAMP,ContextTokens", header + ",x"]))
    if kind == "valid":  # arrivals in order, whole token counts; sometimes one cell spoilt
        gaps = draw(st.lists(st.floats(0, 100), min_size=1, max_size=12))
        counts = st.integers(0, 10**6)
        rows = [(sum(gaps[: i + 1]), draw(counts), draw(counts)) for i in range(len(gaps))]
        if draw(st.booleans()):
            i, j = draw(st.integers(0, len(rows) - 1)), draw(st.integers(0, 2))
            cell = draw(st.sampled_from([-1, "nan", "", "x", 1.5, "inf", -1e9]))
            rows[i] = tuple(cell if k == j else v for k, v in enumerate(rows[i]))
    else:
        rows = draw(st.lists(_ROW, min_size=0, max_size=12))
    return (header + "\n" + "".join(f"{t},{p},{o}\n" for t, p, o in rows)).encode()


@FUZZ
@given(content=traces())
def test_any_trace_file_runs_or_is_refused_with_one_line(
    content: bytes, study_env, tmp_path: Path
) -> None:
    trace = tmp_path / "trace.csv"
    trace.write_bytes(content)
    args = ["workload=trace", f"workload.trace_path={trace}", "workload.num_requests=2"]
    before = _files(tmp_path)
    try:
        check_overrides(args)
    except ConfigError as e:
        assert "\n" not in str(e) and "workload." in str(e), str(e)
        event("refused")
    else:
        event("ran")
        workload = build_workload(compose_config(args).workload)
        assert len(workload) == 2
        assert workload.prompt_lens.min() >= 1 and workload.output_lens.min() >= 1
        arrivals = list(workload.arrival_times)
        assert arrivals == sorted(arrivals) and all(math.isfinite(a) for a in arrivals)
    assert _files(tmp_path) == before


@pytest.mark.parametrize(
    "rows",
    [
        "0,8,4\n1,-3,4\n",  # a negative token count
        "0,8,4\n1,nan,4\n",  # NaN
        "5,8,4\n1,8,4\n",  # back in time
        "0,8.5,4\n1,8,4\n",  # a fraction of a token
        "x,8,4\n1,8,4\n",  # not a time
    ],
)
def test_a_bad_trace_row_is_named(rows: str, study_env, tmp_path: Path) -> None:
    trace = tmp_path / "t.csv"
    trace.write_text("arrived_at,num_prefill_tokens,num_decode_tokens\n" + rows)
    with pytest.raises(ConfigError, match=r"workload.trace_path=.* row [12]: "):
        check_overrides(["workload=trace", f"workload.trace_path={trace}"])
