"""Reading images the one way every path of liaf-hf reads them: upright, as 8-bit RGB, or a `DataError`.

The rules, shared by the loaders, the Trainer's transform, prediction and export:

- **Orientation.** An EXIF Orientation tag is applied, so the pixels are the upright picture a viewer shows.
  `datasets`' `Image` feature and transformers' `pipeline()` (through `load_image`) both do the same, so a
  detector sees one orientation whichever way an image reaches it. Annotations must therefore be in upright
  coordinates; a loader that finds an annotation size matching only the stored (unrotated) pixels says so.
- **Pixel modes.** 8-bit modes (``1``, ``L``, ``P``, ``RGBA``, ``CMYK``, ...) become RGB as PIL converts them.
  16-bit greyscale (``I;16*``, and ``I`` holding values in 0..65535) is scaled from 0..65535 to 0..255, not
  clipped; 32-bit float greyscale (``F``) with values in [0, 1] is scaled by 255. Other ranges of ``I`` and
  ``F`` have no meaning this library can guess, so they are refused, naming the file, its mode and range.
- **Size.** PIL refuses images over twice `PIL.Image.MAX_IMAGE_PIXELS` pixels as possible decompression
  bombs; the error names the file and how to raise the limit.
"""

from __future__ import annotations

import io
import os
import struct
import zlib
from dataclasses import dataclass
from typing import Any, Union

import datasets
import numpy as np
from PIL import Image, ImageOps

from ..errors import DataError

ImageSource = Union[str, "os.PathLike[str]", bytes, dict, Image.Image]

# What PIL raises on a corrupt or truncated file, depending on the format and where the damage is
# (UnidentifiedImageError is an OSError).
DECODE_ERRORS = (OSError, SyntaxError, ValueError, EOFError, struct.error, zlib.error)

# EXIF Orientation values that turn the picture by 90 or 270 degrees, swapping its width and height.
_TRANSPOSING_ORIENTATIONS = frozenset({5, 6, 7, 8})
_EXIF_ORIENTATION = 0x0112
_SIXTEEN_BIT_MODES = frozenset({"I;16", "I;16L", "I;16B", "I;16N"})


@dataclass(frozen=True)
class ImageHeader:
    """What an image file's header says: its stored size and its EXIF orientation (1 when untagged)."""

    stored_width: int
    stored_height: int
    orientation: int = 1

    @property
    def size(self) -> tuple[int, int]:
        """(width, height) of the upright picture, the size every liaf-hf path works in."""
        if self.orientation in _TRANSPOSING_ORIENTATIONS:
            return self.stored_height, self.stored_width
        return self.stored_width, self.stored_height

    def size_mismatch(self, width: int, height: int) -> str | None:
        """None when (`width`, `height`) is the upright size; otherwise what differs, in words."""
        if (width, height) == self.size:
            return None
        actual = f"{self.size[0]}x{self.size[1]}"
        if (width, height) == (self.stored_width, self.stored_height):
            return (
                f"is {actual} upright (EXIF Orientation={self.orientation} turns its stored "
                f"{self.stored_width}x{self.stored_height} pixels), and the annotation's {width}x{height} is the "
                "stored size: liaf-hf reads images upright, as datasets and transformers' pipeline do, so "
                "annotate the upright image or remove the Orientation tag from the file"
            )
        return f"is {actual}, the annotation says {width}x{height}"


def source_name(source: ImageSource) -> str:
    """A name for `source` in error messages: its path when it has one."""
    if isinstance(source, dict):
        return str(source.get("path") or "<image bytes>")
    if isinstance(source, Image.Image):
        return str(getattr(source, "filename", "") or "<decoded image>")
    if isinstance(source, bytes):
        return "<image bytes>"
    if isinstance(source, (str, os.PathLike)):
        return os.fspath(source)
    return f"<{type(source).__name__} value>"


def read_header(source: ImageSource, *, name: str | None = None) -> ImageHeader:
    """The stored size and EXIF orientation of `source`, reading only the file's header.

    Raises:
        DataError: naming the file when it is not a readable image or is too large for PIL's limit.
    """
    if isinstance(source, Image.Image):
        return ImageHeader(source.width, source.height, _orientation(source))
    with _opened(source, name) as image:
        return ImageHeader(image.width, image.height, _orientation(image))


