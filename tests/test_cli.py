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
        ["-m", "sloguard.cli", "evaluate", "knobs.block_size=16"], cwd=tmp_path, env=study_env
    )
    assert proc.returncode == 2
    assert proc.stderr.strip() == (
        "sloguard: error: 'knobs.block_size' is not known; choose "
        "one of: quantization, max_num_seqs, max_num_batched_tokens, "
        "gpu_memory_utilization, max_model_len, enforce_eager, "
        "enable_chunked_prefill, enable_prefix_caching"
    )
