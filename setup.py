"""Packaging for nnabla-sgd-influence."""

from pathlib import Path

from setuptools import find_packages, setup

here = Path(__file__).parent

setup(
    name="nnabla-sgd-influence",
    version="0.1.0",
    description=(
        "Rank the training rows of a Neural Network Console model by their "
        "SGD-Influence on the validation loss"
    ),
    long_description=(here / "README.md").read_text(encoding="utf-8"),
    long_description_content_type="text/markdown",
    license="Apache-2.0",
    packages=find_packages(include=["nnabla_sgd_influence", "nnabla_sgd_influence.*"]),
    # NNabla publishes wheels for CPython 3.8-3.10 only.
    python_requires=">=3.8,<3.11",
    install_requires=[
        "nnabla>=1.39,<1.40",
        "numpy>=1.20,<2",
        "pandas>=1.3",
        "pillow>=8",
        "tqdm>=4.60",
    ],
    extras_require={
        "gpu": ["nnabla-ext-cuda120>=1.39,<1.40"],
        "dev": [
            "pytest>=7",
            "ruff==0.17.6",
            "scikit-learn>=1.1",
            "matplotlib>=3.5",
        ],
    },
    entry_points={
        "console_scripts": [
            "nnabla-sgd-influence=nnabla_sgd_influence.cli:main_image",
            "nnabla-sgd-influence-tabular=nnabla_sgd_influence.cli:main_tabular",
            "nnabla-sgd-influence-install-nnc=nnabla_sgd_influence.install_nnc:main",
        ]
    },
    classifiers=[
        "Programming Language :: Python :: 3.8",
        "Programming Language :: Python :: 3.9",
        "Programming Language :: Python :: 3.10",
        "License :: OSI Approved :: Apache Software License",
        "Topic :: Scientific/Engineering :: Artificial Intelligence",
    ],
)
