"""The parameters of one trial: nnabla variables shared by all of its graphs.

A :class:`ParameterSet` is the one piece of mutable state that retraining, the query
gradient and the retrace share. Every stage that changes parameters only for a while (the
retrace moves theta to each step's value, BatchNormalization's training-mode forward moves its
running statistics, finite differences move theta along v) does so inside
:meth:`ParameterSet.preserved`, which puts every array back however the block ends.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import TYPE_CHECKING, Dict, Iterable, Iterator, List, Optional, Sequence

import numpy as np

if TYPE_CHECKING:
    from ..nnp.model import NnpModel


class ParameterSet:
    """One ``nn.Variable`` per parameter of a model, holding copies of its stored values.

    ``trainable`` names the parameters the solver updates, in the ``.nnp``'s order; only those
    need gradients. ``model.parameters`` itself is never written.
    """

    def __init__(self, model: NnpModel) -> None:
        import nnabla as nn

        self._initial = model.parameters
        self.trainable: List[str] = list(model.trainable)
        names = set(self.trainable)
        self.variables: Dict[str, object] = {
            name: nn.Variable.from_numpy_array(value.copy(), need_grad=name in names)
            for name, value in model.parameters.items()
        }
        self.theta: List[object] = [self.variables[name] for name in self.trainable]

    def __getitem__(self, name: str):
        return self.variables[name]

    def __contains__(self, name: str) -> bool:
        return name in self.variables

    @property
    def shapes(self) -> List[tuple]:
        """Shapes of the trainable parameters, in order."""
        return [tuple(p.shape) for p in self.theta]

    def trainable_arrays(self) -> List[np.ndarray]:
        """Copies of the trainable parameters' values, in order."""
        return [p.d.copy() for p in self.theta]

    def set_trainable(self, arrays: Sequence[np.ndarray]) -> None:
        """Write ``arrays`` (in :attr:`trainable` order) into the trainable parameters."""
        for variable, value in zip(self.theta, arrays):
            variable.d = value

    def zero_grad(self) -> None:
        for p in self.theta:
            p.grad.zero()

    def gradients(self) -> List[np.ndarray]:
        """The trainable parameters' gradients, as float64."""
        return [p.g.astype(np.float64) for p in self.theta]

    def reset(self) -> None:
        """Every parameter back to the value stored in the ``.nnp``."""
        for name, value in self._initial.items():
            self.variables[name].d = value

    @contextmanager
    def preserved(self, names: Optional[Iterable[str]] = None) -> Iterator[None]:
        """Restore the values of ``names`` (default: every parameter) when the block ends."""
        chosen = list(self.variables) if names is None else list(names)
        saved = {name: self.variables[name].d.copy() for name in chosen}
        try:
            yield
        finally:
            for name, value in saved.items():
                self.variables[name].d = value
