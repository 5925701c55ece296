import json
from pathlib import Path

from tests.conftest import run_cli


def test_evaluate_prints_one_trial_result(study_env, tmp_path: Path) -> None:
    proc = run_cli(
        [
            "-m",
            "sloguard.cli",
            "evaluate",
            "workload=smoke",
            "knobs.max_num_seqs=8",
            "knobs.enforce_eager=true",
        ],
        cwd=tmp_path,
        env=study_env,
    )
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert out["config"]["max_num_seqs"] == 8 and out["config"]["enforce_eager"] is True
    assert out["config"]["enable_chunked_prefill"] is False  # inactive when eager
    assert out["crash"] is None and out["metrics"]["completed"] == 24
    assert out["server"]["kv_cache_tokens"] > 0
    assert not (tmp_path / "mlflow.db").exists()  # evaluate logs nothing


def test_evaluate_reports_a_crash_with_vllm_evidence(study_env, tmp_path: Path) -> None:
    args = [
        "-m",
        "sloguard.cli",
        "evaluate",
        "model=llama-3.1-8b",
        "hardware=l4-24gb",
        "knobs.gpu_memory_utilization=0.6",
    ]
    # with repair off the config launches as given and vLLM refuses it
    out = json.loads(run_cli([*args, "space.repair=false"], cwd=tmp_path, env=study_env).stdout)
    assert out["crash"]["category"] == "oom" and "cache blocks" in out["crash"]["evidence"]
    assert out["utility"] is None and out["feasible"] is False
    # with repair on (the default) the memory guard raises the utilisation so it starts
    fixed = json.loads(run_cli(args, cwd=tmp_path, env=study_env).stdout)
    assert fixed["crash"] is None and fixed["config"]["gpu_memory_utilization"] > 0.7
    assert any(r.startswith("gpu_memory_utilization") for r in fixed["repairs"])


def test_evaluate_rejects_an_unknown_knob(study_env, tmp_path: Path) -> None:
    proc = run_cli(
        ["-m", "sloguard.cli", "evaluate", "knobs.swap_space=4"], cwd=tmp_path, env=study_env
    )
    assert proc.returncode == 2
    assert proc.stderr.strip() == (
        "sloguard: error: 'knobs.swap_space' is not known; choose "
        "one of: quantization, max_num_seqs, max_num_batched_tokens, "
        "gpu_memory_utilization, max_model_len, enforce_eager, "
        "enable_chunked_prefill, enable_prefix_caching, kv_cache_dtype, "
        "long_prefill_token_threshold, scheduling_policy, tensor_parallel_size, "
        "data_parallel_size, block_size, num_speculative_tokens"
    )


def test_serving_choices_are_checked_in_one_line(study_env, tmp_path: Path) -> None:
    bad = {
        "backend.scheduler=fifo": "backend.scheduler='fifo' is not known; choose one of: vllm, "
        "slos-serve",
        "backend.router=random": "backend.router='random' is not known; choose one of: "
        "round-robin, least-loaded, slo-aware",
        "backend.replicas=0": "backend.replicas=0 is invalid; it must be an integer >= 1",
        "backend.spec_decode.acceptance_rate=0": "backend.spec_decode.acceptance_rate=0.0 is "
        "invalid; it must be a finite number > 0 and <= 1",
        "backend.spec_decode.acceptance_rate=1.5": "backend.spec_decode.acceptance_rate=1.5 is "
        "invalid; it must be a finite number > 0 and <= 1",
        "space.router=[slo-aware,nearest]": "space.router='nearest' is not known",
    }
    for override, message in bad.items():
        proc = run_cli(["-m", "sloguard.cli", "evaluate", override], cwd=tmp_path, env=study_env)
        assert proc.returncode == 2, override
        assert proc.stderr.startswith(f"sloguard: error: {message}"), proc.stderr
        assert len(proc.stderr.strip().splitlines()) == 1
    assert list(tmp_path.iterdir()) == []  # nothing written


def test_a_real_server_refuses_the_sims_serving_choices(study_env, tmp_path: Path) -> None:
    overrides = ["backend.scheduler=slos-serve", "backend.replicas=2"]
    overrides += ["backend.spec_decode.enabled=true", "space.scheduler=[vllm,slos-serve]"]
    for override in overrides:
        proc = run_cli(
            ["-m", "sloguard.cli", "evaluate", "backend=vllm-cpu", override],
            cwd=tmp_path,
            env=study_env,
        )
        assert proc.returncode == 2, override
        line = proc.stderr.strip()
        assert line.startswith(f"sloguard: error: {override}") and "\n" not in line
        assert "use backend=sim" in line
    assert list(tmp_path.iterdir()) == []


def test_evaluate_prints_the_capacity_under_either_scheduler(study_env, tmp_path: Path) -> None:
    capacity = {}
    for scheduler in ("vllm", "slos-serve"):
        args = ["workload=mixed", "objective=capacity", f"backend.scheduler={scheduler}"]
        proc = run_cli(["-m", "sloguard.cli", "evaluate", *args], cwd=tmp_path, env=study_env)
        assert proc.returncode == 0, proc.stderr
        capacity[scheduler] = json.loads(proc.stdout)["metrics"]["capacity_rps"]
    assert capacity["slos-serve"] > capacity["vllm"] > 0


def test_every_subcommand_answers_help(study_env, tmp_path: Path) -> None:
    for command in ("tune", "evaluate", "sync", "report", "calibrate", "classify-crash"):
        proc = run_cli(["-m", "sloguard.cli", command, "--help"], cwd=tmp_path, env=study_env)
        assert proc.returncode == 0, (command, proc.stderr)
        assert proc.stdout.startswith(f"usage: sloguard {command}"), command
        assert len(proc.stdout.splitlines()) < 60  # its own text, not Hydra's config dump
    shown = run_cli(["-m", "sloguard.cli", "evaluate", "--cfg", "job", "workload=mixed"],
                    cwd=tmp_path, env=study_env)  # fmt: skip
    assert shown.returncode == 0 and "name: mixed" in shown.stdout
    assert list(tmp_path.iterdir()) == []
