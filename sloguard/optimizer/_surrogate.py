"""A random-forest feasibility surrogate trusted only when its out-of-bag score earns it."""

from __future__ import annotations

import warnings

import numpy as np
from sklearn.ensemble import RandomForestClassifier

CRASH, VIOLATION, FEASIBLE = 0, 1, 2


class FeasibilitySurrogate:
    """Predicts, for a configuration, the chance it crashes and the chance it is feasible.

    Fitted on encoded history labelled crash / SLO-violating / feasible. Until it has
    ``min_samples`` points of at least two classes and an out-of-bag accuracy of at least
    ``oob_gate``, it is not trusted and predicts nothing.

    Args:
        oob_gate: Out-of-bag accuracy needed before predictions are used.
        min_samples: History size before a fit is attempted.
        n_estimators: Trees in the forest.
    """

    def __init__(
        self, oob_gate: float = 0.7, min_samples: int = 8, n_estimators: int = 32
    ) -> None:
        self.oob_gate = oob_gate
        self.min_samples = min_samples
        self.n_estimators = n_estimators
        self.model: RandomForestClassifier | None = None
        self.oob_score: float | None = None

    def fit(self, x: np.ndarray, labels: np.ndarray, seed: int) -> bool:
        """Fit on the history; return whether the surrogate is now trusted."""
        self.model, self.oob_score = None, None
        if len(labels) < self.min_samples or len(np.unique(labels)) < 2:
            return False
        forest = RandomForestClassifier(
            n_estimators=self.n_estimators, oob_score=True, random_state=seed, n_jobs=1
        )
        with warnings.catch_warnings():  # few samples: some rows are never out of bag
            warnings.simplefilter("ignore")
            forest.fit(x, labels)
        self.oob_score = float(forest.oob_score_)
        if self.oob_score >= self.oob_gate:
            self.model = forest
        return self.model is not None

    def predict(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """P(crash) and P(feasible) per row; (0, 1) everywhere while untrusted."""
        if self.model is None:
            return np.zeros(len(x)), np.ones(len(x))
        proba = self.model.predict_proba(x)
        classes = list(self.model.classes_)

        def column(label: int) -> np.ndarray:
            return proba[:, classes.index(label)] if label in classes else np.zeros(len(x))

        return column(CRASH), column(FEASIBLE)
