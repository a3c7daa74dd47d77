"""A picture of the most harmful (and most helpful) training images, drawn with Pillow.

Each image is shown as the model saw it (its decoded, resized pixels), enlarged to at least
:data:`MIN_CELL` pixels, with its row, label and score beneath. Harmful rows are captioned in
red, helpful ones in green; the title says which file and how the rows were chosen.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import List, Sequence

import numpy as np

from .datasets import Dataset
from .ranking_csv import staged

MIN_CELL = 84  # pixels of the shorter side of each image, at least
MAX_CELL = 160
COLUMNS = 8
MAX_IMAGES = 400  # per section: a bounded picture whatever k is asked for
_CAPTION_LINES = 2
_LINE = 12  # pixels per caption line of the default font
_HARMFUL, _HELPFUL, _INK = (190, 0, 0), (0, 120, 0), (0, 0, 0)


@dataclass(frozen=True)
class Section:
    """One block of the tile: a heading and its images with their captions."""

    heading: str
    images: np.ndarray  # uint8, (n, C, H, W) or (n, H, W)
    captions: List[str]  # "row 12  y=3\\n-1.23e-02"
    color: tuple


def tile_path(output: Path) -> Path:
    """``<output stem>_tile.png`` beside the output."""
    output = Path(output)
    return output.with_name(f"{output.stem}_tile.png")


def caption(row: int, label: str, score: float) -> str:
    return f"row {row}  y={label}\n{score:.2e}"


def sections_for(
    dataset: Dataset, scores: np.ndarray, ranking: np.ndarray, k: int, helpful: bool
) -> List[Section]:
    """The harmful section (and the helpful one) of ``dataset`` for a result's ranking."""
    labels = dataset.label_texts()
    chosen = [("most harmful (most negative influence first)", ranking[:k], _HARMFUL)]
    if helpful:
        chosen.append(("most helpful (most positive influence first)", ranking[::-1][:k], _HELPFUL))
    sections = []
    for heading, rows, color in chosen:
        rows = np.asarray(rows)[:MAX_IMAGES]
        text = [caption(int(r), labels[r], float(scores[r])) for r in rows]
        sections.append(Section(f"{len(rows)} {heading}", dataset.images(rows), text, color))
    return sections


def draw_tile(title: str, sections: Sequence[Section]):
    """The tile as a Pillow image."""
    from PIL import Image, ImageDraw, ImageFont

    font = ImageFont.load_default()
    shape = sections[0].images.shape[1:]
    height, width = shape[-2:]
    scale = max(1, int(np.ceil(MIN_CELL / min(height, width))))
    scale = min(scale, max(1, MAX_CELL // max(height, width)))
    cell_w, cell_h = width * scale, height * scale
    pad = 6
    box_w, box_h = max(cell_w, 96) + pad, cell_h + _CAPTION_LINES * _LINE + pad * 2
    columns = min(COLUMNS, max(len(s.captions) for s in sections))
    total_h = 2 * _LINE + pad
    for section in sections:
        total_h += _LINE + pad + int(np.ceil(len(section.captions) / columns)) * box_h
    canvas = Image.new("RGB", (columns * box_w + pad, total_h + pad), "white")
    draw = ImageDraw.Draw(canvas)
    draw.text((pad, pad), title, fill=_INK, font=font)
    y = 2 * _LINE + pad
    for section in sections:
        draw.text((pad, y), section.heading, fill=section.color, font=font)
        y += _LINE + pad
        for index, (pixels, text) in enumerate(zip(section.images, section.captions)):
            x0 = pad + (index % columns) * box_w
            y0 = y + (index // columns) * box_h
            nearest = getattr(Image, "Resampling", Image).NEAREST
            picture = _to_picture(pixels).resize((cell_w, cell_h), nearest)
            canvas.paste(picture, (x0, y0))
            draw.multiline_text(
                (x0, y0 + cell_h + 2), text, fill=section.color, font=font, spacing=1
            )
        y += int(np.ceil(len(section.captions) / columns)) * box_h
    return canvas


def _to_picture(pixels: np.ndarray):
    from PIL import Image

    pixels = np.asarray(pixels, dtype=np.uint8)
    if pixels.ndim == 3 and pixels.shape[0] in (1, 3, 4):
        pixels = pixels[0] if pixels.shape[0] == 1 else pixels.transpose(1, 2, 0)
    mode = {2: "L"}.get(pixels.ndim, "RGBA" if pixels.shape[-1] == 4 else "RGB")
    return Image.fromarray(pixels, mode=mode).convert("RGB")


def write_ranked_tile(
    path: Path,
    dataset: Dataset,
    scores: np.ndarray,
    ranking: np.ndarray,
    k: int,
    helpful: bool,
    n_trials: int,
    outputs=None,
) -> None:
    """The tile of a ranking of ``dataset``'s rows: its ``k`` most harmful images (and ``k``
    most helpful), titled with the file and the trials (staged in ``outputs`` when given)."""
    sections = sections_for(dataset, scores, ranking, k, helpful)
    title = f"{Path(dataset.path).name}: SGD-Influence over {n_trials} trial(s)"
    write_tile(Path(path), title, sections, outputs)


def write_tile(path: Path, title: str, sections: Sequence[Section], outputs=None) -> None:
    """Draw the tile and write it to ``path`` as a PNG (staged in ``outputs`` when given)."""
    image = draw_tile(title, sections)
    with staged(outputs) as sink, sink.binary(path) as stream:
        image.save(stream, format="PNG")
