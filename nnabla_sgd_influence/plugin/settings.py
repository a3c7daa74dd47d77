"""Where a plugin run reads and writes: its run settings, each carrying its help text.

Like the computation's settings (:mod:`..arguments`), every field says what it means and how
the plugins take it, so that their command lines are generated from it (:mod:`.cli`); it is
checked when it is made. Nothing here imports numpy, so that ``-h`` stays fast.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from ..arguments import flags, option
from ..errors import InfluenceError
from .scripts import KINDS


@dataclass(frozen=True)
class RunSettings:
    """Where a plugin run reads and writes (not how it scores, nor where it computes)."""

    model: Path = option(
        "path to the trained model, the results.nnp of a training",
        cli=flags(
            "-m", "--model", dialog="model", parse=Path, image="results.nnp", tabular="results.nnp"
        ),
    )
    input_train: Path = option(
        "path to the training dataset CSV whose rows are scored",
        cli=flags("-t", "--input-train", dialog="csv", parse=Path),
    )
    input_val: Path = option(
        "path to the validation dataset CSV that influence is measured on",
        cli=flags("-v", "--input-val", dialog="csv", parse=Path),
    )
    output: Path = option(
        "path to the output CSV, most harmful rows first",
        cli=flags(
            "-o",
            "--output",
            dialog="csv",
            parse=Path,
            image="influence.csv",
            tabular="sgd_influence_tabular.csv",
        ),
    )
    kind: str = option("the plugin: image or tabular")
    step_log: bool = option(
        "also write <output stem>_steps.csv: epoch, step, iteration, learning rate and the rows "
        "of every step of trial 1, to audit or replay the run",
        False,
        cli=flags("--step-log"),
    )
    encoding: Optional[str] = option(
        "the text encoding of both input CSVs (e.g. cp932), when detection (UTF-8 with or "
        "without BOM, else cp932) is not enough",
        None,
        cli=flags("--encoding"),
    )
    remove_top: int = option(
        "also write the training CSV without this many of the most harmful rows, as "
        "<output>_cleansed.csv; 0 = off",
        0,
        cli=flags("--remove_top", dialog="int", parse=int),
    )
    tile: int = option(
        "also draw this many of the most harmful images with label, row and score, as "
        "<output>_tile.png; 0 = off",
        0,
        cli=flags("--tile", dialog="int", parse=int, plugins=("image",)),
    )
    tile_helpful: bool = option(
        "the tile also shows as many of the most helpful images",
        False,
        cli=flags("--tile-helpful", plugins=("image",)),
    )

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise InfluenceError(f"kind must be one of {', '.join(KINDS)}, got {self.kind!r}")
        for name in ("remove_top", "tile"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise InfluenceError(f"{name} must be 0 (off) or a positive integer, got {value!r}")
        if self.tile and self.kind != "image":
            raise InfluenceError("tile draws images: it is for the image plugin")
