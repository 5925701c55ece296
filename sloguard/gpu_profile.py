"""Device memory: VRAM detection, per-model KV and weight footprints, and the memory guard.

The footprint formulas follow vLLM's own accounting (weights, the peak activation of a
``max_num_batched_tokens`` profiling pass, non-torch memory; the KV cache gets what is left of
``gpu_memory_utilization x VRAM``). The simulator uses them as ground truth; the guard uses them
to size a configuration before it is launched.

Overrides, as in the seed: ``SLOGUARD_GPU_VRAM_GB`` (GiB), ``SLOGUARD_KV_BYTES_PER_TOKEN``
(GB per token), ``SLOGUARD_MODEL_FOOTPRINT_GB`` (GiB reserved for weights and activations).
"""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sloguard._optional import optional
from sloguard.space import Repair

GIB = float(1 << 30)
BLOCK_SIZE = 16  # tokens per KV block: vLLM's default on CUDA (hardware.block_size)
# bytes per weight parameter; 4-bit formats carry group scales
WEIGHT_BYTES: dict[str, float] = {"fp16": 2.0, "fp8": 1.0, "awq": 0.5625, "gptq": 0.5625}
_DTYPE_BYTES = {"float16": 2, "bfloat16": 2, "float32": 4, "float": 4, "half": 2}


