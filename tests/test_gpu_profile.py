from __future__ import annotations

import json
import sys
import types
from pathlib import Path

import numpy as np
import pytest

from sloguard import gpu_profile
from sloguard.backends.sim import plan_memory
from sloguard.evaluation import launch_config, memory_guard
from sloguard.gpu_profile import MemoryGuard, detect_vram_gb, model_config_from_hf
from sloguard.space import SearchSpace

QWEN2_1_5B = {  # the fields of Qwen/Qwen2-1.5B's config.json that matter
    "architectures": ["Qwen2ForCausalLM"],
    "hidden_size": 1536,
    "intermediate_size": 8960,
    "num_attention_heads": 12,
    "num_hidden_layers": 28,
    "num_key_value_heads": 2,
    "vocab_size": 151936,
    "max_position_embeddings": 32768,
    "torch_dtype": "bfloat16",
    "tie_word_embeddings": True,
}
LLAMA_3_1_8B = {
    "hidden_size": 4096,
    "intermediate_size": 14336,
    "num_attention_heads": 32,
    "num_hidden_layers": 32,
    "num_key_value_heads": 8,
    "vocab_size": 128256,
    "max_position_embeddings": 131072,
    "torch_dtype": "bfloat16",
    "tie_word_embeddings": False,
}


@pytest.mark.parametrize(
    ("raw", "kv_bytes", "params_b"),
    [(QWEN2_1_5B, 28 * 1024, 1.54), (LLAMA_3_1_8B, 128 * 1024, 8.03)],
)
def test_model_numbers_come_from_config_json(tmp_path: Path, raw, kv_bytes, params_b) -> None:
    (tmp_path / "config.json").write_text(json.dumps(raw))
    cfg = model_config_from_hf(tmp_path)
    model = types.SimpleNamespace(**cfg)
    assert gpu_profile.kv_bytes_per_token(model) == kv_bytes
    assert cfg["num_params_b"] == pytest.approx(params_b, rel=0.02)
    assert cfg["head_dim"] == 128 and cfg["dtype_bytes"] == 2


def test_the_shipped_model_configs_match_their_config_json(tmp_path: Path, compose) -> None:
    for name, raw in (("qwen2-1.5b", QWEN2_1_5B), ("llama-3.1-8b", LLAMA_3_1_8B)):
        (tmp_path / "config.json").write_text(json.dumps(raw))
        derived = model_config_from_hf(tmp_path)
        shipped = compose(f"model={name}").model
        for key in ("num_layers", "hidden_size", "num_kv_heads", "head_dim", "vocab_size"):
            assert shipped[key] == derived[key], (name, key)


