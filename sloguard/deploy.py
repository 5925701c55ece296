"""The best configuration as a user deploys it: a ``vllm serve`` line and a ``--config`` file.

The flags come from :func:`knob_flags`, the function the vLLM backend launches its servers
with, so what a study measured is what the printed line starts.
"""

from __future__ import annotations

import json
import shlex
from typing import Any

BOOL_FLAGS: tuple[str, ...] = ("enforce_eager", "enable_chunked_prefill", "enable_prefix_caching")
SERVE_CONFIG = "best_config.yaml"  # the study run's artifact: ``vllm serve MODEL --config FILE``


def knob_flags(knobs: dict[str, Any]) -> list[str]:
    """vLLM engine-argument flags for a complete knob configuration."""
    flags = [
        "--max-num-seqs",
        str(knobs["max_num_seqs"]),
        "--max-num-batched-tokens",
        str(knobs["max_num_batched_tokens"]),
        "--gpu-memory-utilization",
        _utilization(knobs["gpu_memory_utilization"]),
        "--max-model-len",
        str(knobs["max_model_len"]),
    ]
    for name in BOOL_FLAGS:
        flag = name.replace("_", "-")
        flags.append(f"--{flag}" if knobs[name] else f"--no-{flag}")
    if knobs["quantization"] != "fp16":  # fp16: the checkpoint's own weights, no quantization
        flags += ["--quantization", knobs["quantization"]]
    if knobs.get("kv_cache_dtype", "auto") != "auto":
        flags += ["--kv-cache-dtype", knobs["kv_cache_dtype"]]
    if knobs.get("long_prefill_token_threshold", 0):
        flags += ["--long-prefill-token-threshold", str(knobs["long_prefill_token_threshold"])]
    if knobs.get("scheduling_policy", "fcfs") != "fcfs":
        flags += ["--scheduling-policy", knobs["scheduling_policy"]]
    for name in ("tensor_parallel_size", "data_parallel_size"):
        if knobs.get(name, 1) != 1:
            flags += [f"--{name.replace('_', '-')}", str(knobs[name])]
    if "block_size" in knobs:  # no default to leave out: the platform's differs (GPU 16, CPU 128)
        flags += ["--block-size", str(knobs["block_size"])]
    if knobs.get("num_speculative_tokens", 0):  # vLLM requires > 0; 0 here: no speculation
        spec = {"method": "ngram", "num_speculative_tokens": knobs["num_speculative_tokens"]}
        flags += ["--speculative-config", json.dumps(spec)]
    return flags


def serve_command(model: str, knobs: dict[str, Any]) -> str:
    """The ``vllm serve`` command line that launches ``model`` with ``knobs``, shell-quoted."""
    return shlex.join(["vllm", "serve", model, *knob_flags(knobs)])


def serve_config(knobs: dict[str, Any]) -> str:
    """``knobs`` as the YAML file ``vllm serve MODEL --config FILE`` reads (flag names as keys)."""
    lines = [f"# vllm serve MODEL --config {SERVE_CONFIG}  (written by SLO-Guard)"]
    if knobs.get("scheduling_policy") == "priority":
        lines.append(
            '# clients send each request\'s "priority" (lower first; SLO-Guard measured its SLO '
            "class's rank); without one every request is 0, served in arrival order"
        )
    for key, value in _as_options(knobs).items():
        text = str(value).lower() if isinstance(value, bool) else str(value)
        lines.append(f"{key}: {text}")
    return "\n".join(lines) + "\n"


def simulated_only(knobs: dict[str, Any]) -> dict[str, Any]:
    """The knobs no vLLM flag sets (the simulator's scheduler, replicas, router, speculation)."""
    launched = {"quantization", "max_num_seqs", "max_num_batched_tokens", "max_model_len"}
    launched |= {"gpu_memory_utilization", "kv_cache_dtype", "long_prefill_token_threshold"}
    launched |= {"scheduling_policy", "tensor_parallel_size", "data_parallel_size", "block_size"}
    launched.add("num_speculative_tokens")
    launched |= set(BOOL_FLAGS)
    return {k: v for k, v in knobs.items() if k not in launched}


def _as_options(knobs: dict[str, Any]) -> dict[str, Any]:
    options: dict[str, Any] = {}
    flags = knob_flags(knobs)
    i = 0
    while i < len(flags):
        flag = flags[i]
        if flag.startswith("--no-"):
            options[flag[5:]] = False
        elif i + 1 < len(flags) and not flags[i + 1].startswith("--"):
            options[flag[2:]] = flags[i + 1]
            i += 1
        else:
            options[flag[2:]] = True
        i += 1
    return options


def _utilization(value: float) -> str:
    """A memory share to four significant digits (finer means nothing to vLLM's planner)."""
    return f"{float(value):.4g}"
