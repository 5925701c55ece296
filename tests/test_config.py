from __future__ import annotations

from pathlib import Path

import pytest

from sloguard.config import flatten, schema_defaults, to_container
from sloguard.exceptions import ConfigError
from sloguard.tune import check_overrides
from tests.conftest import REPO, run_cli

GROUPS = sorted(p.name for p in (REPO / "conf").iterdir() if p.is_dir())
OPTIONS = [(g, f.stem) for g in GROUPS for f in sorted((REPO / "conf" / g).glob("*.yaml"))]


def test_every_group_has_options() -> None:
    assert GROUPS == [
        "backend",
        "hardware",
        "model",
        "optimizer",
        "prior",
        "slo",
        "space",
        "workload",
    ]
    assert {"qwen2-1.5b", "llama-3.1-8b", "tiny-random"} <= {o for g, o in OPTIONS if g == "model"}
    assert {"a100-40gb", "h100-80gb", "l4-24gb", "cpu"} <= {
        o for g, o in OPTIONS if g == "hardware"
    }


@pytest.mark.parametrize(("group", "option"), OPTIONS)
def test_every_config_file_composes_and_validates(
    compose, group: str, option: str, tmp_path: Path
) -> None:
    extra = []
    if (group, option) == ("workload", "trace"):  # needs the user's trace file
        trace = tmp_path / "t.csv"
        trace.write_text("arrived_at,num_prefill_tokens,num_decode_tokens\n" + "0,8,4\n" * 300)
        extra = [f"workload.trace_path={trace}"]
    cfg = compose(f"{group}={option}", *extra)
    assert cfg[group].name == option  # every option names itself


