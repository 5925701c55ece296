from __future__ import annotations

import numpy as np

from sloguard.optimizer._encoding import neighbour
from sloguard.space import CategoricalKnob, SearchSpace


def test_a_bound_jump_lands_every_moved_numeric_knob_on_a_bound(compose) -> None:
    space = SearchSpace.from_config(compose().space)
    base = space.complete({})
    rng = np.random.default_rng(0)
    landed = set()
    for _ in range(50):
        moved = neighbour(space, base, rng, step=0.1, p_move=1.0, p_bound=1.0)
        for name, value in moved.items():
            knob = space.knobs[name]
            if not isinstance(knob, CategoricalKnob):
                assert value in (knob.low, knob.high), (name, value)
                landed.add((name, value == knob.low))
    numeric = [n for n, k in space.knobs.items() if not isinstance(k, CategoricalKnob)]
    assert landed == {(n, low) for n in numeric for low in (True, False)}  # both bounds, all knobs


def test_without_bound_jumps_steps_stay_near_the_start(compose) -> None:
    space = SearchSpace.from_config(compose().space)
    base = space.complete({})
    rng = np.random.default_rng(0)
    knob = space.knobs["max_num_batched_tokens"]
    values = [
        neighbour(space, base, rng, step=0.01, p_move=1.0)["max_num_batched_tokens"]
        for _ in range(50)
    ]
    assert all(v not in (knob.low, knob.high) for v in values)
