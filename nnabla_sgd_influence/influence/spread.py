"""How sure each score is: the spread of a row's scores over the trials, and the summary's counts.

With several trials each row has one score per trial; ``influence_std`` is their sample
standard deviation. A row's mean is *distinguishable from zero* when the two-sided 95 %
t-interval over the trials, ``mean +/- t(0.975, n-1) * std / sqrt(n)``, excludes zero.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np

CONFIDENCE = 0.95


def influence_std(per_trial: np.ndarray) -> Optional[np.ndarray]:
    """Sample standard deviation of each row's scores over the trials (None for one trial)."""
    per_trial = np.asarray(per_trial, dtype=np.float64)
    if len(per_trial) < 2:
        return None
    return per_trial.std(axis=0, ddof=1)


def distinguishable_from_zero(per_trial: np.ndarray, confidence: float = CONFIDENCE) -> np.ndarray:
    """Whether each row's mean score differs from zero at ``confidence`` (t-interval)."""
    from scipy.stats import t

    per_trial = np.asarray(per_trial, dtype=np.float64)
    n = len(per_trial)
    if n < 2:
        return np.zeros(per_trial.shape[1], dtype=bool)
    half_width = t.ppf(0.5 + confidence / 2.0, n - 1) * per_trial.std(axis=0, ddof=1) / np.sqrt(n)
    return np.abs(per_trial.mean(axis=0)) > half_width


@dataclass(frozen=True)
class Counts:
    """How many rows help, hurt or do nothing, and how sure the top ones are."""

    rows: int
    negative: int  # removing them should lower the validation loss
    positive: int  # removing them should raise it: they help
    zero: int
    top: int  # k, the most harmful rows looked at
    top_distinguishable: Optional[int]  # of those, how many differ from zero (None: 1 trial)

    def describe(self, n_trials: int) -> str:
        """The summary's sentence, its verbs agreeing with its counts."""
        one = self.negative == 1
        text = (
            f"{self.negative} of {self.rows} {'row' if self.rows == 1 else 'rows'} "
            f"{'has' if one else 'have'} negative influence (removing {'it' if one else 'them'} "
            f"should lower the validation loss), {self.positive} positive "
            f"({'it helps' if self.positive == 1 else 'they help'}), {self.zero} zero"
        )
        if self.top_distinguishable is not None:
            harmful = "the most harmful row" if self.top == 1 else f"the {self.top} most harmful"
            verb = "is" if self.top_distinguishable == 1 else "are"
            text += (
                f"; of {harmful}, {self.top_distinguishable} {verb} distinguishable from zero "
                f"({CONFIDENCE:.0%} interval over {n_trials} trials)"
            )
        return text


def count_rows(scores: np.ndarray, per_trial: np.ndarray, ranking: np.ndarray, k: int) -> Counts:
    """The :class:`Counts` of a result; ``ranking`` is most harmful first."""
    scores = np.asarray(scores)
    top = np.asarray(ranking)[: max(0, min(k, len(scores)))]
    sure = None
    if len(per_trial) > 1:
        sure = int(np.count_nonzero(distinguishable_from_zero(per_trial)[top] & (scores[top] < 0)))
    return Counts(
        rows=len(scores),
        negative=int(np.count_nonzero(scores < 0)),
        positive=int(np.count_nonzero(scores > 0)),
        zero=int(np.count_nonzero(scores == 0)),
        top=len(top),
        top_distinguishable=sure,
    )
