"""Stage 4: the query vector u, the gradient of the mean validation loss at the final parameters."""

from __future__ import annotations

from typing import Dict, List, Tuple

import numpy as np
from tqdm import tqdm

from .datasets import Dataset
from .model import NnpModel, build_graph


def validation_gradient(
    model: NnpModel,
    params: Dict[str, object],
    val: Dataset,
    batch_size: int,
    label: str = "",
) -> Tuple[List[np.ndarray], float]:
    """u = d/dtheta of the mean loss over every validation row, and that mean loss.

    Uses the evaluation network (BatchNormalization on running statistics, no Dropout).
    """
    import nnabla.functions as F

    theta = [params[n] for n in model.trainable]
    for p in theta:
        p.grad.zero()
    graphs: Dict[int, Tuple[object, object]] = {}
    n_rows = len(val)
    total_loss = 0.0
    starts = range(0, n_rows, batch_size)
    for start in tqdm(starts, desc=f"{label} validation gradient".strip(), leave=False):
        rows = np.arange(start, min(start + batch_size, n_rows))
        if len(rows) not in graphs:
            graph = build_graph(model, params, len(rows), training=False)
            graphs[len(rows)] = (graph, F.sum(graph.per_sample_loss))
        graph, summed = graphs[len(rows)]
        for name, value in val.batch(rows).items():
            if name in graph.inputs:
                graph.inputs[name].d = value
        summed.forward(clear_no_need_grad=True)
        total_loss += float(summed.d)
        # Gradients accumulate over batches; 1/N makes the sum a mean over all rows.
        summed.backward(grad=1.0 / n_rows, clear_buffer=True)
    return [p.g.astype(np.float64) for p in theta], total_loss / n_rows
