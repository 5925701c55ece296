"""Any model from its config.json: numbers, parameter counts, and how a preset must agree."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from sloguard.cli import evaluate
from sloguard.exceptions import ConfigError
from sloguard.model_card import architecture, locate
from sloguard.tune import compose_config

# config.json fields of published models (the ones the footprint depends on)
LLAMA_31_8B = dict(hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
                   num_attention_heads=32, num_key_value_heads=8, vocab_size=128256,
                   max_position_embeddings=131072, tie_word_embeddings=False,
                   torch_dtype="bfloat16")  # fmt: skip
ARCHITECTURES = {
    # name: (config.json, published total params (B), published active params (B) or None)
    "llama-3.1-8b": (LLAMA_31_8B, 8.03, None),
    "llama-3.2-1b": (dict(hidden_size=2048, intermediate_size=8192, num_hidden_layers=16,
                          num_attention_heads=32, num_key_value_heads=8, head_dim=64,
                          vocab_size=128256, max_position_embeddings=131072,
                          tie_word_embeddings=True, torch_dtype="bfloat16"), 1.24, None),
    "qwen2.5-7b": (dict(hidden_size=3584, intermediate_size=18944, num_hidden_layers=28,
                        num_attention_heads=28, num_key_value_heads=4, vocab_size=152064,
                        max_position_embeddings=131072, tie_word_embeddings=False,
                        torch_dtype="bfloat16"), 7.62, None),
    "qwen3-8b": (dict(hidden_size=4096, intermediate_size=12288, num_hidden_layers=36,
                      num_attention_heads=32, num_key_value_heads=8, head_dim=128,
                      vocab_size=151936, max_position_embeddings=40960,
                      tie_word_embeddings=False, torch_dtype="bfloat16"), 8.19, None),
    "mistral-7b": (dict(hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
                        num_attention_heads=32, num_key_value_heads=8, vocab_size=32000,
                        max_position_embeddings=32768, tie_word_embeddings=False,
                        torch_dtype="bfloat16"), 7.24, None),
    "mixtral-8x7b": (dict(hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
                          num_attention_heads=32, num_key_value_heads=8, vocab_size=32000,
                          max_position_embeddings=32768, num_local_experts=8,
                          num_experts_per_tok=2, tie_word_embeddings=False,
                          torch_dtype="bfloat16"), 46.7, 12.9),
    "qwen1.5-moe-a2.7b": (dict(hidden_size=2048, intermediate_size=5632, num_hidden_layers=24,
                               num_attention_heads=16, num_key_value_heads=16,
                               vocab_size=151936, max_position_embeddings=8192,
                               num_experts=60, num_experts_per_tok=4,
                               moe_intermediate_size=1408,
                               shared_expert_intermediate_size=5632,
                               tie_word_embeddings=False, torch_dtype="bfloat16"), 14.3, 2.7),
    "gemma-2-9b": (dict(hidden_size=3584, intermediate_size=14336, num_hidden_layers=42,
                        num_attention_heads=16, num_key_value_heads=8, head_dim=256,
                        vocab_size=256000, max_position_embeddings=8192,
                        tie_word_embeddings=True, torch_dtype="float32"), 9.24, None),
}  # fmt: skip


@pytest.mark.parametrize("name", ARCHITECTURES)
def test_footprints_match_the_published_parameter_counts(name: str) -> None:
    raw, total, active = ARCHITECTURES[name]
    arch = architecture(raw)
    assert arch["num_params_b"] == pytest.approx(total, rel=0.02)
    if active is None:
        assert arch["active_params_b"] is None
    else:
        assert arch["active_params_b"] == pytest.approx(active, rel=0.02)
    assert arch["dtype_bytes"] == (4 if raw["torch_dtype"] == "float32" else 2)


def _model_dir(root: Path, name: str, raw: dict) -> Path:
    folder = root / name
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps(raw))
    return folder


def test_a_folder_gives_the_model_its_numbers(tmp_path: Path) -> None:
    folder = _model_dir(tmp_path, "my-mixtral", ARCHITECTURES["mixtral-8x7b"][0])
    model = compose_config([f"model.path={folder}"]).model
    assert model.name == "my-mixtral" and model.num_layers == 32 and model.vocab_size == 32000
    assert model.num_params_b == pytest.approx(46.7, rel=0.02)
    assert model.active_params_b == pytest.approx(12.9, rel=0.02)
    assert model.source == str(folder / "config.json")


def test_a_cached_hub_id_is_read_offline(tmp_path: Path, monkeypatch) -> None:
    repo = tmp_path / "hub" / "models--someorg--tiny-llama"
    snapshot = repo / "snapshots" / "abc123"
    snapshot.mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("abc123")
    (snapshot / "config.json").write_text(json.dumps(ARCHITECTURES["llama-3.2-1b"][0]))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    assert locate("someorg/tiny-llama") == snapshot / "config.json"
    model = compose_config(["model.path=someorg/tiny-llama"]).model
    assert model.hidden_size == 2048 and model.head_dim == 64


def test_a_preset_that_disagrees_with_the_file_is_refused(tmp_path: Path) -> None:
    folder = _model_dir(tmp_path, "qwen3", ARCHITECTURES["qwen3-8b"][0])
    with pytest.raises(ConfigError) as e:
        compose_config(["model=llama-3.1-8b", f"model.path={folder}"])
    assert str(e.value).startswith("model.num_layers=32 (model=llama-3.1-8b) disagrees with 36")
    with pytest.raises(ConfigError, match=r"^model.num_layers=40 \(model.num_layers=40\)"):
        compose_config([f"model.path={folder}", "model.num_layers=40"])
    agreeing = _model_dir(tmp_path, "llama", LLAMA_31_8B)
    model = compose_config(["model=llama-3.1-8b", f"model.path={agreeing}"]).model
    assert model.num_params_b == 8.03 and model.source.startswith("preset llama-3.1-8b (agrees")


def test_a_path_that_names_nothing_is_one_line(tmp_path: Path) -> None:
    for path in (str(tmp_path / "nowhere"), "someorg/not-cached"):
        with pytest.raises(ConfigError, match=r"neither a folder with config\.json nor a hub id"):
            compose_config([f"model.path={path}"])
    with pytest.raises(ConfigError, match=r"or any model by its config\.json: model\.path=DIR"):
        compose_config(["model=meta-llama/Llama-3.1-8B"])


def test_a_70b_class_model_does_not_fit_an_l4_while_a_small_one_starts(tmp_path: Path) -> None:
    big = dict(LLAMA_31_8B, hidden_size=8192, intermediate_size=28672, num_hidden_layers=80,
               num_attention_heads=64)  # fmt: skip
    folder = _model_dir(tmp_path, "made-up-70b", big)
    refused = evaluate([f"model.path={folder}", "hardware=l4-24gb", "workload=smoke"])
    assert refused["model"] == "made-up-70b" and refused["model_source"].endswith("config.json")
    assert refused["crash"]["category"] == "oom"
    small = evaluate(["model=qwen2-1.5b", "hardware=l4-24gb", "workload=smoke"])
    assert small["crash"] is None and small["model_source"] == "preset qwen2-1.5b"
