from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from sloguard.backends.sim._memory import load_oom, plan_memory
from sloguard.crash_classifier import CrashCategory, classify
from sloguard.space import SearchSpace
from tests.conftest import REPO, run_cli

LOGS = Path(__file__).parents[1] / "data" / "vllm_cpu_logs"


@pytest.mark.parametrize(
    ("name", "exit_code", "category", "subcause", "evidence"),
    [
        ("config_batched_tokens.log", 1, "config", "batched_tokens_below_max_model_len",
         "max_num_batched_tokens (256) is smaller than max_model_len (1024)"),
        ("config_max_model_len.log", 1, "config", "max_model_len_too_large",
         "User-specified max_model_len (8192) is greater than the derived max_model_len"),
        ("config_num_seqs.log", 1, "config", "batched_tokens_below_num_seqs",
         "max_num_batched_tokens (16) must be greater than or equal to max_num_seqs (32)"),
        ("oom_kv_cache.log", 1, "oom", "no_kv_cache_memory",
         "ValueError: Available memory on node 0"),
        ("engine_killed_mid_load.log", None, "unknown", "engine_dead",
         "EngineDeadError: EngineCore encountered an issue"),
    ],
)  # fmt: skip
def test_real_cpu_build_logs(name, exit_code, category, subcause, evidence) -> None:
    crash = classify((LOGS / name).read_text(), exit_code)
    assert (crash.category.value, crash.subcause) == (category, subcause)
    assert evidence in crash.evidence
    assert " ERROR 11-21" not in crash.evidence  # vLLM's log prefix is stripped


@pytest.mark.parametrize(
    ("line", "category", "subcause"),
    [
        ("ValueError: No available memory for the cache blocks. Try increasing "
         "`gpu_memory_utilization` when initializing the engine.", "oom", "no_kv_cache_memory"),
        ("ValueError: To serve at least one request with the model's max seq len (32768), "
         "(3.50 GiB KV cache is needed, which is larger than the available KV cache memory "
         "(1.20 GiB).", "oom", "kv_cache_too_small"),
        ("torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB.", "oom",
         "device_oom"),
        ("ValueError: Free memory on device (20.1/23.6 GiB) on startup is less than desired GPU "
         "memory utilization (0.9, 21.2 GiB).", "oom", "insufficient_free_memory"),
        ("RuntimeError: CUDA out of memory occurred when warming up sampler with 256 dummy "
         "requests.", "oom", "sampler_warmup"),
        ("RuntimeError: CUDA error: an illegal memory access was encountered", "cuda",
         "illegal_memory_access"),
        ("RuntimeError: CUDA error: device-side assert triggered", "cuda", "device_side_assert"),
        ("ValueError: max_num_batched_tokens (64) must be greater than or equal to "
         "max_num_seqs (256).", "config", "batched_tokens_below_num_seqs"),
        ("TimeoutError: Timed out waiting for engine core processes to start.", "timeout",
         "engine_start_timeout"),
        ("RuntimeError: Engine core initialization failed. See root cause above. Failed core "
         "proc(s): {}", "unknown", "engine_start_failed"),
        ("ERROR [multiproc_executor.py:150] Worker proc VllmWorker-0 died unexpectedly, "
         "shutting down executor.", "unknown", "worker_died"),
        ("vllm: error: unrecognized arguments: --max-num-seq 8", "config", "bad_argument"),
        ("ValueError: FP8 KV cache is not supported by the Triton attention backend on Tesla T4 "
         "(compute capability 7.5); native FP8 (fp8e4nv) requires SM89+.", "config",
         "kv_cache_dtype_unsupported"),
        ("NotImplementedError: FP8 KV cache on CPU requires x86 with AVX-512 or AMX.", "config",
         "kv_cache_dtype_unsupported"),
        ("ValueError: No valid attention backend found for cuda with AttentionSelectorConfig("
         "head_size=80, kv_cache_dtype=auto, block_size=8). Reasons: {FLASH_ATTN: [block_size "
         "not supported]}.", "config", "attention_backend_unsupported"),
        # seen on the CPU build (vLLM 0.32) launched with --block-size 8
        ("ValueError: No common block size for 8 (CPU_ATTN: [MultipleOf(32)]).", "config",
         "attention_backend_unsupported"),
    ],
)  # fmt: skip
def test_gpu_messages_from_the_vllm_source(line, category, subcause) -> None:
    crash = classify(f"INFO starting\n{line}\nINFO shutting down\n", 1)
    assert (crash.category.value, crash.subcause, crash.evidence) == (category, subcause, line)


