"""How sure each score is: the spread over trials against scipy, and the summary's sentence."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from nnabla_sgd_influence.influence.spread import (
    Counts,
    count_rows,
    distinguishable_from_zero,
    influence_std,
)


def test_spread_and_distinguishable_rows_against_scipy():
    rng = np.random.RandomState(0)
    per_trial = rng.randn(6, 40) * 0.1 + np.linspace(-0.3, 0.3, 40)
    np.testing.assert_allclose(influence_std(per_trial), np.std(per_trial, axis=0, ddof=1))
    assert influence_std(per_trial[:1]) is None
    p_values = stats.ttest_1samp(per_trial, 0.0, axis=0).pvalue
    np.testing.assert_array_equal(distinguishable_from_zero(per_trial), p_values < 0.05)
    scores = per_trial.mean(axis=0)
    order = np.argsort(scores, kind="stable")
    counts = count_rows(scores, per_trial, order, 10)
    negative = int(np.sum(scores < 0))
    assert (counts.negative, counts.positive, counts.zero) == (negative, 40 - negative, 0)
    expected = int(np.sum((p_values < 0.05)[order[:10]] & (scores[order[:10]] < 0)))
    assert counts.top_distinguishable == expected > 0
    assert count_rows(scores, per_trial[:1], order, 10).top_distinguishable is None


@pytest.mark.parametrize(
    "counts, sentence",
    [
        (
            Counts(rows=40, negative=1, positive=1, zero=38, top=1, top_distinguishable=1),
            "1 of 40 rows has negative influence (removing it should lower the validation "
            "loss), 1 positive (it helps), 38 zero; of the most harmful row, 1 is "
            "distinguishable from zero (95% interval over 6 trials)",
        ),
        (
            Counts(rows=40, negative=30, positive=10, zero=0, top=10, top_distinguishable=0),
            "30 of 40 rows have negative influence (removing them should lower the validation "
            "loss), 10 positive (they help), 0 zero; of the 10 most harmful, 0 are "
            "distinguishable from zero (95% interval over 6 trials)",
        ),
        (
            Counts(rows=1, negative=0, positive=1, zero=0, top=1, top_distinguishable=None),
            "0 of 1 row have negative influence (removing them should lower the validation "
            "loss), 1 positive (it helps), 0 zero",
        ),
    ],
)
def test_the_summary_agrees_with_its_counts(counts, sentence):
    assert counts.describe(6) == sentence
