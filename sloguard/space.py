"""The hierarchical search space over vLLM's serving knobs: sampling, conditionals and repair.

Knob names are vLLM's engine-argument names. ``enable_chunked_prefill`` is conditional: it is
only searched when ``enforce_eager`` is false (the seed's vLLM returned 500s otherwise), and is
false whenever it is inactive.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from sloguard.exceptions import ConfigError

if TYPE_CHECKING:
    import numpy as np
    from omegaconf import DictConfig

KNOB_NAMES: tuple[str, ...] = (
    "quantization",
    "max_num_seqs",
    "max_num_batched_tokens",
    "gpu_memory_utilization",
    "max_model_len",
    "enforce_eager",
    "enable_chunked_prefill",
    "enable_prefix_caching",
)
# vLLM engine arguments beyond the seed's eight: knobs only where the space lists their choices
ENGINE_EXTRAS: tuple[str, ...] = (
    "kv_cache_dtype",
    "long_prefill_token_threshold",
    "scheduling_policy",
    "tensor_parallel_size",
    "data_parallel_size",
    "block_size",
    "num_speculative_tokens",
)
# the simulator's serving choices, knobs of the space only where the space gives them
SERVING_KNOBS: tuple[str, ...] = ("scheduler", "replicas", "router", "spec_decode")
OPTIONAL_KNOBS: tuple[str, ...] = ENGINE_EXTRAS + SERVING_KNOBS
QUANTIZATIONS: tuple[str, ...] = ("fp16", "fp8", "awq", "gptq")

# knob -> (parent knob, parent value under which the knob is active)
CONDITIONS: dict[str, tuple[str, Any]] = {"enable_chunked_prefill": ("enforce_eager", False)}
# value an inactive knob takes when the configuration is launched
INACTIVE_VALUES: dict[str, Any] = {"enable_chunked_prefill": False}


@dataclass(frozen=True)
class IntKnob:
    """An integer knob, sampled uniformly or log-uniformly in ``[low, high]``."""

    name: str
    low: int
    high: int
    log: bool
    default: int

    def sample(self, rng: np.random.Generator) -> int:
        if self.log:
            value = math.exp(rng.uniform(math.log(self.low), math.log(self.high + 1)))
            return min(int(value), self.high)
        return int(rng.integers(self.low, self.high + 1))

    def contains(self, value: Any) -> bool:
        return (
            isinstance(value, int)
            and not isinstance(value, bool)
            and (self.low <= value <= self.high)
        )

    def describe(self) -> str:
        return f"an integer in [{self.low}, {self.high}]"


@dataclass(frozen=True)
class FloatKnob:
    """A continuous knob in ``[low, high]``."""

    name: str
    low: float
    high: float
    log: bool
    default: float

    def sample(self, rng: np.random.Generator) -> float:
        if self.log:
            return float(math.exp(rng.uniform(math.log(self.low), math.log(self.high))))
        return float(rng.uniform(self.low, self.high))

    def contains(self, value: Any) -> bool:
        return (
            isinstance(value, (int, float))
            and not isinstance(value, bool)
            and (self.low <= value <= self.high)
        )

    def describe(self) -> str:
        return f"a number in [{self.low}, {self.high}]"


@dataclass(frozen=True)
class CategoricalKnob:
    """A knob with a finite set of choices (booleans or strings)."""

    name: str
    choices: tuple[Any, ...]
    default: Any

    def sample(self, rng: np.random.Generator) -> Any:
        return self.choices[int(rng.integers(len(self.choices)))]

    def contains(self, value: Any) -> bool:
        return any(value == c and type(value) is type(c) for c in self.choices)

    def describe(self) -> str:
        return "one of: " + ", ".join(
            str(c).lower() if isinstance(c, bool) else c for c in self.choices
        )


Knob = IntKnob | FloatKnob | CategoricalKnob


@dataclass(frozen=True)
class Repair:
    """The outcome of :meth:`SearchSpace.repair`: the launched config and what was changed."""

    config: dict[str, Any]
    changes: tuple[str, ...]


class SearchSpace:
    """The eight-knob space with its conditional structure.

    Example:
        >>> import numpy as np
        >>> space = SearchSpace.default()
        >>> params = space.sample(np.random.default_rng(0))
        >>> config = space.repair(space.complete(params), max_position_embeddings=32768).config

    Args:
        knobs: One knob per name in :data:`KNOB_NAMES`.
        repair: Whether :meth:`repair` bumps and caps knobs (off, the config launches as drawn).
    """

    def __init__(self, knobs: dict[str, Knob], repair: bool = True) -> None:
        missing = [n for n in KNOB_NAMES if n not in knobs]
        if missing:
            raise ConfigError(f"space is missing knobs: {', '.join(missing)}")
        names = KNOB_NAMES + tuple(n for n in OPTIONAL_KNOBS if n in knobs)
        self.knobs = {name: knobs[name] for name in names}
        self.repair_enabled = repair

    @classmethod
    def from_config(cls, cfg: DictConfig | dict[str, Any]) -> SearchSpace:
        """Build from the ``space`` config group, checking every range."""
        knobs: dict[str, Knob] = {}
        for name in OPTIONAL_KNOBS:  # searched where the space lists choices, the first default
            if cfg.get(name):
                knobs[name] = CategoricalKnob(name, tuple(cfg[name]), cfg[name][0])
        for name in KNOB_NAMES:
            spec = cfg[name]
            if "choices" in spec:
                choices = tuple(spec["choices"])
                if not choices:
                    raise ConfigError(f"space.{name}.choices is empty; give at least one value")
                if name == "quantization":
                    for choice in choices:
                        _check_quantization("space.quantization.choices", choice)
                knob: Knob = CategoricalKnob(name, choices, spec["default"])
            else:
                low, high = spec["low"], spec["high"]
                if low > high or (spec["log"] and low <= 0):
                    raise ConfigError(
                        f"space.{name}: low={low}, high={high} is invalid; it needs "
                        f"{'0 < ' if spec['log'] else ''}low <= high"
                    )
                # a float range (FloatRangeConfig, or float bounds) is continuous
                kind = FloatKnob if isinstance(low, float) or isinstance(high, float) else IntKnob
                knob = kind(name, low, high, bool(spec["log"]), spec["default"])
            if not knob.contains(knob.default):
                given = "choices" if isinstance(knob, CategoricalKnob) else "low/high"
                raise ConfigError(
                    f"space.{name}.default={knob.default!r} is outside space.{name}.{given}: "
                    f"it must be {knob.describe()}; change the default with the {given}"
                )
            knobs[name] = knob
        util = knobs["gpu_memory_utilization"]
        assert isinstance(util, (FloatKnob, IntKnob))
        if not 0.0 < util.low <= util.high <= 1.0:
            raise ConfigError(
                f"space.gpu_memory_utilization: low={util.low}, high={util.high} is invalid; "
                "it needs 0 < low <= high <= 1"
            )
        return cls(knobs, repair=bool(cfg.get("repair", True)))

    @classmethod
    def default(cls) -> SearchSpace:
        """The seed README's space with vLLM-like defaults."""
        return cls(
            {
                "quantization": CategoricalKnob("quantization", ("fp16",), "fp16"),
                "max_num_seqs": IntKnob("max_num_seqs", 4, 128, True, 128),
                "max_num_batched_tokens": IntKnob("max_num_batched_tokens", 512, 8192, True, 2048),
                "gpu_memory_utilization": FloatKnob(
                    "gpu_memory_utilization", 0.6, 0.95, False, 0.9
                ),
                "max_model_len": IntKnob("max_model_len", 512, 4096, True, 4096),
                "enforce_eager": CategoricalKnob("enforce_eager", (True, False), False),
                "enable_chunked_prefill": CategoricalKnob(
                    "enable_chunked_prefill", (True, False), True
                ),
                "enable_prefix_caching": CategoricalKnob(
                    "enable_prefix_caching", (True, False), True
                ),
            }
        )

    def is_active(self, name: str, params: dict[str, Any]) -> bool:
        """Whether ``name`` is searched given the values of its parent knobs."""
        condition = CONDITIONS.get(name)
        return condition is None or params.get(condition[0]) == condition[1]

    def sample(self, rng: np.random.Generator) -> dict[str, Any]:
        """Draw the active knobs uniformly (log-uniformly where set), parents first."""
        params: dict[str, Any] = {}
        for name, knob in self.knobs.items():
            if name not in CONDITIONS:
                params[name] = knob.sample(rng)
        for name in CONDITIONS:
            if self.is_active(name, params):
                params[name] = self.knobs[name].sample(rng)
        return {name: params[name] for name in self.knobs if name in params}

    def defaults(self) -> dict[str, Any]:
        """The default of every active knob."""
        params = {name: knob.default for name, knob in self.knobs.items()}
        return {k: v for k, v in params.items() if self.is_active(k, params)}

    def complete(self, params: dict[str, Any]) -> dict[str, Any]:
        """Return a full config: inactive knobs take their inactive value, order fixed."""
        unknown = sorted(set(params) - set(self.knobs))
        if unknown:
            raise _unknown_knob(unknown[0])
        full = {**self.defaults(), **params}
        for name, value in INACTIVE_VALUES.items():
            if not self.is_active(name, full):
                full[name] = value
        return {name: full[name] for name in self.knobs}

    def check_values(self, params: dict[str, Any], where: str = "params") -> None:
        """Raise ConfigError if a value is of the wrong kind; range is not enforced here."""
        for name, value in params.items():
            if name not in self.knobs:
                raise _unknown_knob(name)
            knob = self.knobs[name]
            if name == "quantization":
                _check_quantization(f"{where}.quantization", value)
            if isinstance(knob, (IntKnob, FloatKnob)) and not value > 0:
                raise ConfigError(f"{where}.{name}={value} is invalid; it must be > 0")
        if "gpu_memory_utilization" in params and not params["gpu_memory_utilization"] <= 1.0:
            raise ConfigError(
                f"{where}.gpu_memory_utilization={params['gpu_memory_utilization']} is invalid; "
                "it must be in (0, 1]"
            )

    def repair(self, config: dict[str, Any], max_position_embeddings: int) -> Repair:
        """Make a complete config launchable the way vLLM needs it.

        Caps ``max_model_len`` at the model's context, raises ``max_num_batched_tokens`` to at
        least ``max_num_seqs``, and to at least ``max_model_len`` when chunked prefill is off,
        and caps ``long_prefill_token_threshold`` at ``max_model_len``.
        With repair disabled the config is returned unchanged, so vLLM's refusals reproduce.
        """
        fixed = dict(config)
        changes: list[str] = []
        if not self.repair_enabled:
            return Repair(fixed, ())

        def _set(name: str, value: Any, why: str) -> None:
            changes.append(f"{name} {fixed[name]} -> {value} ({why})")
            fixed[name] = value

        if fixed["max_model_len"] > max_position_embeddings:
            _set("max_model_len", max_position_embeddings, "model context limit")
        if fixed["max_num_batched_tokens"] < fixed["max_num_seqs"]:
            _set("max_num_batched_tokens", fixed["max_num_seqs"], "must be >= max_num_seqs")
        if (
            not fixed["enable_chunked_prefill"]
            and fixed["max_num_batched_tokens"] < fixed["max_model_len"]
        ):
            _set(
                "max_num_batched_tokens",
                fixed["max_model_len"],
                "chunked prefill off needs >= max_model_len",
            )
        if fixed.get("long_prefill_token_threshold", 0) > fixed["max_model_len"]:
            _set(
                "long_prefill_token_threshold",
                fixed["max_model_len"],
                "must be <= max_model_len",
            )
        return Repair(fixed, tuple(changes))


def _unknown_knob(name: str) -> ConfigError:
    if name in OPTIONAL_KNOBS:
        return ConfigError(
            f"knob {name!r} is not in this space; it is searched when the space gives its "
            f"choices (space.{name}=[...])"
        )
    return ConfigError(f"unknown knob {name!r}; knobs are: {', '.join(KNOB_NAMES)}")


def _check_quantization(key: str, value: Any) -> None:
    if value not in QUANTIZATIONS:
        raise ConfigError(
            f"{key}={value!r} is not known; choose one of: {', '.join(QUANTIZATIONS)}"
        )
