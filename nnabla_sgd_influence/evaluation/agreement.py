"""How well one trial's scores rank rows like leave-one-out retraining does."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..arguments import InfluenceArguments
from ..data.datasets import Batches
from ..influence.trials import run_trial
from ..nnp.model import NnpModel
from .ground_truth import LeaveOneOut
from .metrics import extreme_jaccard, kendall_tau


@dataclass
class Agreement:
    tau: float  # Kendall's tau between estimated and true influence
    jaccard: float  # of the 10 most positive and 10 most negative rows


def agreement_with_leave_one_out(
    model: NnpModel,
    train: Batches,
    val: Batches,
    *,
    epochs: int,
    mode: str,
    workdir: Path,
    batch_size: int = 64,
    seed: int = 0,
    retrace_as_sgd: bool = False,
) -> Agreement:
    """Kendall's tau and Jaccard index of one trial's scores against leave-one-out."""
    truth = LeaveOneOut(model, train, val, batch_size=batch_size, seed=seed, epochs=epochs)
    changes = truth.changes()
    arguments = InfluenceArguments(
        batch_size=batch_size, seed=seed, epochs=epochs, mode=mode, retrace_as_sgd=retrace_as_sgd
    )
    estimate = run_trial(model, train, val, arguments, workdir=workdir).scores
    return Agreement(kendall_tau(estimate, changes), extreme_jaccard(estimate, changes))
