"""Step time from a roofline: max(compute time, memory time) plus a per-step overhead.

Compute counts 2 FLOPs per weight per token, the LM head per sampled sequence, and attention
(QK^T and PV) over each token's context. Memory reads every weight once per step plus the KV
cache of every decoding sequence. The overhead is small with CUDA graphs (batches up to the
captured size) and larger in eager mode, where it grows with the number of layers.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from sloguard.gpu_profile import embedding_params, kv_bytes_per_token, weight_bytes

if TYPE_CHECKING:
    from omegaconf import DictConfig

# compute efficiency of weight-only 4-bit kernels relative to fp16 GEMMs
QUANT_COMPUTE_FACTOR: dict[str, float] = {"fp16": 1.0, "fp8": 1.0, "awq": 0.7, "gptq": 0.7}


class StepTimeModel:
    """Seconds one engine step takes for a given batch.

    Args:
        model: Model architecture config.
        hw: Hardware config (peaks, efficiencies, overheads).
        knobs: The trial's configuration.
    """

    def __init__(self, model: DictConfig, hw: DictConfig, knobs: dict[str, Any]) -> None:
        quant = knobs["quantization"]
        body_params = max(model.num_params_b * 1e9 - embedding_params(model), 0.0)
        self.flops_per_token = 2.0 * body_params
        self.flops_per_sample = 2.0 * model.vocab_size * model.hidden_size
        self.attn_flops_per_pair = (
            4.0 * model.num_layers * model.num_attention_heads * (model.head_dim)
        )
        self.weight_bytes = weight_bytes(model, quant) - embedding_params(model) * (
            model.dtype_bytes
        )
        self.kv_bytes_per_token = kv_bytes_per_token(model)
        self.flops_per_s = (
            hw.peak_tflops * 1e12 * hw.compute_efficiency * (QUANT_COMPUTE_FACTOR[quant])
        )
        self.bytes_per_s = hw.mem_bw_gbps * 1e9 * hw.bandwidth_efficiency
        graphs = not knobs["enforce_eager"] and hw.supports_cudagraphs
        self.graph_tokens = (
            min(2 * knobs["max_num_seqs"], hw.cudagraph_max_tokens) if graphs else 0
        )
        self.graph_overhead = hw.graph_step_overhead_ms * 1e-3
        self.eager_overhead = (
            hw.eager_step_overhead_ms + hw.eager_layer_overhead_ms * model.num_layers
        ) * 1e-3

    def __call__(
        self, num_tokens: int, num_sampled: int, attn_pairs: float, decode_context: int
    ) -> float:
        """Step time in seconds.

        Args:
            num_tokens: Tokens computed this step (prefill chunks plus one per decode).
            num_sampled: Sequences that sample a token this step (LM head rows).
            attn_pairs: Query-key pairs attended by prefill chunks.
            decode_context: Summed context length of the decoding sequences.
        """
        flops = (
            self.flops_per_token * num_tokens
            + self.flops_per_sample * num_sampled
            + self.attn_flops_per_pair * (attn_pairs + decode_context)
        )
        moved = self.weight_bytes + self.kv_bytes_per_token * decode_context
        overhead = self.graph_overhead if num_tokens <= self.graph_tokens else self.eager_overhead
        return max(flops / self.flops_per_s, moved / self.bytes_per_s) + overhead
