"""Decode the images an NNC dataset CSV names, once, into a compact ``uint8`` cache.

Every image is converted to the model's channels (grayscale <-> RGB, alpha dropped) and, with
one warning for the whole set, resized to its input size. Anything Pillow cannot read, or a
pixel mode that cannot become the model's channels, is an error naming the row and the file.
"""

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, List, Tuple

import numpy as np
import pandas as pd

from ..errors import InfluenceError, excerpt_path
from ..nnp.compat import bilinear_resample, sixteen_bit_png
from ..nnp.model import DataVariable
from ..runtime.limits import check_memory
from ..runtime.signals import checkpoints

log = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff")
PROGRESS_BAR_MIN_IMAGES = 500

# Pillow modes by what they hold; anything else (32-bit integer, float, LAB) is refused.
_GRAY_MODES = {"1", "L", "LA"}
_SIXTEEN_BIT_MODES = {"I;16", "I;16L", "I;16B", "I;16N"}
_COLOR_MODES = {"P", "PA", "RGB", "RGBA", "RGBX", "CMYK", "YCbCr", "HSV"}

# Names a cell for error messages: where(row, column) -> "role: file row r (...), column 'c'".
Locator = Callable[[int, str], str]


@dataclass(frozen=True)
class ImageShape:
    channels: int
    height: int
    width: int
    channel_axis: bool  # the variable's shape is (C, H, W) rather than (H, W)


def image_shape(variable: DataVariable, column: str, path: Path, role: str) -> ImageShape:
    shape = tuple(variable.shape)
    if len(shape) == 3 and min(shape) > 0:
        return ImageShape(shape[0], shape[1], shape[2], channel_axis=True)
    if len(shape) == 2 and min(shape) > 0:
        return ImageShape(1, shape[0], shape[1], channel_axis=False)
    raise InfluenceError(
        f"{role}: {excerpt_path(path)}: column '{column}' holds images, but variable "
        f"'{variable.variable_name}' has shape {shape}; an image input needs (C, H, W) or (H, W)"
    )


def image_paths(column: pd.Series, csv_path: Path, name: str, where: Locator) -> List[str]:
    """Absolute path of each row's image; every file must exist.

    Plain strings and ``os.path``: pathlib interns every path part it parses, which for a large
    image set costs more memory than the images' uint8 cache.
    """
    folder = os.path.abspath(str(csv_path.parent))
    paths = []
    for row, cell in enumerate(column.tolist()):
        text = str(cell)
        if not text.strip():
            raise InfluenceError(
                f"{where(row, name)}: the cell is empty, an image path is expected"
            )
        resolved = _resolve(text, folder)
        if not os.path.isfile(resolved):
            raise InfluenceError(
                f"{where(row, name)}: image file not found: {excerpt_path(resolved)} "
                f"(relative paths are taken from the CSV's folder {excerpt_path(folder)})"
            )
        paths.append(resolved)
    return paths


def _resolve(text: str, folder: str) -> str:
    """``text`` as an absolute path; Windows separators are accepted when the file needs them."""
    candidate = os.path.abspath(os.path.join(folder, text))
    if "\\" in text and not os.path.exists(candidate):
        alternative = os.path.abspath(os.path.join(folder, text.replace("\\", "/")))
        if os.path.exists(alternative):
            return alternative
    return candidate


def decode_images(
    paths: List[str],
    shape: ImageShape,
    variable: DataVariable,
    column: str,
    where: Locator,
    role: str,
) -> np.ndarray:
    """Decode every image once into a uint8 array of shape ``(N, *variable.shape)``."""
    from tqdm import tqdm

    row_bytes = float(np.prod(variable.shape, dtype=np.float64))
    check_memory(
        row_bytes * len(paths),
        f"{role}: the image cache of {len(paths)} images of shape {tuple(variable.shape)}",
    )
    cache = np.empty((len(paths),) + tuple(variable.shape), dtype=np.uint8)
    resized: List[Tuple[int, str, Tuple[int, int]]] = []
    progress = tqdm(
        paths,
        desc=f"loading {role} images",
        unit="image",
        disable=True if len(paths) <= PROGRESS_BAR_MIN_IMAGES else None,
    )
    for row, path in enumerate(checkpoints(progress)):
        image = _open_image(path, where(row, column))
        if image.size != (shape.width, shape.height):
            resized.append((row, path, image.size))
        cache[row] = _to_array(image, shape, variable, where(row, column), path)
    if resized:
        _warn_resized(resized, len(paths), shape, role)
    return cache


def _open_image(path: str, location: str):
    """The fully decoded image, detached from its file."""
    from PIL import Image

    try:
        with Image.open(path) as image:
            image.load()
            return sixteen_bit_png(image) or image.copy()
    except Exception as error:  # Pillow reports unreadable files with many exception types
        reason = " ".join(str(error).split()) or type(error).__name__
        raise InfluenceError(
            f"{location}: {excerpt_path(path)} cannot be read as an image ({reason})"
        ) from None


def _to_array(image, shape: ImageShape, variable: DataVariable, location: str, path: str):
    """The image in the model's channels and size, as uint8 ``(C, H, W)`` or ``(H, W)``."""
    converted = _to_channels(image, shape.channels, variable, location, path)
    if converted.size != (shape.width, shape.height):
        converted = converted.resize((shape.width, shape.height), bilinear_resample())
    pixels = np.asarray(converted, dtype=np.uint8)
    if pixels.ndim == 3:
        return pixels.transpose(2, 0, 1)
    return pixels[np.newaxis] if shape.channel_axis else pixels


def _to_channels(image, channels: int, variable: DataVariable, location: str, path: str):
    """Grayscale <-> RGB as the model needs, alpha dropped; anything else is an error."""
    mode = image.mode
    if mode in _SIXTEEN_BIT_MODES:
        image, mode = _sixteen_bit_to_gray(image), "L"
    if channels == 4 and mode == "RGBA":
        return image
    if channels in (1, 3) and mode in _GRAY_MODES | _COLOR_MODES:
        return image.convert("L" if channels == 1 else "RGB")
    raise InfluenceError(
        f"{location}: image {excerpt_path(path)} has pixel mode '{mode}' but variable "
        f"'{variable.variable_name}' needs {channels} channel(s); supported are 8- or 16-bit "
        "grayscale, RGB and RGBA images for 1- or 3-channel inputs, and RGBA for 4 channels"
    )


def _sixteen_bit_to_gray(image):
    """16-bit grayscale scaled to 8 bits (Pillow's own conversion clips at 255)."""
    from PIL import Image

    wide = np.asarray(image).astype(np.uint32)
    return Image.fromarray(((wide * 255 + 32767) // 65535).astype(np.uint8))


def _warn_resized(
    resized: List[Tuple[int, str, Tuple[int, int]]], total: int, shape: ImageShape, role: str
) -> None:
    row, path, (width, height) = resized[0]
    log.warning(
        "%s: %d of %d images differ from the model input size %dx%d and are resized "
        "(bilinear); the first is row %d (0-based data row), %s, %dx%d",
        role,
        len(resized),
        total,
        shape.width,
        shape.height,
        row,
        path,
        width,
        height,
    )
