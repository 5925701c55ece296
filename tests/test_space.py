import numpy as np
import pytest

from sloguard.exceptions import ConfigError
from sloguard.space import KNOB_NAMES, CategoricalKnob, IntKnob, SearchSpace


@pytest.fixture
def space(compose) -> SearchSpace:
    return SearchSpace.from_config(compose().space)


def test_space_matches_the_seed_readme(space: SearchSpace) -> None:
    k = space.knobs
    assert tuple(k) == KNOB_NAMES
    assert (k["max_num_seqs"].low, k["max_num_seqs"].high, k["max_num_seqs"].log) == (4, 128, True)
    assert (k["max_num_batched_tokens"].low, k["max_num_batched_tokens"].high) == (512, 8192)
    assert (k["gpu_memory_utilization"].low, k["gpu_memory_utilization"].high) == (0.6, 0.95)
    assert (k["max_model_len"].low, k["max_model_len"].high) == (512, 4096)
    assert k["quantization"].choices == ("fp16",)


def test_samples_stay_in_range_and_respect_the_condition(space: SearchSpace) -> None:
    rng = np.random.default_rng(0)
    for _ in range(500):
        params = space.sample(rng)
        for name, value in params.items():
            assert space.knobs[name].contains(value), (name, value)
        if params["enforce_eager"]:
            assert "enable_chunked_prefill" not in params
        else:
            assert "enable_chunked_prefill" in params


def test_log_scale_sampling_is_log_uniform() -> None:
    knob = IntKnob("max_num_seqs", 4, 128, True, 16)
    rng = np.random.default_rng(1)
    draws = np.array([knob.sample(rng) for _ in range(20000)])
    # log-uniform on [4, 129): P(x < 16) = ln(16/4)/ln(129/4) ~= 0.40 (uniform would be ~0.10)
    assert np.mean(draws < 16) == pytest.approx(np.log(4) / np.log(129 / 4), abs=0.02)
    assert draws.min() == 4 and draws.max() == 128


def test_complete_fills_the_inactive_knob(space: SearchSpace) -> None:
    full = space.complete({"enforce_eager": True, "max_num_seqs": 8})
    assert tuple(full) == KNOB_NAMES
    assert full["enable_chunked_prefill"] is False
    assert full["max_num_seqs"] == 8
    assert space.complete({"enforce_eager": False})["enable_chunked_prefill"] is True
    with pytest.raises(ConfigError, match="unknown knob 'swap_space'"):
        space.complete({"swap_space": 4})
    with pytest.raises(ConfigError, match=r"'block_size' is not in this space.*space.block_size"):
        space.complete({"block_size": 32})


def test_repair_bumps_and_caps_like_vllm_needs(space: SearchSpace) -> None:
    config = space.complete(
        {
            "enforce_eager": False,
            "enable_chunked_prefill": False,
            "max_num_batched_tokens": 512,
            "max_model_len": 4096,
            "max_num_seqs": 64,
        }
    )
    fixed = space.repair(config, max_position_embeddings=2048)
    assert fixed.config["max_model_len"] == 2048
    assert fixed.config["max_num_batched_tokens"] == 2048
    assert len(fixed.changes) == 2
    chunked = space.complete(
        {
            "enforce_eager": False,
            "enable_chunked_prefill": True,
            "max_num_batched_tokens": 512,
            "max_num_seqs": 100,
        }
    )
    assert space.repair(chunked, 32768).config["max_num_batched_tokens"] == 512  # no need
    small = space.complete({"max_num_batched_tokens": 64, "max_num_seqs": 100})
    assert space.repair(small, 32768).config["max_num_batched_tokens"] == 100


def test_long_prefill_threshold_is_a_knob_only_where_the_space_lists_it(compose) -> None:
    assert "long_prefill_token_threshold" not in SearchSpace.from_config(compose().space).knobs
    cfg = compose("space.long_prefill_token_threshold=[0,256,8192]")
    space = SearchSpace.from_config(cfg.space)
    knob = space.knobs["long_prefill_token_threshold"]
    assert knob == CategoricalKnob("long_prefill_token_threshold", (0, 256, 8192), 0)
    config = space.complete({"long_prefill_token_threshold": 8192, "max_model_len": 1024})
    fixed = space.repair(config, max_position_embeddings=32768)
    assert fixed.config["long_prefill_token_threshold"] == 1024  # vLLM refuses > max_model_len
    assert fixed.changes == (
        "long_prefill_token_threshold 8192 -> 1024 (must be <= max_model_len)",
    )
    assert space.repair(space.complete({"long_prefill_token_threshold": 256}), 32768).changes == ()


def test_repair_off_changes_nothing(compose) -> None:
    space = SearchSpace.from_config(compose("space.repair=false").space)
    config = space.complete(
        {"enable_chunked_prefill": False, "max_num_batched_tokens": 512, "max_model_len": 4096}
    )
    assert space.repair(config, 2048).config == config


def test_ranges_come_from_config(compose) -> None:
    space = SearchSpace.from_config(
        compose("space.max_num_seqs.high=256", "space.enforce_eager.choices=[false]").space
    )
    assert space.knobs["max_num_seqs"].high == 256
    assert space.knobs["enforce_eager"] == CategoricalKnob("enforce_eager", (False,), False)
    rng = np.random.default_rng(0)
    assert all("enable_chunked_prefill" in space.sample(rng) for _ in range(50))


def test_scheduling_policy_is_a_knob_only_where_the_space_lists_it(compose) -> None:
    assert "scheduling_policy" not in SearchSpace.from_config(compose().space).knobs
    space = SearchSpace.from_config(compose("space.scheduling_policy=[fcfs,priority]").space)
    knob = space.knobs["scheduling_policy"]
    assert knob == CategoricalKnob("scheduling_policy", ("fcfs", "priority"), "fcfs")
    assert space.complete({})["scheduling_policy"] == "fcfs"


def test_parallel_sizes_are_knobs_only_where_the_space_lists_them(compose) -> None:
    assert "tensor_parallel_size" not in SearchSpace.from_config(compose().space).knobs
    space = SearchSpace.from_config(compose("space.tensor_parallel_size=[1,2,4]").space)
    assert space.knobs["tensor_parallel_size"] == CategoricalKnob(
        "tensor_parallel_size", (1, 2, 4), 1
    )
    assert "data_parallel_size" not in space.knobs
    both = SearchSpace.from_config(compose("space.data_parallel_size=[2,1]").space)
    assert both.knobs["data_parallel_size"] == CategoricalKnob("data_parallel_size", (2, 1), 2)
