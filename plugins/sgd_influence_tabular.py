"""Neural Network Console plugin: SGD Influence of every row of a tabular dataset.

Runs from a checkout (``python plugins/sgd_influence_tabular.py -h``) or from NNC's plugin
folder; the work is done by the ``nnabla_sgd_influence`` package. Models with Dropout are
refused.
"""

import importlib.util
import sys
from pathlib import Path

if importlib.util.find_spec("nnabla_sgd_influence") is None:
    # Not installed: use the checkout this script belongs to.
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from nnabla_sgd_influence.cli import main_tabular  # noqa: E402

if __name__ == "__main__":
    sys.exit(main_tabular())