def _no_probes(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SLOGUARD_GPU_VRAM_GB", raising=False)
    monkeypatch.setitem(sys.modules, "pynvml", None)  # import fails: library absent
    monkeypatch.setitem(sys.modules, "torch", None)
    monkeypatch.setenv("PATH", "/nonexistent")


def test_vram_detection_order(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    _no_probes(monkeypatch)
    assert detect_vram_gb(39.4) == (39.4, "hardware config")

    smi = tmp_path / "nvidia-smi"  # a stand-in for the absent tool, printing what it prints
    smi.write_text("#!/bin/sh\necho 81559\n")
    smi.chmod(0o755)
    monkeypatch.setenv("PATH", str(tmp_path))
    gib, source = detect_vram_gb(39.4)
    assert source == "nvidia-smi" and gib == pytest.approx(81559 / 1024)

    cuda = types.SimpleNamespace(
        is_available=lambda: True,
        get_device_properties=lambda i: types.SimpleNamespace(total_memory=24 * 2**30),
    )
    monkeypatch.setitem(sys.modules, "torch", types.SimpleNamespace(cuda=cuda))
    assert detect_vram_gb(39.4) == (24.0, "torch")

    class NVMLError(Exception):
        pass

    nvml = types.SimpleNamespace(
        NVMLError=NVMLError,
        nvmlInit=lambda: None,
        nvmlShutdown=lambda: None,
        nvmlDeviceGetHandleByIndex=lambda i: i,
        nvmlDeviceGetMemoryInfo=lambda h: types.SimpleNamespace(total=40 * 2**30),
    )
    monkeypatch.setitem(sys.modules, "pynvml", nvml)
    assert detect_vram_gb(39.4) == (40.0, "nvml")

    monkeypatch.setenv("SLOGUARD_GPU_VRAM_GB", "22.5")
    assert detect_vram_gb(39.4) == (22.5, "env:SLOGUARD_GPU_VRAM_GB")
    monkeypatch.delenv("SLOGUARD_GPU_VRAM_GB")
    assert detect_vram_gb(39.4, probe_device=False) == (39.4, "hardware config")


def test_nvml_error_falls_through(monkeypatch: pytest.MonkeyPatch) -> None:
    _no_probes(monkeypatch)

    class NVMLError(Exception):
        pass

    def fail() -> None:
        raise NVMLError("no driver")

    monkeypatch.setitem(
        sys.modules,
        "pynvml",
        types.SimpleNamespace(NVMLError=NVMLError, nvmlInit=fail, nvmlShutdown=lambda: None),
    )
    assert detect_vram_gb(12.0) == (12.0, "hardware config")


@pytest.fixture
def l4(compose):
    cfg = compose("model=llama-3.1-8b", "hardware=l4-24gb")
    return cfg, SearchSpace.from_config(cfg.space)


def test_guard_predicts_the_kv_cache_vllm_allocates(l4) -> None:
    cfg, space = l4
    guard = memory_guard(cfg)
    config = space.complete({"gpu_memory_utilization": 0.9, "max_model_len": 2048})
    plan, _ = plan_memory(cfg.model, cfg.hardware, config)
    assert guard.kv_tokens(config) == plan.kv_cache_tokens


@pytest.mark.parametrize("tp", [2, 4, 8])
def test_guard_predicts_a_tensor_parallel_kv_cache(compose, tp) -> None:
    cfg = compose("model=llama-3.1-8b", "hardware=4xl4-24gb", "hardware.gpus_per_trial=8",
                  "space.tensor_parallel_size=[1,2,4,8]")  # fmt: skip
    config = SearchSpace.from_config(cfg.space).complete({"tensor_parallel_size": tp})
    plan, _ = plan_memory(cfg.model, cfg.hardware, config)
    assert memory_guard(cfg).kv_tokens(config) == plan.kv_cache_tokens


def test_guard_raises_utilisation_then_lowers_max_model_len(l4) -> None:
    cfg, space = l4
    guard = memory_guard(cfg)
    fixed = guard.repair(
        space.complete({"gpu_memory_utilization": 0.72, "max_model_len": 4096}), util_high=0.95
    )
    assert fixed.config["gpu_memory_utilization"] > 0.72
    assert guard.kv_tokens(fixed.config) >= 4096
    capped = guard.repair(
        space.complete({"gpu_memory_utilization": 0.72, "max_model_len": 4096}), util_high=0.72
    )
    # fits what the KV cache held at util 0.72 (fewer seqs then free a little more activation)
    assert capped.config["gpu_memory_utilization"] == 0.72
    assert capped.config["max_model_len"] <= guard.kv_tokens(capped.config) < 4096


def test_guard_sizes_max_num_seqs_to_the_kv_cache(l4) -> None:
    cfg, space = l4
    config = space.complete(
        {"gpu_memory_utilization": 0.9, "max_model_len": 2048, "max_num_seqs": 128}
    )
    before = memory_guard(cfg).kv_tokens(config)  # what the guard sizes against
    seed_rule = MemoryGuard.for_model(cfg.model, cfg.hardware, cfg.hardware.vram_gb, 1.0)
    strict = seed_rule.repair(config, util_high=0.95)
    assert strict.config["max_num_seqs"] == before // 2048
    loose = MemoryGuard.for_model(cfg.model, cfg.hardware, cfg.hardware.vram_gb, overcommit=4.0)
    assert loose.repair(config, util_high=0.95).config["max_num_seqs"] == min(
        128, 4 * before // 2048
    )


def test_env_overrides(l4, monkeypatch: pytest.MonkeyPatch) -> None:
    cfg, space = l4
    config = space.complete({"gpu_memory_utilization": 0.9})
    base = memory_guard(cfg).kv_tokens(config)
    monkeypatch.setenv("SLOGUARD_KV_BYTES_PER_TOKEN", str(2 * 128 * 1024 / 1e9))  # GB per token
    assert memory_guard(cfg).kv_tokens(config) == pytest.approx(base / 2, abs=16)
    monkeypatch.setenv("SLOGUARD_MODEL_FOOTPRINT_GB", "19.5")  # weights + activations reserve
    assert memory_guard(cfg).kv_tokens(config) == 0


def test_guarded_configs_never_hit_a_kv_refusal(l4) -> None:
    cfg, space = l4
    guard = memory_guard(cfg)
    rng = np.random.default_rng(0)
    refusals = 0
    for _ in range(300):
        config = launch_config(
            space, guard, space.sample(rng), cfg.model.max_position_embeddings
        ).config
        _, crash = plan_memory(cfg.model, cfg.hardware, config)
        refusals += crash is not None and crash.subcause == "kv_cache_too_small"
    assert refusals == 0


def test_a_max_model_len_the_guard_lowers_still_bounds_the_prefill_cap(compose) -> None:
    cfg = compose(
        "model=llama-3.1-8b", "hardware=l4-24gb", "space.gpu_memory_utilization.high=0.72",
        "space.gpu_memory_utilization.default=0.72",
        "space.long_prefill_token_threshold=[0,4096]",
    )  # fmt: skip
    space = SearchSpace.from_config(cfg.space)
    params = {"gpu_memory_utilization": 0.72, "max_model_len": 4096}
    launched = launch_config(
        space, memory_guard(cfg), {**params, "long_prefill_token_threshold": 4096},
        cfg.model.max_position_embeddings,
    )  # fmt: skip
    config = launched.config
    assert config["max_model_len"] < 4096  # the KV cache at 0.72 holds less
    assert config["long_prefill_token_threshold"] == config["max_model_len"]
    assert plan_memory(cfg.model, cfg.hardware, config)[1] is None  # vLLM would start it
    assert any(c.startswith("long_prefill_token_threshold 4096 -> ") for c in launched.changes)


@pytest.mark.parametrize("block", [16, 32, 128, 256])
def test_guard_predicts_the_kv_cache_of_a_block_size(compose, block) -> None:
    cfg = compose("model=llama-3.1-8b", "hardware=l4-24gb", "space.block_size=[16,32,128,256]")
    config = SearchSpace.from_config(cfg.space).complete({"block_size": block})
    plan, _ = plan_memory(cfg.model, cfg.hardware, config)
    assert memory_guard(cfg).kv_tokens(config) == plan.kv_cache_tokens
