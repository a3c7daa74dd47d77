"""Agreement between two rankings of the training rows (Hara et al. 2019, Table 1)."""

from __future__ import annotations

import numpy as np


def kendall_tau(a: np.ndarray, b: np.ndarray) -> float:
    """Kendall's tau-b between two score vectors."""
    from scipy.stats import kendalltau

    return float(kendalltau(np.asarray(a, float), np.asarray(b, float))[0])


def extreme_jaccard(estimate: np.ndarray, truth: np.ndarray, k: int = 10) -> float:
    """Jaccard index of the k most positive and k most negative rows."""

    def extremes(x: np.ndarray) -> set:
        order = np.argsort(x, kind="stable")
        return set(order[:k]) | set(order[-k:])

    a, b = extremes(estimate), extremes(truth)
    return len(a & b) / len(a | b)