def read_image(source: ImageSource, *, name: str | None = None) -> Image.Image:
    """`source` decoded, turned upright and converted to 8-bit RGB by the rules of this module.

    Args:
        source: a path, the file's bytes, a `datasets` image dict (``{"path", "bytes"}``), or a PIL image.
        name: what to call the image in an error message (default: its path).

    Raises:
        DataError: naming the image when it cannot be decoded, is too large, or has a mode or pixel range
            with no faithful 8-bit RGB form.
    """
    name = name or source_name(source)
    if isinstance(source, Image.Image):
        return to_rgb(ImageOps.exif_transpose(source), name=name)
    with _opened(source, name) as image:
        try:
            image.load()
        except DECODE_ERRORS as error:
            raise DataError(f"{name}: cannot decode the image: {type(error).__name__}: {error}") from error
        return to_rgb(ImageOps.exif_transpose(image), name=name)


def undecoded_images(dataset: datasets.Dataset) -> datasets.Dataset:
    """`dataset` with its ``image`` column left undecoded (``{"path", "bytes"}`` dicts), for `read_image` to
    decode by these rules and name the file that fails; unchanged when the column is no decoding `Image`."""
    feature = dataset.features.get("image")
    if isinstance(feature, datasets.Image) and feature.decode:
        return dataset.cast_column("image", datasets.Image(decode=False))
    return dataset


def to_rgb(image: Image.Image, *, name: str = "<image>") -> Image.Image:
    """`image` as 8-bit RGB, scaling 16-bit and float greyscale by their range instead of clipping them.

    Raises:
        DataError: when the mode is one PIL cannot turn into RGB, or an ``I``/``F`` image holds values outside
            the ranges this module can interpret (0..65535 and [0, 1]).
    """
    if image.mode == "RGB":
        return image
    if image.mode in _SIXTEEN_BIT_MODES or image.mode in ("I", "F"):
        return Image.fromarray(_greyscale_to_uint8(np.asarray(image), image.mode, name), mode="L").convert("RGB")
    try:
        return image.convert("RGB")
    except ValueError as error:
        raise DataError(
            f"{name}: images of mode {image.mode!r} cannot be converted to RGB ({error}); convert the file to "
            "8-bit RGB or greyscale first"
        ) from error


def _greyscale_to_uint8(pixels: np.ndarray, mode: str, name: str) -> np.ndarray:
    if mode == "F":
        finite = np.isfinite(pixels).all()
        low, high = (float(pixels.min()), float(pixels.max())) if pixels.size else (0.0, 0.0)
        if finite and low >= 0.0 and high <= 1.0:
            return np.rint(pixels * 255.0).astype(np.uint8)
        span = f"values from {low:g} to {high:g}" if finite else "values that are not finite (NaN or inf)"
        raise DataError(
            f"{name}: a 32-bit float image (mode 'F') with {span}; liaf-hf reads float images as intensities "
            "in [0, 1]: scale the file to that range or save it as 8-bit"
        )
    pixels = pixels.astype(np.int64)
    low, high = (int(pixels.min()), int(pixels.max())) if pixels.size else (0, 0)
    if low < 0 or high > 65535:
        raise DataError(
            f"{name}: a 32-bit integer image (mode {mode!r}) with values from {low} to {high}; liaf-hf reads "
            "integer greyscale as 16-bit intensities (0..65535): rescale the file or save it as 8-bit"
        )
    return ((pixels * 255 + 32767) // 65535).astype(np.uint8)


def _orientation(image: Image.Image) -> int:
    try:
        orientation = image.getexif().get(_EXIF_ORIENTATION, 1)
    except DECODE_ERRORS:  # a damaged EXIF block: PIL itself would not rotate by it
        return 1
    return orientation if isinstance(orientation, int) and 1 <= orientation <= 8 else 1


def _opened(source: ImageSource, name: str | None) -> Image.Image:
    name = name or source_name(source)
    if isinstance(source, dict):
        data, path = source.get("bytes"), source.get("path")
        if data is None and path is None:
            raise DataError(f"{name}: the image value has neither 'bytes' nor 'path'")
        source = data if data is not None else path
    if not isinstance(source, (str, os.PathLike, bytes)):
        raise DataError(f"{name}: not an image path, bytes or PIL image, but a {type(source).__name__}")
    stream: Any = io.BytesIO(source) if isinstance(source, bytes) else source
    try:
        return Image.open(stream)
    except Image.DecompressionBombError as error:
        raise DataError(
            f"{name}: refused as a possible decompression bomb ({error}); if the image is genuine, raise "
            "PIL.Image.MAX_IMAGE_PIXELS before loading"
        ) from error
    except FileNotFoundError as error:
        raise DataError(f"{name}: no such image file") from error
    except DECODE_ERRORS as error:
        raise DataError(f"{name}: not a readable image: {type(error).__name__}: {error}") from error


__all__ = [
    "DECODE_ERRORS",
    "ImageHeader",
    "ImageSource",
    "read_header",
    "read_image",
    "source_name",
    "to_rgb",
    "undecoded_images",
]