def test_the_root_cause_wins_over_the_generic_failure_after_it() -> None:
    log = (
        "torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 1.0 GiB\n"
        "RuntimeError: Engine core initialization failed.\n"
        "EngineDeadError: EngineCore encountered an issue.\n"
    )
    crash = classify(log, 1, phase="load")
    assert (crash.category, crash.subcause, crash.phase) == (
        CrashCategory.OOM,
        "oom_under_load",
        "load",
    )


def test_torchs_hint_lines_never_outrank_the_line_naming_the_error() -> None:
    hint = (
        "CUDA kernel errors might be asynchronously reported at some other API call, so the "
        "stacktrace below might be incorrect.\n"
        "For debugging consider passing CUDA_LAUNCH_BLOCKING=1\n"
        "Compile with `TORCH_USE_CUDA_DSA` to enable device-side assertions.\n"
    )
    named = "[E626 23:10:17 ProcessGroupNCCL.cpp:1896] watchdog: CUDA error: misaligned address\n"
    crash = classify(hint + named + hint)
    assert (crash.category, crash.subcause) == (CrashCategory.CUDA, "illegal_memory_access")
    assert "misaligned address" in crash.evidence
    assert classify(hint).category is CrashCategory.CUDA  # a hint alone still says CUDA


def test_rules_are_in_tier_order() -> None:
    from sloguard.crash_classifier import RULES

    tiers = [rule.tier for rule in RULES]
    assert tiers == sorted(tiers)  # the classifier stops at a line's first rule by tier


def test_unexplained_failures_are_unknown_with_evidence() -> None:
    killed = classify("INFO serving\n", -9, phase="load", http_errors=["reset: boom"])
    assert (killed.category.value, killed.subcause) == ("infra", "killed_by_sigkill")
    assert "SIGKILL" in killed.evidence and "reset: boom" in killed.evidence
    by_oom_killer = classify("INFO serving\n", -9, phase="load", oom_killed=True)
    assert (by_oom_killer.category.value, by_oom_killer.subcause) == ("oom", "host_oom")
    exited = classify("INFO a\nsomething odd happened\n\n", 3)
    assert exited.subcause == "server_exited"
    assert exited.evidence == "server exited with status 3: something odd happened"
    failing = classify("", None, phase="load", http_errors=["http 500: x", "http 500: y"])
    assert failing.subcause == "request_failures" and "2 requests failed" in failing.evidence
    assert classify("", None).category is CrashCategory.UNKNOWN


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        (("model=llama-3.1-8b", "hardware=l4-24gb", "hardware.used_by_others_gb=3"), "oom"),
        (("model=qwen2-1.5b", "hardware=cpu", "space.max_num_batched_tokens.low=16"), "oom"),
        (("model=qwen2-1.5b", "hardware=t4-16gb", "space.kv_cache_dtype=[auto,fp8]"),
         "kv_cache_dtype_unsupported"),
        (("model=llama-3.1-8b", "hardware=l4-24gb", "space.long_prefill_token_threshold=[0,4096]"),
         "long_prefill_threshold_above_max_model_len"),
    ],
)  # fmt: skip
def test_every_simulated_crash_reads_back_as_the_sim_classified_it(
    compose, overrides, expected
) -> None:
    cfg = compose(*overrides, "space.repair=false", "space.quantization.choices=[fp16,fp8]")
    space = SearchSpace.from_config(cfg.space)
    rng = np.random.default_rng(0)
    seen: set[str] = set()
    categories: set[str] = set()
    for _ in range(400):
        config = space.complete(space.sample(rng))
        plan, crash = plan_memory(cfg.model, cfg.hardware, config)
        if crash is None and plan is not None:
            crash = load_oom(cfg.model, cfg.hardware, config, plan)
        if crash is None:
            continue
        again = classify(crash.evidence, 1, phase=crash.phase)
        assert (again.category, again.subcause) == (crash.category, crash.subcause), crash
        seen.add(crash.subcause)
        categories.add(crash.category.value)
    assert len(seen) >= 4 and expected in seen | categories, seen


def test_cli_prints_json(tmp_path: Path) -> None:
    proc = run_cli(
        ["-m", "sloguard.cli", "classify-crash", str(LOGS / "oom_kv_cache.log"), "--exit-code",
         "1"], REPO,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    data = json.loads(proc.stdout)
    assert data["category"] == "oom" and data["phase"] == "startup"
    missing = run_cli(["-m", "sloguard.cli", "classify-crash", str(tmp_path / "nope.log")], REPO)
    assert missing.returncode == 2 and missing.stdout == ""
    assert missing.stderr.strip().endswith("No such file or directory")
    assert len(missing.stderr.strip().splitlines()) == 1
