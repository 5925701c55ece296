"""The best configuration as a user deploys it."""

from __future__ import annotations

from sloguard.deploy import serve_command, serve_config, simulated_only

KNOBS = {
    "quantization": "fp16",
    "max_num_seqs": 70,
    "max_num_batched_tokens": 3101,
    "gpu_memory_utilization": 0.8655369118753191,
    "max_model_len": 4096,
    "enforce_eager": False,
    "enable_chunked_prefill": False,
    "enable_prefix_caching": True,
}


def test_a_serve_line_a_user_can_paste() -> None:
    line = serve_command("meta-llama/Llama-3.1-8B", {**KNOBS, "quantization": "awq"})
    assert line == (
        "vllm serve meta-llama/Llama-3.1-8B --max-num-seqs 70 --max-num-batched-tokens 3101 "
        "--gpu-memory-utilization 0.8655 --max-model-len 4096 --no-enforce-eager "
        "--no-enable-chunked-prefill --enable-prefix-caching --quantization awq"
    )
    assert serve_command("/models/my model", KNOBS).startswith("vllm serve '/models/my model' ")
    fp8 = serve_command("m", {**KNOBS, "kv_cache_dtype": "fp8"})
    assert fp8.endswith("--enable-prefix-caching --kv-cache-dtype fp8")
    assert "kv-cache-dtype" not in serve_command("m", {**KNOBS, "kv_cache_dtype": "auto"})
    capped = serve_command("m", {**KNOBS, "long_prefill_token_threshold": 512})
    assert capped.endswith("--enable-prefix-caching --long-prefill-token-threshold 512")
    assert "threshold" not in serve_command("m", {**KNOBS, "long_prefill_token_threshold": 0})
    ranked = serve_command("m", {**KNOBS, "scheduling_policy": "priority"})
    assert ranked.endswith("--enable-prefix-caching --scheduling-policy priority")
    assert "policy" not in serve_command("m", {**KNOBS, "scheduling_policy": "fcfs"})
    sharded = serve_command("m", {**KNOBS, "tensor_parallel_size": 4, "data_parallel_size": 2})
    assert sharded.endswith("--tensor-parallel-size 4 --data-parallel-size 2")
    assert "parallel" not in serve_command("m", {**KNOBS, "tensor_parallel_size": 1})
    # searched, the block size is always written: the platform's default differs (16 / 128)
    assert serve_command("m", {**KNOBS, "block_size": 16}).endswith("--block-size 16")
    assert "block" not in serve_command("m", KNOBS)
    # n-gram speculation, as vLLM takes it: one JSON argument; 0 is none (vLLM refuses 0)
    spec = serve_command("m", {**KNOBS, "num_speculative_tokens": 3})
    assert spec.endswith(
        """--speculative-config '{"method": "ngram", "num_speculative_tokens": 3}'"""
    )
    assert "speculative" not in serve_command("m", {**KNOBS, "num_speculative_tokens": 0})


def test_the_config_file_has_vllms_flag_names() -> None:
    lines = serve_config(KNOBS).splitlines()
    assert lines[0].startswith("#")
    assert lines[1:] == [
        "max-num-seqs: 70",
        "max-num-batched-tokens: 3101",
        "gpu-memory-utilization: 0.8655",
        "max-model-len: 4096",
        "enforce-eager: false",
        "enable-chunked-prefill: false",
        "enable-prefix-caching: true",
    ]
    ranked = serve_config({**KNOBS, "scheduling_policy": "priority"}).splitlines()
    assert ranked[1].startswith('# clients send each request\'s "priority"')
    assert ranked[-1] == "scheduling-policy: priority"
    assert serve_config({**KNOBS, "block_size": 64}).splitlines()[-1] == "block-size: 64"
    spec = serve_config({**KNOBS, "num_speculative_tokens": 2}).splitlines()[-1]
    assert spec == 'speculative-config: {"method": "ngram", "num_speculative_tokens": 2}'


def test_the_simulators_own_choices_are_named_apart() -> None:
    assert simulated_only({**KNOBS, "kv_cache_dtype": "fp8"}) == {}  # a vLLM flag
    assert simulated_only({**KNOBS, "long_prefill_token_threshold": 256}) == {}
    assert simulated_only({**KNOBS, "scheduling_policy": "priority"}) == {}
    assert simulated_only({**KNOBS, "tensor_parallel_size": 2}) == {}
    assert simulated_only({**KNOBS, "block_size": 32}) == {}
    assert simulated_only({**KNOBS, "num_speculative_tokens": 4}) == {}
    assert simulated_only({**KNOBS, "scheduler": "slos-serve", "replicas": 2}) == {
        "scheduler": "slos-serve",
        "replicas": 2,
    }


def test_a_study_ends_with_the_serve_line_and_its_config_file(study_env, tmp_path) -> None:
    import mlflow

    from tests.conftest import run_cli

    proc = run_cli(
        ["-m", "sloguard.tune", "budget=4", "seed=5", "workload=smoke", "progress=false"],
        cwd=tmp_path,
        env=study_env,
    )
    assert proc.returncode == 0, proc.stderr
    line = next(x.strip() for x in proc.stdout.splitlines() if "vllm serve" in x)
    assert line.startswith("vllm serve Qwen/Qwen2-1.5B --max-num-seqs ")
    (saved,) = tmp_path.glob("studies/*/best_config.yaml")
    assert "max-num-seqs: " in saved.read_text()
    mlflow.set_tracking_uri(study_env["MLFLOW_TRACKING_URI"])
    runs = mlflow.search_runs(search_all_experiments=True)
    study = runs[runs["tags.sloguard.role"] == "study"].iloc[0]
    assert study["tags.best.vllm_serve"] == line
    artifacts = mlflow.MlflowClient().list_artifacts(study["run_id"])
    assert "best_config.yaml" in {a.path for a in artifacts}
    name = study["tags.study_name"]
    later = run_cli(["-m", "sloguard.cli", "best", "--study", name], cwd=tmp_path, env=study_env)
    assert later.returncode == 0, later.stderr
    assert later.stdout.splitlines()[:2] == [f"study {name}:", f"  {line}"]
    missing = run_cli(["-m", "sloguard.cli", "best", "--study", "x"], cwd=tmp_path, env=study_env)
    assert missing.returncode == 2 and "no finished study 'x'" in missing.stderr
