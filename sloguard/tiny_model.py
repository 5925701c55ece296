"""Build the tiny random-weight Qwen2 model the CPU build of vLLM serves, with no download.

Run it with a Python that has ``transformers``, ``tokenizers`` and ``torch`` (the vLLM venv does)::

    .venv-vllm/bin/python sloguard/tiny_model.py --config conf/model/tiny-random.yaml \\
        --output models/tiny-random

The architecture numbers come from the model config (one source for the tuner and the server).
A byte-level BPE tokenizer is trained on generated text, so ``vocab_size`` ids all exist.
Latency does not depend on weight values, so random weights measure a real serving stack. This
module imports nothing from ``sloguard``: the vLLM venv does not have the tuner installed.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
from pathlib import Path
from typing import Any

_LETTERS = "abcdefghijklmnopqrstuvwxyz0123456789"


def _corpus(lines: int, seed: int) -> list[str]:
    """Random words: varied enough for BPE to learn every merge up to the vocabulary size."""
    rng = random.Random(seed)
    return [
        " ".join(
            "".join(rng.choice(_LETTERS) for _ in range(rng.randint(2, 9))) for _ in range(32)
        )
        for _ in range(lines)
    ]


def build(spec: dict[str, Any], output: Path, seed: int = 0) -> Path:
    """Write config.json, safetensors weights and a tokenizer for ``spec`` into ``output``."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast, Qwen2Config, Qwen2ForCausalLM

    vocab = int(spec["vocab_size"])
    tokenizer = Tokenizer(models.BPE(unk_token=None))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab - 2,
        special_tokens=["<|endoftext|>", "<|im_end|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(_corpus(4000, seed), trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, eos_token="<|endoftext|>", pad_token="<|endoftext|>"
    )

    torch.manual_seed(seed)
    config = Qwen2Config(
        vocab_size=vocab,
        hidden_size=int(spec["hidden_size"]),
        intermediate_size=int(spec["intermediate_size"]),
        num_hidden_layers=int(spec["num_layers"]),
        num_attention_heads=int(spec["num_attention_heads"]),
        num_key_value_heads=int(spec["num_kv_heads"]),
        head_dim=int(spec["head_dim"]),
        max_position_embeddings=int(spec["max_position_embeddings"]),
        tie_word_embeddings=True,
        torch_dtype="bfloat16",
        bos_token_id=fast.eos_token_id,
        eos_token_id=fast.eos_token_id,
    )
    model = Qwen2ForCausalLM(config).to(torch.bfloat16)
    output.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(output, safe_serialization=True)
    fast.save_pretrained(output)
    params = sum(p.numel() for p in model.parameters())
    (output / "sloguard-model.json").write_text(
        json.dumps({"built_by": "sloguard/tiny_model.py", "params": params, "seed": seed}) + "\n"
    )
    return output


def _read_spec(path: Path) -> dict[str, Any]:
    import yaml

    return yaml.safe_load(path.read_text(encoding="utf-8"))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config", default="conf/model/tiny-random.yaml", type=Path)
    parser.add_argument("--output", default=None, type=Path, help="default: the config's path")
    parser.add_argument("--seed", default=0, type=int)
    args = parser.parse_args(argv)
    try:
        spec = _read_spec(args.config)
    except OSError as e:
        sys.exit(f"tiny_model: error: cannot read --config {args.config}: {e.strerror}")
    output = args.output or Path(spec["path"])
    build(spec, output, args.seed)
    size = sum(f.stat().st_size for f in output.iterdir())
    print(f"wrote {output} ({size / 1e6:.2f} MB)")


if __name__ == "__main__":
    main()
