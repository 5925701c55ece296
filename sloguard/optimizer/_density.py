"""A TPE-style density ratio: where do the best trials sit compared with the rest?"""

from __future__ import annotations

import numpy as np

from sloguard.optimizer._encoding import INACTIVE


class ParzenRatio:
    """Score candidates by ``log l(x) - log g(x)``, per knob independent Parzen estimators.

    ``l`` is fitted to the good points and ``g`` to the others; each is a mixture of Gaussian
    kernels (bandwidth ``bandwidth`` in unit coordinates) plus a uniform prior with the weight of
    one point. Inactive coordinates are skipped.

    Args:
        good: Encoded good points, shape (n_good, d).
        other: Encoded other points, shape (n_other, d).
        bandwidth: Kernel width in unit coordinates.
    """

    def __init__(self, good: np.ndarray, other: np.ndarray, bandwidth: float = 0.1) -> None:
        self.good = good
        self.other = other
        self.bandwidth = bandwidth

    def score(self, x: np.ndarray) -> np.ndarray:
        """Log density ratio of each row of ``x`` (shape (m, d)); higher is more promising."""
        return self._log_density(x, self.good) - self._log_density(x, self.other)

    def _log_density(self, x: np.ndarray, points: np.ndarray) -> np.ndarray:
        total = np.zeros(len(x))
        h = self.bandwidth
        for d in range(x.shape[1]):
            xd = x[:, d]
            pd = points[:, d][points[:, d] != INACTIVE] if len(points) else np.empty(0)
            active = xd != INACTIVE
            kernels = np.exp(-0.5 * ((xd[:, None] - pd[None, :]) / h) ** 2) / (
                h * np.sqrt(2 * np.pi)
            )
            density = (kernels.sum(axis=1) + 1.0) / (len(pd) + 1.0)  # + uniform prior on [0,1]
            total += np.where(active, np.log(density), 0.0)
        return total
