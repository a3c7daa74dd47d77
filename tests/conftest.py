"""Shared fixtures: the bundled samples (built on demand) and the real NNC fixture's path."""

from __future__ import annotations

import importlib.util
import logging
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
NNC_FIXTURE = ROOT.parent / "shared" / "fixtures" / "nnc" / "fashion_mnist_cnn_results.nnp"


def _load_build_module():
    spec = importlib.util.spec_from_file_location(
        "build_samples", ROOT / "samples" / "build_samples.py"
    )
    module = importlib.util.module_from_spec(spec)
    sys.modules["build_samples"] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="session")
def samples_dir() -> Path:
    """``samples/build``, built first if needed (the build is idempotent)."""
    return Path(_load_build_module().build())


@pytest.fixture(scope="session")
def nnc_fixture() -> Path:
    if not NNC_FIXTURE.is_file():
        pytest.skip(f"real NNC model not present at {NNC_FIXTURE}")
    return NNC_FIXTURE


@pytest.fixture(autouse=True)
def _quiet_nnabla():
    """nnabla's logger at WARNING; the root logger's handlers and level as they were after each
    test (a plugin's ``main`` run in a test installs a handler on the test's stderr)."""
    logging.getLogger("nnabla").setLevel(logging.WARNING)
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)
