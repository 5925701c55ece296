import numpy as np
import pytest

from sloguard.backends.sim import StepTimeModel

KNOBS = {"quantization": "fp16", "max_num_seqs": 8, "enforce_eager": False}


def _model(compose, *overrides: str, **knobs) -> StepTimeModel:
    cfg = compose("model=qwen2-1.5b", "hardware=a100-40gb", *overrides)
    return StepTimeModel(cfg.model, cfg.hardware, {**KNOBS, **knobs})


@pytest.mark.parametrize(("eager", "tp"), [(True, 1), (False, 1), (False, 2)])
def test_vectorised_decode_is_the_scalar_model_float_for_float(compose, eager, tp) -> None:
    model = _model(
        compose, "hardware.seq_overhead_ms=0.05", enforce_eager=eager, tensor_parallel_size=tp
    )
    contexts = np.arange(100, 5000, 37)
    jitters = np.random.default_rng(0).lognormal(0, 0.3, len(contexts))
    expected = [model(6, 6, 0.0, int(c), float(j)) for c, j in zip(contexts, jitters, strict=True)]
    assert model.decode(6, contexts, jitters).tolist() == expected


def test_noise_scales_the_overheads_not_the_kernels(compose) -> None:
    model = _model(compose, "hardware.seq_overhead_ms=0.1")
    quiet = model(2048, 4, 2e6, 0, 1.0)
    overhead = model.eager_overhead + 4 * model.seq_overhead  # 2048 tokens: past the graphs
    assert model(2048, 4, 2e6, 0, 3.0) == pytest.approx(quiet + 2 * overhead)


def test_per_sequence_cost_and_graph_mode_settings(compose) -> None:
    base = _model(compose)
    costly = _model(compose, "hardware.seq_overhead_ms=0.5")
    assert costly(8, 8, 0.0, 4000) - base(8, 8, 0.0, 4000) == pytest.approx(8 * 0.5e-3)
    split = _model(compose, "hardware.seq_overhead_ms=0.5", "hardware.graph_seq_overhead_ms=0.1")
    assert split(8, 8, 0.0, 4000) - base(8, 8, 0.0, 4000) == pytest.approx(8 * 0.1e-3)
    # captured graphs cover batches up to 2 x max_num_seqs; the CPU build's compiled graphs all
    assert base.graph_tokens == 16
    dynamic = _model(compose, "hardware.graphs_dynamic=true")
    assert dynamic.graph_tokens == 512
    faster = _model(compose, "hardware.graphs_dynamic=true", "hardware.graph_compute_factor=0.5")
    assert faster(512, 1, 0.0, 0) < 0.75 * dynamic(512, 1, 0.0, 0)  # compute-bound, graphed
    assert faster(4096, 1, 0.0, 0) == dynamic(4096, 1, 0.0, 0)  # beyond the graphs: unchanged


def test_attention_efficiency_prices_long_contexts(compose) -> None:
    base = _model(compose)
    slow_attention = _model(compose, "hardware.attention_efficiency=0.25")
    short = (512, 1, 512 * 256.0, 0)
    long = (512, 1, 512 * 8000.0, 0)
    assert slow_attention(*long) / base(*long) > slow_attention(*short) / base(*short) > 1.0


def test_an_fp8_kv_cache_halves_the_kv_reads_of_a_decode_step(compose) -> None:
    auto = _model(compose)
    fp8 = _model(compose, "space.kv_cache_dtype=[auto,fp8]", kv_cache_dtype="fp8")
    assert fp8.kv_bytes_per_token == auto.kv_bytes_per_token / 2
    # 64 sequences at 4k context: the KV reads dominate, so the step is clearly faster
    assert fp8(64, 64, 0, 64 * 4096) < 0.8 * auto(64, 64, 0, 64 * 4096)
    assert fp8(64, 64, 0, 64 * 16) == pytest.approx(auto(64, 64, 0, 64 * 16), rel=0.05)


def test_tensor_parallelism_splits_the_work_and_adds_two_all_reduces_a_layer(compose) -> None:
    one = _model(compose, enforce_eager=True)
    two = _model(compose, enforce_eager=True, tensor_parallel_size=2)
    # A100 NVLink: 230 GB/s bus bandwidth, 10 us an all-reduce; Qwen2-1.5B: 28 layers x 1536
    assert two.comm_s == pytest.approx(2 * 28 * 10e-6)
    assert two.comm_per_token == pytest.approx(2 * 28 * 1.0 * 1536 * 2 / 230e9)
    # a 2048-token prefill is compute-bound: half the kernel time, plus the all-reduces
    kernels = one(2048, 1, 2e6, 0) - one.eager_overhead
    expected = kernels / 2 + two.comm_s + two.comm_per_token * 2048 + one.eager_overhead
    assert two(2048, 1, 2e6, 0) == pytest.approx(expected)
    # two GPUs' KV heads (Qwen2 has 2): each reads one, the same bytes in all
    assert two.kv_bytes_per_token == one.kv_bytes_per_token


@pytest.mark.parametrize("tp", [1, 2, 4])
@pytest.mark.parametrize("eager", [True, False])
@pytest.mark.parametrize(
    ("hardware", "batch", "context"),
    [
        (("model=qwen2-1.5b", "hardware=a100-40gb"), 16, 1000),  # compute-bound once filled
        (("model=llama-3.1-8b", "hardware=l4-24gb"), 64, 2000),  # reads bound it: memory
    ],
)
def test_extra_tokens_is_the_inverse_of_a_step(compose, tp, eager, hardware, batch, context):
    model = _model(compose, *hardware, enforce_eager=eager, tensor_parallel_size=tp)
    step = (batch, batch, 0.0, batch * context)  # a decode batch; prompt tokens at context 500
    fitted = 0
    alone = model(*step, 1.0)  # the batch without added tokens
    for seconds in (factor * alone for factor in (0.9, 1.02, 1.1, 1.5, 2, 4, 8, 16)):
        extra = model.extra_tokens(seconds, step, 500.0)

        def timed(n: int) -> float:
            return model(step[0] + n, step[1], step[2] + n * 500.0, step[3])

        assert timed(extra) <= seconds + 1e-12 or extra == 0, (seconds, extra)
        assert seconds < timed(extra + 1), (seconds, extra)
        fitted += extra > 0
    assert fitted >= 3  # (a graph-mode batch pays eager overheads for added tokens)
