"""What the benchmark scripts share: the package on ``sys.path`` and the built samples."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if importlib.util.find_spec("nnabla_sgd_influence") is None:
    sys.path.insert(0, str(REPO))


def samples_dir() -> Path:
    """``samples/build``, built first if missing or outdated."""
    sys.path.insert(0, str(REPO / "samples"))
    import build_samples

    return Path(build_samples.build())
