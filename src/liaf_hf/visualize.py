"""Drawing detections on images: boxes, class names and scores, one colour per class."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from PIL import Image, ImageDraw, ImageFont

#: Box colours, indexed by class label (cycled): distinct hues that stay visible on light and dark images.
PALETTE = (
    (230, 25, 75),
    (60, 180, 75),
    (0, 130, 200),
    (245, 130, 48),
    (145, 30, 180),
    (70, 240, 240),
    (240, 50, 230),
    (210, 245, 60),
    (250, 190, 212),
    (0, 128, 128),
    (170, 110, 40),
    (128, 0, 0),
)


def class_colour(label: int) -> tuple[int, int, int]:
    """The colour of class `label` in drawings."""
    return PALETTE[label % len(PALETTE)]


def _as_list(values: Any) -> list:
    return values.tolist() if isinstance(values, torch.Tensor) else list(values)


def draw_detections(
    image: Image.Image,
    detections: Mapping[str, Any],
    id2label: Mapping[int, str] | None = None,
    *,
    threshold: float = 0.0,
    line_width: int | None = None,
    font_size: int | None = None,
) -> Image.Image:
    """A copy of `image` (RGB) with each detection drawn: its box, and a tag "<class name> <score>" on the
    box's top edge, in the class's colour.

    Args:
        image: the image the detections were made on.
        detections: `scores` (n,), `labels` (n,) and `boxes` (n, 4) absolute xyxy in pixels of `image`, as
            `GFLImageProcessor.post_process_object_detection` returns them (tensors or sequences).
        id2label: class names by label (`model.config.id2label`); without it the label number is written.
        threshold: detections scoring below this are not drawn.
        line_width: box outline width in pixels; by default about 0.5% of the shorter image edge, at least 1.
        font_size: tag text size in pixels; by default about 3% of the shorter image edge, at least 10.

    Example:
        >>> from PIL import Image
        >>> image = Image.new("RGB", (64, 48), "white")
        >>> drawn = draw_detections(image, {"scores": [0.9], "labels": [0], "boxes": [[8, 8, 40, 30]]}, {0: "cat"})
        >>> drawn.size, drawn.getpixel((8, 20)) != (255, 255, 255)
        ((64, 48), True)

    Raises:
        ValueError: the detections' fields have different lengths, or a box is not 4 numbers.
    """
    scores, labels, boxes = (_as_list(detections[key]) for key in ("scores", "labels", "boxes"))
    if not len(scores) == len(labels) == len(boxes):
        raise ValueError(
            f"detections must have one score, label and box each; got {len(scores)} scores, {len(labels)} labels "
            f"and {len(boxes)} boxes."
        )
    for index, box in enumerate(boxes):
        if len(box) != 4:
            raise ValueError(f"detections['boxes'][{index}] must be 4 numbers (x1, y1, x2, y2), got {box}.")
    drawn = image.convert("RGB")  # always a copy, even of an RGB image
    draw = ImageDraw.Draw(drawn)
    shorter_edge = min(drawn.size)
    line_width = line_width or max(1, round(shorter_edge * 0.005))
    font = ImageFont.load_default(size=font_size or max(10, round(shorter_edge * 0.03)))
    # Lowest score first, so the most confident boxes and tags end up on top.
    for score, label, box in sorted(zip(scores, labels, boxes), key=lambda detection: detection[0]):
        if score < threshold:
            continue
        label = int(label)
        colour = class_colour(label)
        x1, y1, x2, y2 = (float(v) for v in box)
        draw.rectangle((x1, y1, max(x1, x2), max(y1, y2)), outline=colour, width=line_width)
        name = id2label.get(label, str(label)) if id2label is not None else str(label)
        _draw_tag(draw, f"{name} {score:.2f}", anchor=(x1, y1), colour=colour, font=font, image_size=drawn.size)
    return drawn


def _draw_tag(
    draw: ImageDraw.ImageDraw,
    text: str,
    *,
    anchor: tuple[float, float],
    colour: tuple[int, int, int],
    font: ImageFont.ImageFont | ImageFont.FreeTypeFont,
    image_size: tuple[int, int],
) -> None:
    """`text` on a filled box in `colour`, just above `anchor` (a box's top-left corner), or just below it
    when there is no room above; kept inside the image."""
    left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
    width, height = right - left + 4, bottom - top + 2
    x = min(max(0.0, anchor[0]), max(0.0, image_size[0] - width))
    y = anchor[1] - height if anchor[1] - height >= 0 else anchor[1]
    y = min(max(0.0, y), max(0.0, image_size[1] - height))
    draw.rectangle((x, y, x + width, y + height), fill=colour)
    # Dark text on light colours, white on dark ones (ITU-R BT.601 luma).
    luma = 0.299 * colour[0] + 0.587 * colour[1] + 0.114 * colour[2]
    draw.text((x + 2 - left, y + 1 - top), text, fill=(0, 0, 0) if luma > 140 else (255, 255, 255), font=font)


__all__ = ["PALETTE", "class_colour", "draw_detections"]
