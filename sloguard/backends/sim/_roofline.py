"""Step time from a roofline: max(compute time, memory time) plus a per-step overhead.

Compute counts 2 FLOPs per weight per token, the LM head per sampled sequence, and attention
(QK^T and PV) over each token's context, at its own efficiency. Memory reads every weight once
per step plus the KV cache of every decoding sequence. The overhead is small with CUDA graphs
(batches up to the captured size; every size for the CPU build's compiled graphs, which also
compute faster) and larger in eager mode, where it grows with the number of layers; each sampled
sequence adds its share of CPU work (sampling, detokenising, streaming the token out). Noise
scales the overheads, not the kernels: host-side work is what varies from step to step.

Tensor parallelism over ``t`` GPUs divides the compute and the weight and KV reads among them
(each reads its own KV heads, a copy where there are more GPUs than heads) and adds two
all-reduces per layer of the step's hidden states (a ring: ``2 (t - 1) / t`` of their bytes
over the interconnect, plus a fixed latency each), not overlapped with the kernels.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np

from sloguard.gpu_profile import embedding_params, kv_bytes_per_token, weight_bytes

if TYPE_CHECKING:
    from sloguard.config import HardwareConfig, ModelConfig

# compute efficiency of weight-only 4-bit kernels relative to fp16 GEMMs
QUANT_COMPUTE_FACTOR: dict[str, float] = {"fp16": 1.0, "fp8": 1.0, "awq": 0.7, "gptq": 0.7}


class StepTimeModel:
    """Seconds one engine step takes for a given batch.

    Args:
        model: Model architecture config.
        hw: Hardware config (peaks, efficiencies, overheads).
        knobs: The trial's configuration.
    """

    def __init__(self, model: ModelConfig, hw: HardwareConfig, knobs: dict[str, Any]) -> None:
        quant = knobs["quantization"]
        tp = knobs.get("tensor_parallel_size", 1)
        computed = model.active_params_b or model.num_params_b  # a token's experts only
        body_params = max(computed * 1e9 - embedding_params(model), 0.0)
        self.flops_per_token = 2.0 * body_params
        self.flops_per_sample = 2.0 * model.vocab_size * model.hidden_size
        self.attn_flops_per_pair = (
            4.0 * model.num_layers * model.num_attention_heads * (model.head_dim)
        )
        self.weight_bytes = weight_bytes(model, quant) - embedding_params(model) * (
            model.dtype_bytes
        )
        kv_dtype = knobs.get("kv_cache_dtype", "auto")
        self.kv_bytes_per_token = kv_bytes_per_token(model, kv_dtype, tp) * tp  # all GPUs'
        self.flops_per_s = (
            hw.peak_tflops * 1e12 * hw.compute_efficiency * (QUANT_COMPUTE_FACTOR[quant]) * tp
        )
        self.attn_flops_per_s = self.flops_per_s * hw.attention_efficiency
        self.bytes_per_s = hw.mem_bw_gbps * 1e9 * hw.bandwidth_efficiency * tp
        self.parallel = tp > 1
        ring = 2.0 * (tp - 1) / tp  # of the bytes each GPU sends and receives per all-reduce
        self.comm_s = 2 * model.num_layers * hw.allreduce_latency_us * 1e-6  # used when parallel
        self.comm_per_token = (
            2 * model.num_layers * ring * model.hidden_size * model.dtype_bytes
        ) / (hw.interconnect_gbps * 1e9)
        graphs = not knobs["enforce_eager"] and hw.supports_cudagraphs
        captured = hw.cudagraph_max_tokens if hw.graphs_dynamic else 2 * knobs["max_num_seqs"]
        self.graph_tokens = min(captured, hw.cudagraph_max_tokens) if graphs else 0
        self.graph_compute = hw.graph_compute_factor
        self.graph_overhead = hw.graph_step_overhead_ms * 1e-3
        self.eager_overhead = (
            hw.eager_step_overhead_ms + hw.eager_layer_overhead_ms * model.num_layers
        ) * 1e-3
        self.seq_overhead = hw.seq_overhead_ms * 1e-3
        graph_seq = hw.graph_seq_overhead_ms
        self.graph_seq_overhead = (hw.seq_overhead_ms if graph_seq is None else graph_seq) * 1e-3

    def __call__(
        self,
        num_tokens: int,
        num_sampled: int,
        attn_pairs: float,
        decode_context: int,
        jitter: float = 1.0,
    ) -> float:
        """Step time in seconds.

        Args:
            num_tokens: Tokens computed this step (prefill chunks plus one per decode).
            num_sampled: Sequences that sample a token this step (LM head rows).
            attn_pairs: Query-key pairs attended by prefill chunks.
            decode_context: Summed context length of the decoding sequences.
            jitter: Noise factor on the step's overheads (host-side work is what varies).
        """
        return self._seconds(num_tokens, num_sampled, attn_pairs, decode_context, jitter, max)

    def decode(self, num_seqs: int, contexts: np.ndarray, jitters: np.ndarray) -> np.ndarray:
        """Times of consecutive pure-decode steps of ``num_seqs`` sequences, one per context.

        Equal, element for element, to calling the model with ``(num_seqs, num_seqs, 0.0, c, j)``.
        """
        return self._seconds(num_seqs, num_seqs, 0.0, contexts, jitters, np.maximum)

    def extra_tokens(
        self,
        seconds: float,
        step: tuple[int, int, float, int],
        context_per_token: float,
    ) -> int:
        """The most tokens a step can add and still take at most ``seconds`` (no jitter).

        The inverse of a step: what chunk of a prompt fits beside the rest of a batch.

        Args:
            seconds: The step's time limit.
            step: The batch so far: (tokens, sampled sequences, prefill attention pairs, decode
                context), as the model is called with; the added tokens sample nothing.
            context_per_token: Context each added token attends to (prefill attention).
        """
        tokens, sampled, pairs, decode_context = step
        memory = (self.weight_bytes + self.kv_bytes_per_token * decode_context) / self.bytes_per_s
        fixed = (
            self.flops_per_token * tokens + self.flops_per_sample * sampled
        ) / self.flops_per_s + self.attn_flops_per_pair * (
            pairs + decode_context
        ) / self.attn_flops_per_s
        per_token = (
            self.flops_per_token / self.flops_per_s
            + self.attn_flops_per_pair * context_per_token / self.attn_flops_per_s
        )
        comm = self.comm_per_token  # > 0 on a tensor-parallel server
        best = 0
        for graph in (True, False):
            if graph:
                if tokens >= self.graph_tokens:
                    continue
                left = seconds - self.graph_overhead - self.graph_seq_overhead * sampled
                factor = self.graph_compute
            else:
                left = seconds - self.eager_overhead - self.seq_overhead * sampled
                factor = 1.0
            if self.parallel:  # the all-reduces take their time beside the kernels'
                left -= self.comm_s + comm * tokens
            if left < memory:
                continue
            if self.parallel:  # bounded by the kernels and by the memory reads, each + comm
                extra = min(
                    int((left - fixed * factor) / (per_token * factor + comm)),
                    int((left - memory) / comm),
                )
            else:
                extra = int((left / factor - fixed) / per_token)
            if graph:
                extra = min(extra, self.graph_tokens - tokens)
            elif tokens + extra <= self.graph_tokens:
                continue  # steps that small run as graphs, timed above
            best = max(best, extra)
        return best

    def _seconds(
        self,
        num_tokens: int,
        num_sampled: int,
        attn_pairs: float,
        decode_context: Any,
        jitter: Any,
        maximum: Callable[[Any, Any], Any],
    ) -> Any:
        """The step-time formula: one step (floats, ``max``) or many (arrays, ``np.maximum``)."""
        compute = (
            self.flops_per_token * num_tokens + self.flops_per_sample * num_sampled
        ) / self.flops_per_s + self.attn_flops_per_pair * (
            attn_pairs + decode_context
        ) / self.attn_flops_per_s
        memory = (self.weight_bytes + self.kv_bytes_per_token * decode_context) / self.bytes_per_s
        graph = num_tokens <= self.graph_tokens
        work = maximum(compute * self.graph_compute, memory) if graph else maximum(compute, memory)
        if self.parallel:
            work = work + self.comm_s + self.comm_per_token * num_tokens
        if graph:
            return work + (self.graph_overhead + self.graph_seq_overhead * num_sampled) * jitter
        return work + (self.eager_overhead + self.seq_overhead * num_sampled) * jitter


# the reference for "zero-load" latency: eager steps, no quantization, one sequence; fixed so
# that a slowdown SLO does not move with the configuration being tuned
_ZERO_LOAD_KNOBS: dict[str, Any] = {
    "quantization": "fp16",
    "enforce_eager": True,
    "max_num_seqs": 1,
}


def zero_load_ttft_ms(
    model: ModelConfig, hw: HardwareConfig, prompt_lens: np.ndarray
) -> np.ndarray:
    """TTFT of each prompt served alone: the frontend delay plus one whole-prompt prefill step.

    SLOs-Serve sets TTFT limits as multiples of this (the hardware config's roofline, calibrated
    for the CPU build; fixed reference knobs, no noise).
    """
    step = StepTimeModel(model, hw, _ZERO_LOAD_KNOBS)
    lens = np.asarray(prompt_lens, dtype=float)
    seconds = np.array([step(int(p), 1, p * (p + 1) / 2, 0) for p in lens])
    return hw.request_overhead_ms + 1e3 * seconds
