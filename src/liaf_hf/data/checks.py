"""The rules every loader applies to an annotation's values, in one place so that the COCO, Hub-format and
KITTI loaders accept, repair and refuse the same inputs in the same way.

- **Numbers** are finite ints or floats, never bools (a JSON ``true`` where a box or an id belongs is an
  upstream bug); integers may be written as ``640.0`` but not ``640.5``.
- **iscrowd** is 0 or 1, a bool, or one of the strings ``"0"``, ``"1"``, ``"true"``, ``"false"`` (any case)
  that CSV and JSON Lines exports write; anything else is refused, since ``bool("0")`` is True and would
  silently turn the object into an ignore region.
- **Paths.** A ``file_name`` is relative to its image folder; an absolute one, or one that climbs out with
  ``..``, is refused (the COCO loader accepts it when asked to). The test is on the name as written, not on
  the resolved path, so an image folder of symbolic links to files stored elsewhere stays readable.
- **Boxes** (xywh, absolute pixels of the upright image) partly outside their image are clipped to it, and
  boxes of zero width or height after clipping are dropped, as COCO tools do; both are counted in one
  warning per file. A box that shares no point with its image is refused: it belongs to another image or
  another image size.
"""

from __future__ import annotations

import logging
import math
import numbers
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from liaf_hf.errors import DataError

__all__ = [
    "BoxFitter",
    "area_value",
    "clip_xywh",
    "integer_value",
    "is_number",
    "is_outside",
    "listing",
    "parse_iscrowd",
]

logger = logging.getLogger(__name__)

# Error messages about many bad records list only this many before giving the count, so that a
# broken 100k-image set still produces a readable message.
_MAX_LISTED = 5
_CROWD_WORDS = {"0": False, "1": True, "false": False, "true": True}


def is_number(value: Any) -> bool:
    """Whether `value` is a finite int or float (bools, strings and NaN are not)."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real):
        return False
    try:
        return math.isfinite(value)
    except OverflowError:  # an integer too large for a float
        return False


def integer_value(value: Any, *, field: str, where: str, bits: int = 64) -> int:
    """`value` as an integer that fits a signed integer of `bits` bits (the column it is stored in).

    Raises:
        DataError: ``"<where> has '<field>' = <value>, expected an integer"`` (or outside the range).
    """
    if not is_number(value) or not float(value).is_integer():
        raise DataError(f"{where} has '{field}' = {value!r}, expected an integer")
    if not -(2 ** (bits - 1)) <= int(value) < 2 ** (bits - 1):
        raise DataError(f"{where} has '{field}' = {value!r}, outside the {bits}-bit integer range")
    return int(value)


def area_value(value: Any, box_xywh: Sequence[float], *, where: str) -> float:
    """The object's area: `value` when given (a mask area, kept as it is), else (missing or None) the
    clipped box's area.

    Raises:
        DataError: `value` is given but is not a non-negative finite number.
    """
    if value is None:
        return float(box_xywh[2]) * float(box_xywh[3])
    if not is_number(value) or value < 0:
        raise DataError(f"{where} has 'area' = {value!r}, expected a non-negative number")
    return float(value)


def parse_iscrowd(value: Any, *, where: str) -> bool:
    """`value` of an ``iscrowd`` field as a bool; a missing value (None) is False.

    Raises:
        DataError: `value` is none of 0, 1, True, False, "0", "1", "true", "false".
    """
    if value is None:
        return False
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if is_number(value) and value in (0, 1):
        return bool(value)
    if isinstance(value, str) and value.strip().lower() in _CROWD_WORDS:
        return _CROWD_WORDS[value.strip().lower()]
    raise DataError(f"{where} has 'iscrowd' = {value!r}, expected 0 or 1 (or true/false)")


@dataclass
class BoxFitter:
    """Fits boxes to their images by the rules of this module, counting what it changes for one warning.

    Attributes:
        clipped: boxes that reached outside their image and were clipped to it.
        dropped: boxes of zero width or height (after clipping), left out.
    """

    clipped: int = 0
    dropped: int = 0

    def fit(
        self, bbox_xywh: Sequence[float], *, width: int, height: int, where: str
    ) -> tuple[float, float, float, float] | None:
        """`bbox_xywh` (absolute pixels, non-negative width and height) clipped to a `width` x `height`
        image; None, counted in `dropped`, when it has no area left.

        Raises:
            DataError: the box shares no point with the image (``"<where> has box ... entirely outside"``).
        """
        box = clip_xywh(bbox_xywh, width=width, height=height)
        if box is None:
            raise DataError(f"{where} has box {list(bbox_xywh)!r} entirely outside its image ({width}x{height})")
        if box[2] == 0 or box[3] == 0:
            self.dropped += 1
            return None
        if box != tuple(float(value) for value in bbox_xywh):
            self.clipped += 1
        return box

    def warn(self, source: str) -> None:
        """Log one warning on the ``liaf_hf.data`` logger naming `source`, when any box was clipped or dropped."""
        if self.clipped or self.dropped:
            logger.warning(
                "%s: clipped %d boxes partly outside their image, dropped %d zero-area boxes",
                source,
                self.clipped,
                self.dropped,
            )


def clip_xywh(bbox: Sequence[float], *, width: int, height: int) -> tuple[float, float, float, float] | None:
    """Clip an xywh box in absolute pixels to the image; None when it shares no point with it.

    A box that only touches the image border comes back with zero width or height, so that the
    caller drops it as empty rather than rejecting it as misplaced.
    """
    x, y, w, h = (float(value) for value in bbox)
    if x > width or y > height or x + w < 0 or y + h < 0:
        return None
    left, top = max(x, 0.0), max(y, 0.0)
    right, bottom = min(x + w, float(width)), min(y + h, float(height))
    if (left, top, right, bottom) == (x, y, x + w, y + h):
        # Returned unchanged rather than recomputed, so x + w - x rounding never counts as a clip.
        return (x, y, w, h)
    return (left, top, right - left, bottom - top)


def is_outside(file_name: str) -> bool:
    """Whether `file_name`, taken relative to a folder, names a file outside it (absolute, or through ``..``)."""
    normalised = os.path.normpath(file_name)
    return os.path.isabs(file_name) or normalised == ".." or normalised.startswith(".." + os.sep)


def listing(items: list[str]) -> str:
    """The first few of `items` joined, with the count of the rest."""
    shown = "; ".join(items[:_MAX_LISTED])
    return shown if len(items) <= _MAX_LISTED else f"{shown}; ... ({len(items) - _MAX_LISTED} more)"
