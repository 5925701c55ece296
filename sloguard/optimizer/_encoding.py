"""Knob values <-> unit-cube coordinates, and neighbourhood moves in that cube."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import numpy as np

from sloguard.space import CategoricalKnob, FloatKnob, IntKnob

if TYPE_CHECKING:
    from sloguard.space import Knob, SearchSpace

INACTIVE = -1.0


def to_unit(knob: Knob, value: Any) -> float:
    """A knob value as a coordinate in [0, 1] (log-scaled where the knob is)."""
    if isinstance(knob, CategoricalKnob):
        n = len(knob.choices)
        index = next(
            i for i, c in enumerate(knob.choices) if c == value and type(c) is type(value)
        )
        return index / (n - 1) if n > 1 else 0.5
    low, high = float(knob.low), float(knob.high)
    if high == low:
        return 0.5
    if knob.log:
        return (math.log(value) - math.log(low)) / (math.log(high) - math.log(low))
    return (value - low) / (high - low)


def from_unit(knob: Knob, u: float) -> Any:
    """The knob value at coordinate ``u`` (clipped to [0, 1])."""
    u = min(max(u, 0.0), 1.0)
    if isinstance(knob, CategoricalKnob):
        return knob.choices[round(u * (len(knob.choices) - 1))]
    low, high = float(knob.low), float(knob.high)
    value = (
        math.exp(math.log(low) + u * (math.log(high) - math.log(low)))
        if knob.log
        else (low + u * (high - low))
    )
    if isinstance(knob, IntKnob):
        return int(min(max(round(value), knob.low), knob.high))
    assert isinstance(knob, FloatKnob)
    return float(value)


def encode(space: SearchSpace, params: dict[str, Any]) -> np.ndarray:
    """Params as a vector; inactive knobs are :data:`INACTIVE`."""
    return np.array(
        [to_unit(k, params[n]) if n in params else INACTIVE for n, k in space.knobs.items()]
    )


def neighbour(
    space: SearchSpace,
    params: dict[str, Any],
    rng: np.random.Generator,
    step: float,
    p_move: float,
    p_bound: float = 0.0,
) -> dict[str, Any]:
    """Move each knob with probability ``p_move`` (at least one moves).

    Numeric knobs take a Gaussian step of ``step`` in unit coordinates, or with probability
    ``p_bound`` jump to one of their bounds; a categorical knob switches to another choice.
    Conditional knobs are drawn or dropped as their parent decides.
    """
    names = [n for n in space.knobs if n in params]
    movable = [
        n
        for n in names
        if not (isinstance(knob := space.knobs[n], CategoricalKnob) and len(knob.choices) == 1)
    ]
    moves = {n for n in movable if rng.random() < p_move}
    if not moves and movable:
        moves = {movable[int(rng.integers(len(movable)))]}
    new: dict[str, Any] = {}
    for name, knob in space.knobs.items():
        if not space.is_active(name, new):
            continue
        if name not in params:  # became active: draw it
            new[name] = knob.sample(rng)
        elif name not in moves:
            new[name] = params[name]
        elif isinstance(knob, CategoricalKnob):
            others = [c for c in knob.choices if c != params[name]]
            new[name] = others[int(rng.integers(len(others)))]
        elif p_bound > 0 and rng.random() < p_bound:
            new[name] = from_unit(knob, float(rng.integers(2)))
        else:
            new[name] = from_unit(knob, to_unit(knob, params[name]) + rng.normal(0.0, step))
    return new