def kv_heads_per_gpu(model: Any, tensor_parallel_size: int = 1) -> int:
    """KV heads each GPU holds: vLLM shards them over the GPUs, and gives each GPU a copy of
    one when there are more GPUs than heads."""
    return max(model.num_kv_heads // tensor_parallel_size, 1)


def kv_bytes_per_token(
    model: Any, kv_cache_dtype: str = "auto", tensor_parallel_size: int = 1
) -> float:
    """2 (K and V) x layers x KV heads x head dim x element bytes (the model's dtype, or one
    byte for an fp8 KV cache), on each GPU of a tensor-parallel server."""
    element = 1 if kv_cache_dtype == "fp8" else model.dtype_bytes
    heads = kv_heads_per_gpu(model, tensor_parallel_size)
    return 2.0 * model.num_layers * heads * model.head_dim * element


def embedding_params(model: Any) -> float:
    """Parameters in the token embedding (kept in fp16 by weight-only quantization)."""
    return float(model.vocab_size * model.hidden_size)


def weight_bytes(model: Any, quantization: str, tensor_parallel_size: int = 1) -> float:
    """Bytes of weights resident on the device (on each GPU of a tensor-parallel server)."""
    total = model.num_params_b * 1e9
    embed = min(embedding_params(model), total)
    whole = embed * model.dtype_bytes + (total - embed) * WEIGHT_BYTES[quantization]
    return whole / tensor_parallel_size


def activation_bytes(
    model: Any, max_num_batched_tokens: int, max_num_seqs: int, tensor_parallel_size: int = 1
) -> float:
    """Peak activation memory of vLLM's profiling pass, sampler logits included (the MLP's
    intermediate activations sharded over a tensor-parallel server's GPUs)."""
    intermediate = model.intermediate_size // tensor_parallel_size
    per_token = (2 * intermediate + 4 * model.hidden_size) * model.dtype_bytes
    logits = min(max_num_seqs, max_num_batched_tokens) * model.vocab_size * 4.0
    return max_num_batched_tokens * per_token + logits


def model_config_from_hf(path: str | Path) -> dict[str, Any]:
    """Architecture numbers from a Hugging Face ``config.json`` (a file or a model directory).

    Returns the fields of :class:`~sloguard.config.ModelConfig`; the parameter count is
    estimated from the architecture when the file does not state it.
    """
    path = Path(path)
    raw = json.loads((path / "config.json" if path.is_dir() else path).read_text())
    heads = raw["num_attention_heads"]
    hidden = raw["hidden_size"]
    cfg = {
        "name": raw.get("_name_or_path") or path.name,
        "path": str(path if path.is_dir() else path.parent),
        "num_layers": raw["num_hidden_layers"],
        "hidden_size": hidden,
        "intermediate_size": raw["intermediate_size"],
        "num_attention_heads": heads,
        "num_kv_heads": raw.get("num_key_value_heads", heads),
        "head_dim": raw.get("head_dim") or hidden // heads,
        "vocab_size": raw["vocab_size"],
        "max_position_embeddings": raw["max_position_embeddings"],
        "dtype_bytes": _DTYPE_BYTES.get(str(raw.get("torch_dtype", "float16")), 2),
    }
    cfg["num_params_b"] = estimate_params(cfg, tied=raw.get("tie_word_embeddings", False)) / 1e9
    return cfg


def estimate_params(cfg: dict[str, Any], tied: bool = False) -> float:
    """Parameters of a Llama/Qwen-style decoder: attention, gated MLP, norms, embeddings."""
    h, q = cfg["hidden_size"], cfg["num_attention_heads"] * cfg["head_dim"]
    kv = cfg["num_kv_heads"] * cfg["head_dim"]
    per_layer = h * q + 2 * h * kv + q * h + 3 * h * cfg["intermediate_size"] + 2 * h
    embed = cfg["vocab_size"] * h
    return cfg["num_layers"] * per_layer + embed * (1 if tied else 2) + h


def detect_vram_gb(fallback_gb: float, probe_device: bool = True) -> tuple[float, str]:
    """Total device memory in GiB and where it came from.

    Order: ``SLOGUARD_GPU_VRAM_GB``, then (when ``probe_device``) NVML through nvidia-ml-py,
    PyTorch if installed, ``nvidia-smi``, and finally ``fallback_gb`` (the hardware config).
    """
    env = os.environ.get("SLOGUARD_GPU_VRAM_GB")
    if env:
        return float(env), "env:SLOGUARD_GPU_VRAM_GB"
    if probe_device:
        for source, probe in (
            ("nvml", _vram_nvml),
            ("torch", _vram_torch),
            ("nvidia-smi", _vram_nvidia_smi),
        ):
            gib = probe()
            if gib:
                return gib, source
    return float(fallback_gb), "hardware config"


def visible_gpus() -> list[str]:
    """The GPUs this process may use: ``CUDA_VISIBLE_DEVICES`` if set, else every NVML device.

    Empty on a machine without NVIDIA GPUs (or without nvidia-ml-py).
    """
    env = os.environ.get("CUDA_VISIBLE_DEVICES")
    if env is not None:
        return [d.strip() for d in env.split(",") if d.strip() and d.strip() != "-1"]
    pynvml = optional("pynvml")
    if pynvml is None:
        return []
    try:
        pynvml.nvmlInit()
        try:
            return [str(i) for i in range(pynvml.nvmlDeviceGetCount())]
        finally:
            pynvml.nvmlShutdown()
    except pynvml.NVMLError:
        return []


def _vram_nvml() -> float | None:
    pynvml = optional("pynvml")
    if pynvml is None:
        return None
    try:
        pynvml.nvmlInit()
        try:
            return pynvml.nvmlDeviceGetMemoryInfo(pynvml.nvmlDeviceGetHandleByIndex(0)).total / GIB
        finally:
            pynvml.nvmlShutdown()
    except pynvml.NVMLError:
        return None


def _vram_torch() -> float | None:
    torch = optional("torch")
    if torch is None or not torch.cuda.is_available():
        return None
    return torch.cuda.get_device_properties(0).total_memory / GIB


def _vram_nvidia_smi() -> float | None:
    exe = shutil.which("nvidia-smi")
    if exe is None:
        return None
    try:
        out = subprocess.run(
            [exe, "--query-gpu=memory.total", "--format=csv,noheader,nounits"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout
        return float(out.splitlines()[0]) / 1024.0  # MiB
    except (subprocess.SubprocessError, ValueError, IndexError, OSError):
        return None


@dataclass(frozen=True)
class MemoryGuard:
    """Sizes a configuration to the KV cache it will get, before it is launched.

    Example:
        >>> guard = MemoryGuard.for_model(model_cfg, hw_cfg, vram_gb=40.0)  # doctest: +SKIP
        >>> repaired = guard.repair(config, util_high=0.95)  # doctest: +SKIP

    Args:
        model: The model config (weights and activations are sized from it).
        vram_gb: Device memory (GiB).
        non_torch_gb: CUDA context and allocator overhead (GiB).
        kv_bytes_per_token: KV bytes one token takes in the model's dtype.
        footprint_gb: A user reserve for weights and activations (GiB) replacing the estimate.
        overcommit: How many times the KV cache ``max_num_seqs x max_model_len`` may exceed
            (1.0 is the seed's rule: every sequence can reach ``max_model_len`` without
            preemption; it starves concurrency when the KV cache is short).
        block_size: The platform's default ``--block-size`` (a config's ``block_size`` wins).
    """

    model: Any
    vram_gb: float
    non_torch_gb: float
    kv_bytes_per_token: float
    footprint_gb: float | None = None
    overcommit: float = 1.0
    block_size: int = BLOCK_SIZE

    @classmethod
    def for_model(
        cls, model: Any, hw: Any, vram_gb: float, overcommit: float = 1.0
    ) -> MemoryGuard:
        """Build from configs, applying the seed's environment overrides."""
        kv_env = os.environ.get("SLOGUARD_KV_BYTES_PER_TOKEN")
        footprint_env = os.environ.get("SLOGUARD_MODEL_FOOTPRINT_GB")
        return cls(
            model=model,
            vram_gb=vram_gb,
            non_torch_gb=hw.non_torch_memory_gb,
            kv_bytes_per_token=float(kv_env) * 1e9 if kv_env else kv_bytes_per_token(model),
            footprint_gb=float(footprint_env) if footprint_env else None,
            overcommit=overcommit,
            block_size=hw.block_size,
        )

    def footprint_gib(self, config: dict[str, Any]) -> float:
        """What vLLM sets aside before the KV cache: weights, activations, non-torch (GiB)."""
        if self.footprint_gb is not None:
            return self.footprint_gb + self.non_torch_gb
        tp = config.get("tensor_parallel_size", 1)
        weights = weight_bytes(self.model, config["quantization"], tp)
        activations = activation_bytes(
            self.model, config["max_num_batched_tokens"], config["max_num_seqs"], tp
        )
        return (weights + activations) / GIB + self.non_torch_gb

    def kv_tokens(self, config: dict[str, Any]) -> int:
        """KV cache tokens vLLM would allocate for ``config`` (0 when nothing is left)."""
        kv_gib = config["gpu_memory_utilization"] * self.vram_gb - self.footprint_gib(config)
        if kv_gib <= 0:
            return 0
        block = self._block(config)
        return int(kv_gib * GIB // (self._kv_bytes(config) * block)) * block

    def repair(self, config: dict[str, Any], util_high: float, len_low: int = 1) -> Repair:
        """Fit ``config`` to its KV budget.

        Raises ``gpu_memory_utilization`` (up to ``util_high``) until one ``max_model_len``
        request fits, else lowers ``max_model_len`` (not below ``len_low``); then lowers
        ``max_num_seqs`` until ``max_num_seqs x max_model_len <= overcommit x KV tokens``.
        """
        fixed = dict(config)
        changes: list[str] = []
        tokens = self.kv_tokens(fixed)
        if tokens < fixed["max_model_len"]:
            util = self._util_for(fixed, fixed["max_model_len"])
            if util is not None and util <= util_high:
                changes.append(
                    f"gpu_memory_utilization {fixed['gpu_memory_utilization']:.3f} "
                    f"-> {util:.3f} (KV must hold one max_model_len request)"
                )
                fixed["gpu_memory_utilization"] = util
            else:
                new_len = max(tokens, len_low)
                if new_len < fixed["max_model_len"]:
                    changes.append(
                        f"max_model_len {fixed['max_model_len']} -> {new_len} "
                        f"(KV cache holds {tokens} tokens)"
                    )
                    fixed["max_model_len"] = new_len
            tokens = self.kv_tokens(fixed)
        if tokens > 0 and fixed["max_model_len"] > 0:
            cap = max(1, int(self.overcommit * tokens // fixed["max_model_len"]))
            if fixed["max_num_seqs"] > cap:
                changes.append(
                    f"max_num_seqs {fixed['max_num_seqs']} -> {cap} "
                    f"(max_num_seqs x max_model_len within {self.overcommit:g} x "
                    f"{tokens} KV tokens)"
                )
                fixed["max_num_seqs"] = cap
        return Repair(fixed, tuple(changes))

    def _kv_bytes(self, config: dict[str, Any]) -> float:
        """KV bytes per token on each GPU under ``config``: an fp8 KV cache stores one byte an
        element; tensor parallelism shards the KV heads."""
        per_token = self.kv_bytes_per_token
        tp = config.get("tensor_parallel_size", 1)
        if tp != 1:
            per_token *= kv_heads_per_gpu(self.model, tp) / self.model.num_kv_heads
        if config.get("kv_cache_dtype", "auto") == "fp8":
            return per_token / self.model.dtype_bytes
        return per_token

    def _block(self, config: dict[str, Any]) -> int:
        """Tokens per KV block under ``config``: its ``block_size``, else the platform's."""
        return int(config.get("block_size", self.block_size))

    def _util_for(self, config: dict[str, Any], tokens: int) -> float | None:
        """The smallest utilisation (rounded up to 0.001) that gives ``tokens`` KV tokens."""
        block = self._block(config)
        need_gib = math.ceil(tokens / block) * block * self._kv_bytes(config) / GIB
        util = math.ceil((self.footprint_gib(config) + need_gib) / self.vram_gb * 1000) / 1000
        return util if util <= 1.0 else None