def test_defaults_are_the_seed_setting(compose) -> None:
    cfg = compose()
    assert (cfg.model.name, cfg.hardware.name) == ("qwen2-1.5b", "a100-40gb")
    assert (cfg.slo.ttft_ms, cfg.slo.itl_ms, cfg.slo.percentile) == (500, 100, 99)
    assert (cfg.budget, cfg.backend.name) == (15, "sim")


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        (
            "optimizer=foo",
            "optimizer='foo' is not known; choose one of: constrained-bo, grid, "
            "random, scoot, tba, tba-tpe, tpe",
        ),
        ("optimizer=tba-tpe optimizer.handoff=0", "optimizer.handoff=0.0 is invalid"),
        (
            "optimizer=tba-tpe optimizer.anneal=sideways",
            "optimizer.anneal='sideways' is not known; choose one of: handoff, budget",
        ),
        ("optimizer=grid optimizer.grid_util_step=0", "optimizer.grid_util_step=0.0 is invalid"),
        ("space.kv_overcommit=0", "space.kv_overcommit=0.0 is invalid"),
        (
            "space.kv_cache_dtype=[auto,fp4]",
            "space.kv_cache_dtype='fp4' is not known; choose one of: auto, fp8",
        ),
        ("hardware.kv_cache_dtypes=[int4]", "hardware.kv_cache_dtypes='int4' is not known"),
        (
            "space.tensor_parallel_size=[1,0]",
            "space.tensor_parallel_size has 0; each must be in [1, 1024]",
        ),
        ("space.block_size=[16,0]", "space.block_size has 0; each must be in [1, 4096]"),
        (
            "space.num_speculative_tokens=[0,17]",
            "space.num_speculative_tokens has 17; each must be in [0, 16] (0: no speculation)",
        ),
        (
            "space.num_speculative_tokens=[0,4] space.spec_decode=[false,true]",
            "space.num_speculative_tokens is vLLM's own n-gram speculation; it cannot be "
            "combined with the simulator's draft-model speculation",
        ),
        ("knobs.num_speculative_tokens=-1", "knobs.num_speculative_tokens=-1 is invalid"),
        ("hardware.block_size_multiple=0", "hardware.block_size_multiple=0 is invalid"),
        (
            "hardware.platform=tpu",
            "hardware.platform='tpu' is not known; choose one of: cuda, cpu",
        ),
        (
            "space.data_parallel_size=[2] space.router=[round-robin]",
            "space.data_parallel_size is vLLM's own engines behind its balancer; it cannot be "
            "combined with the simulator's replicas and router",
        ),
        (
            "space.scheduling_policy=[fcfs,lifo]",
            "space.scheduling_policy='lifo' is not known; choose one of: fcfs, priority",
        ),
        (
            "space.long_prefill_token_threshold=[0,-64]",
            "space.long_prefill_token_threshold has -64; each must be >= 0",
        ),
        (
            "optimizer=tba optimizer.start=best",
            "optimizer.start='best' is not known; choose one of: random, defaults",
        ),
        ("model=gpt5", "choose one of: llama-3.1-8b, qwen2-1.5b, tiny-random"),
        ("hardware=tpu", "hardware='tpu' is not known"),
        ("budget=-1", "budget=-1 is invalid; it must be an integer >= 1"),
        ("budget=abc", "budget=abc"),
        ("slo.ttft_ms=0", "slo.ttft_ms=0.0 is invalid; it must be a finite number > 0"),
        ("slo.itl_ms=-5", "slo.itl_ms=-5.0 is invalid"),
        ("space.foo.low=3", "'space.foo' is not known; choose one of: name, quantization"),
        ("space.max_num_seqs.low=300", "low=300, high=128 is invalid"),
        ("space.quantization.choices=[int3]", "'int3' is not known"),
        ("knobs.max_num_seq=3", "'knobs.max_num_seq' is not known"),
        ("knobs.gpu_memory_utilization=1.5", "must be a finite number > 0 and <= 1"),
        ("knobs.kv_cache_dtype=fp4", "knobs.kv_cache_dtype='fp4' is not known"),
        ("knobs.long_prefill_token_threshold=-1", "knobs.long_prefill_token_threshold=-1 is"),
        ("knobs.scheduling_policy=sjf", "knobs.scheduling_policy='sjf' is not known; choose"),
        ("knobs.tensor_parallel_size=0", "knobs.tensor_parallel_size=0 is invalid"),
        ("knobs.data_parallel_size=-2", "knobs.data_parallel_size=-2 is invalid"),
        ("knobs.block_size=100000", "knobs.block_size=100000 is invalid"),
        (
            "knobs.long_prefill_token_threshold=256",
            "knob 'long_prefill_token_threshold' is not in this space; it is searched when the "
            "space gives its choices (space.long_prefill_token_threshold=[...])",
        ),
        ("workload.arrival=fast", "workload.arrival='fast' is not known"),
        ("optimizer.name=bogus", "optimizer.name='bogus' is not known"),
        (
            "workload=chatbot workload.classes=[{name:a,tpot_ms:50}]",
            "workload.classes[0] sets no TTFT limit; give exactly one of ttft_ms",
        ),
        (
            "workload=chatbot workload.classes=[{name:a,ttft_ms:200,ttft_slowdown:3}]",
            "workload.classes[0] sets ttft_ms and ttft_slowdown; give exactly one of",
        ),
        (
            "workload=chatbot workload.classes=[{name:a,ttft_ms:200,rounds:3}]",
            "workload.classes[0].round_prompt_len is required when rounds=3 > 1",
        ),
        (
            "workload=mixed workload.classes.1.name=chat",
            "workload.classes[1].name='chat' is not unique",
        ),
        (
            "workload=reasoning workload.classes.0.answer_tpot_ms=0",
            "answer_tpot_ms=0.0 is invalid",
        ),
        (
            "workload=tool-calling workload.classes.0.round_prompt_len.low=0",
            "workload.classes[0].round_prompt_len.low=0 is invalid; it must be an integer >= 1",
        ),
        # values that once ran, or ended in a traceback after a run was started
        ("seed=-1", "seed=-1 is invalid; it must be an integer >= 0 and <= 4294967295"),
        ("workload.seed=-1", "workload.seed=-1 is invalid"),
        ("workload.prompt_len.median=-5", "workload.prompt_len.median=-5.0 is invalid"),
        ("hardware.compute_efficiency=0", "it must be a finite number > 0 and <= 1"),
        ("space.gpu_memory_utilization.low=-0.5", "needs 0 < low <= high <= 1"),
        ("slo.ttft_ms=inf", "slo.ttft_ms=inf is invalid; it must be a finite number > 0"),
        ("slo.itl_ms=nan", "slo.itl_ms=nan is invalid"),
        ("workload.request_rate=inf", "workload.request_rate=inf is invalid"),
        ("workload.ramp_up_s=-5", "workload.ramp_up_s=-5.0 is invalid"),
        ("workload.shared_prefix_len=-10", "workload.shared_prefix_len=-10 is invalid"),
        ("workload.num_prefix_groups=-3", "workload.num_prefix_groups=-3 is invalid"),
        ("hardware.step_noise=-1", "hardware.step_noise=-1.0 is invalid"),
        ("optimizer=tba-tpe optimizer.handoff=1000", "or a whole number of trials <= budget=15"),
        ("optimizer.n_startup_trials=-5", "optimizer.n_startup_trials=-5 is invalid"),
        ("capacity.max_probes=1000000", "<= 100 (allow_large=true lifts this bound)"),
        ("capacity.rel_tol=1e-12", "capacity.rel_tol=1e-12 is invalid"),
        ("workload.num_requests=1000000000", "<= 100000 (allow_large=true lifts this bound)"),
        ("budget=100000000", "budget=100000000 is invalid"),
        ("tracking.experiment=''", "tracking.experiment='' is invalid; it must be not empty"),
        ("workload.name='${oc.env:SLOGUARD_NO_SUCH_VAR}'", "workload.name: "),
        ("tracking.uri=sqlite:////proc/nope/mlflow.db", "folder '/proc/nope' does not exist"),
        ("backend.host=0.0.0.0", "backend.host='0.0.0.0' is not a loopback address"),
        (
            "backend.host=0.0.0.0 backend.allow_remote=true",
            "backend.allow_remote=true with backend.host='0.0.0.0' needs backend.api_key",
        ),
        ("backend.host=my-host", "backend.host='my-host' is not an IP address"),
        ("study_name=../escape", "study_name='../escape' is invalid"),
        ("study_name=/abs", "study_name='/abs' is invalid"),
    ],
)
def test_bad_overrides_fail_with_one_clear_line(compose, override: str, expected: str) -> None:
    with pytest.raises(ConfigError) as info:
        check_overrides(override.split())
    message = str(info.value)
    assert expected in message
    assert "\n" not in message


