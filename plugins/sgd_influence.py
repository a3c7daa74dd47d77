"""Neural Network Console plugin: SGD Influence of every row of an image dataset.

Runs from a checkout (``python plugins/sgd_influence.py -h``) or from NNC's plugin folder;
the work is done by the ``nnabla_sgd_influence`` package.
"""

import importlib.util
import sys
from pathlib import Path

if importlib.util.find_spec("nnabla_sgd_influence") is None:
    # Not installed: use the checkout this script belongs to.
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from nnabla_sgd_influence.cli import main_image  # noqa: E402

if __name__ == "__main__":
    sys.exit(main_image())
