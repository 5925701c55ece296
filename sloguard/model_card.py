"""A model's architecture from its Hugging Face ``config.json``: a folder, or a cached hub id.

``model.path`` names what the vLLM backend serves. When it is a folder with a ``config.json``
(or a hub id already in the local Hugging Face cache; nothing is downloaded), the model's
numbers come from that file, overriding the preset's, so that memory and speed are those of
the model a user serves. Mixture-of-experts models count every expert's weights for memory and
the active ones for compute. A preset chosen explicitly (``model=NAME``), or a number given on
the command line, that disagrees with the file is an error naming the field.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, open_dict

from sloguard.exceptions import ConfigError

# the numbers config.json decides (``num_params_b`` is compared to 2%: presets round it)
ARCHITECTURE: tuple[str, ...] = (
    "num_layers",
    "hidden_size",
    "intermediate_size",
    "num_attention_heads",
    "num_kv_heads",
    "head_dim",
    "vocab_size",
    "max_position_embeddings",
    "dtype_bytes",
)
_DTYPE_BYTES = {"float16": 2, "bfloat16": 2, "float32": 4, "float": 4, "half": 2, "float8": 1}
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def locate(path: str) -> Path | None:
    """The ``config.json`` that ``path`` names: a file, a folder's, or a cached hub id's."""
    if not path:
        return None
    given = Path(path).expanduser()
    if given.is_file():
        return given
    if (given / "config.json").is_file():
        return given / "config.json"
    if _HUB_ID.match(path) and not given.exists():
        return _cached(path)
    return None


def _cached(repo_id: str) -> Path | None:
    """``config.json`` of ``repo_id`` in the local Hugging Face cache (its ``main`` snapshot)."""
    home = Path(os.environ.get("HF_HOME", Path.home() / ".cache" / "huggingface"))
    hub = Path(os.environ.get("HF_HUB_CACHE", home / "hub"))
    repo = hub / f"models--{repo_id.replace('/', '--')}"
    ref = repo / "refs" / "main"
    snapshots = [repo / "snapshots" / ref.read_text().strip()] if ref.is_file() else []
    snapshots += sorted((repo / "snapshots").glob("*"), key=lambda p: p.stat().st_mtime)[::-1]
    return next((s / "config.json" for s in snapshots if (s / "config.json").is_file()), None)


def architecture(raw: dict[str, Any]) -> dict[str, Any]:
    """ModelConfig's numbers from a parsed ``config.json`` (a nested ``text_config`` too)."""
    raw = {**raw, **raw.get("text_config", {})}
    heads = raw["num_attention_heads"]
    hidden = raw["hidden_size"]
    arch = {
        "num_layers": raw["num_hidden_layers"],
        "hidden_size": hidden,
        "intermediate_size": raw.get("intermediate_size") or raw["moe_intermediate_size"],
        "num_attention_heads": heads,
        "num_kv_heads": raw.get("num_key_value_heads") or heads,
        "head_dim": raw.get("head_dim") or hidden // heads,
        "vocab_size": raw["vocab_size"],
        "max_position_embeddings": raw.get("max_position_embeddings", 4096),
        "dtype_bytes": _DTYPE_BYTES.get(str(raw.get("torch_dtype") or raw.get("dtype")), 2),
    }
    total, active = parameters(arch, raw)
    arch["num_params_b"] = round(total / 1e9, 4)
    arch["active_params_b"] = round(active / 1e9, 4) if active < total else None
    return arch


def parameters(arch: dict[str, Any], raw: dict[str, Any]) -> tuple[float, float]:
    """Total and active (per token) parameters of a decoder, dense or mixture-of-experts."""
    h, d = arch["hidden_size"], arch["head_dim"]
    q, kv = arch["num_attention_heads"] * d, arch["num_kv_heads"] * d
    attention = 2 * h * q + 2 * h * kv + 2 * h  # q, o, k, v projections; two norms
    experts = raw.get("num_local_experts") or raw.get("num_experts") or raw.get("n_routed_experts")
    if experts:
        expert = 3 * h * (raw.get("moe_intermediate_size") or arch["intermediate_size"])
        shared = (
            3
            * h
            * (
                raw.get("shared_expert_intermediate_size")
                or (raw.get("n_shared_experts") or 0) * (raw.get("moe_intermediate_size") or 0)
            )
        )
        routed = raw.get("num_experts_per_tok", 2)
        mlp_total = experts * expert + shared + h * experts
        mlp_active = routed * expert + shared + h * experts
    else:
        mlp_total = mlp_active = 3 * h * arch["intermediate_size"]
    embeddings = arch["vocab_size"] * h * (1 if raw.get("tie_word_embeddings") else 2) + h
    layers = arch["num_layers"]
    total = layers * (attention + mlp_total) + embeddings
    return float(total), float(layers * (attention + mlp_active) + embeddings)


def resolve_model(cfg: DictConfig, overrides: Sequence[str]) -> str:
    """Take the model's numbers from the ``config.json`` that ``model.path`` names, if any.

    A preset chosen by name (``model=NAME``) keeps its numbers, checked against the file; the
    default preset gives way to the file. Returns where the numbers came from, which is also
    set as ``model.source``.

    Raises:
        ConfigError: The file disagrees with a preset chosen by name or a ``model.<field>=``
            override; or ``model.path`` was given without a preset and names nothing readable.
    """
    model = cfg.model
    chosen = next((o.split("=", 1)[1] for o in overrides if o.startswith("model=")), None)
    path_given = any(o.split("=", 1)[0].lstrip("+~") == "model.path" for o in overrides)
    found = locate(str(model.path))
    if found is None and path_given and chosen is None:
        raise ConfigError(
            f"model.path={model.path!r} is neither a folder with config.json nor a hub id in the "
            "local Hugging Face cache (nothing is downloaded); give model.path=DIR, or a preset "
            "with it: model=NAME (conf/model/)"
        )
    source = f"preset {model.name}"
    if found is not None:
        try:
            arch = architecture(json.loads(found.read_text()))
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise ConfigError(f"model.path: {found} is not a model's config.json ({e})") from None
        _check_agrees(cfg, arch, found, overrides, chosen)
        if chosen is None:  # the default preset gives way to the model's own numbers
            source = str(found)
            with open_dict(model):
                model.update(arch)
                if not _named(overrides):
                    model.name = found.parent.name if found.name == "config.json" else found.stem
        else:
            source += f" (agrees with {found})"
    with open_dict(model):
        model.source = source
    return source


def _named(overrides: Sequence[str]) -> bool:
    return any(o.split("=", 1)[0] == "model.name" for o in overrides)


def _check_agrees(
    cfg: DictConfig,
    arch: dict[str, Any],
    found: Path,
    overrides: Sequence[str],
    preset: str | None,
) -> None:
    """A preset chosen by name, or numbers given on the command line, must match the file."""
    keys = {o.split("=", 1)[0].removeprefix("model."): o for o in overrides if "=" in o}
    for key in ARCHITECTURE:
        given = cfg.model[key]
        if key not in keys and preset is None:
            continue
        if given != arch[key]:
            where = keys.get(key, f"model={preset}")
            raise ConfigError(
                f"model.{key}={given} ({where}) disagrees with {arch[key]} in {found}; "
                f"drop {where} to take the model's numbers from its config.json"
            )