def test_big_runs_are_allowed_when_asked_for(compose) -> None:
    cfg = compose("workload.num_requests=1000000", "budget=20000", "allow_large=true")
    assert (cfg.workload.num_requests, cfg.budget) == (1000000, 20000)


def test_a_remote_server_needs_an_api_key(compose) -> None:
    cfg = compose("backend.host=0.0.0.0", "backend.allow_remote=true", "backend.api_key=k123456")
    assert cfg.backend.allow_remote and cfg.backend.host == "0.0.0.0"
    assert compose("backend.host=::1").backend.host == "::1"  # loopback, IPv6


@pytest.mark.parametrize(
    "args",
    [
        ["optimizer=foo"],
        ["budget=0"],
        ["-m", "seed=1,2", "optimizer=random,nope"],
        ["knobs.enforce_eager=false"],  # evaluate's fixed knobs: a study would ignore them
        ["seed=-1"],
        ["hardware.compute_efficiency=0"],
        ["tracking.uri=sqlite:////proc/nope/mlflow.db"],
        ["study_name=../escape"],
        ["--bogus-flag"],
    ],
)
def test_cli_rejects_bad_input_and_writes_nothing(
    study_env, tmp_path: Path, args: list[str]
) -> None:
    proc = run_cli(["-m", "sloguard.tune", *args], cwd=tmp_path, env=study_env)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("sloguard: error: ")
    assert not (tmp_path / "mlflow.db").exists()
    assert not (tmp_path / "studies").exists()
    assert not (tmp_path / "outputs").exists()


def test_schema_defaults_are_what_a_key_is_when_nothing_sets_it(compose) -> None:
    defaults = schema_defaults()
    assert defaults["prior.name"] == "none" and defaults["optimizer.pof_threshold"] == 0.5
    assert "model.name" not in defaults  # a group option must set it
    cfg = flatten(to_container(compose()))
    assert all(cfg[k] == v for k, v in defaults.items() if k in cfg and k.startswith("prior."))
