"""The query vector u, the gradient of the mean validation loss at the final parameters."""

from __future__ import annotations

from typing import List, Tuple

import numpy as np

from ..data.datasets import Batches
from ..errors import InfluenceError
from ..runtime.progress import SILENT, Progress
from ..runtime.signals import checkpoints
from .graphs import GraphCache


def validation_gradient(
    graphs: GraphCache, val: Batches, batch_size: int, progress: Progress = SILENT
) -> Tuple[List[np.ndarray], float]:
    """u = d/dtheta of the mean loss over every validation row, and that mean loss.

    Uses the evaluation network (BatchNormalization on running statistics, no Dropout).
    A loss or gradient that is not finite stops the run: every score would be NaN.
    """
    params = graphs.params
    params.zero_grad()
    n_rows = len(val)
    total_loss = 0.0
    starts = range(0, n_rows, batch_size)
    for start in checkpoints(progress.track(starts, "validation gradient")):
        rows = np.arange(start, min(start + batch_size, n_rows))
        graph = graphs.loss(len(rows), training=False)
        graph.feed(val.batch(rows))
        graph.sum_loss.forward(clear_no_need_grad=True)
        total_loss += float(graph.sum_loss.d)
        # Gradients accumulate over batches; 1/N makes the sum a mean over all rows.
        graph.sum_loss.backward(grad=1.0 / n_rows, clear_buffer=True)
    u = params.gradients()
    if not (np.isfinite(total_loss) and all(np.isfinite(a).all() for a in u)):
        raise InfluenceError(
            f"the validation loss ({total_loss / n_rows}) or its gradient is not finite at the "
            "retrained parameters, so no influence on it can be measured"
        )
    return u, total_loss / n_rows
