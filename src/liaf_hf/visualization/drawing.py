"""Drawing on images: detections (boxes, class names and scores, one colour per class), and instance weights
(boxes coloured and thickened by a weight, with a colour-scale legend) assembled into labelled grids."""

from __future__ import annotations

import math
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


#: The instance-weight colour scale: (weight, colour) stops, evenly spaced in log2(weight), from a quarter of
#: the image's average weight (blue) through the average, 1 (light grey), to four times it (red). A diverging
#: scale, because what matters is whether an instance gets more or less than its share.
WEIGHT_SCALE = (
    (0.25, (33, 102, 172)),
    (0.5, (103, 169, 207)),
    (1.0, (235, 235, 235)),
    (2.0, (239, 138, 98)),
    (4.0, (178, 24, 43)),
)


def weight_colour(weight: float) -> tuple[int, int, int]:
    """The colour of an instance weight on `WEIGHT_SCALE`, interpolated in log2(weight); weights outside
    [0.25, 4] take the end colours."""
    position = math.log2(max(float(weight), 1e-6))
    stops = [(math.log2(value), colour) for value, colour in WEIGHT_SCALE]
    if position <= stops[0][0]:
        return stops[0][1]
    for (low, low_colour), (high, high_colour) in zip(stops, stops[1:]):
        if position <= high:
            share = (position - low) / (high - low)
            return tuple(round(a + share * (b - a)) for a, b in zip(low_colour, high_colour))
    return stops[-1][1]


def weight_line_width(weight: float, *, base: int = 2) -> int:
    """Box outline width for an instance weight: `base` pixels at weight 1, thicker for larger weights,
    thinner (at least 1) for smaller ones, at most 4 * `base`."""
    return max(1, min(4 * base, round(base * (0.5 + float(weight)))))


def draw_instance_weights(
    image: Image.Image,
    boxes: Any,
    weights: Any,
    *,
    font_size: int | None = None,
) -> Image.Image:
    """A copy of `image` (RGB) with each box outlined in the colour of its weight (`weight_colour`),
    thicker for larger weights (`weight_line_width`), on a dark halo so it shows on light and dark images,
    and the weight printed on a tag at the box's top edge.

    Args:
        image: the image the boxes are in.
        boxes: (n, 4) absolute xyxy in pixels of `image` (tensor or sequence).
        weights: (n,) one weight per box (1 = the image's average).
        font_size: tag text size in pixels; by default about 6% of the shorter image edge, at least 10.

    Example:
        >>> from PIL import Image
        >>> drawn = draw_instance_weights(Image.new("RGB", (64, 64), "white"), [[8, 8, 40, 40]], [2.0])
        >>> drawn.getpixel((8, 24)) != (255, 255, 255)
        True

    Raises:
        ValueError: `boxes` and `weights` have different lengths, or a box is not 4 numbers.
    """
    boxes, weights = _as_list(boxes), [float(weight) for weight in _as_list(weights)]
    if len(boxes) != len(weights):
        raise ValueError(f"Need one weight per box; got {len(boxes)} boxes and {len(weights)} weights.")
    for index, box in enumerate(boxes):
        if len(box) != 4:
            raise ValueError(f"boxes[{index}] must be 4 numbers (x1, y1, x2, y2), got {box}.")
    drawn = image.convert("RGB")
    draw = ImageDraw.Draw(drawn)
    font = ImageFont.load_default(size=font_size or max(10, round(min(drawn.size) * 0.06)))
    # Smallest weight first, so the favoured instances' boxes and tags end up on top.
    for weight, box in sorted(zip(weights, boxes), key=lambda pair: pair[0]):
        x1, y1, x2, y2 = (float(v) for v in box)
        rectangle = (x1, y1, max(x1, x2), max(y1, y2))
        width, colour = weight_line_width(weight), weight_colour(weight)
        # The dark outline one pixel wider on each side is the halo.
        draw.rectangle(rectangle, outline=(20, 20, 20), width=width + 2)
        draw.rectangle((x1 + 1, y1 + 1, rectangle[2] - 1, rectangle[3] - 1), outline=colour, width=width)
        _draw_tag(draw, f"{weight:.2f}", anchor=(x1, y1), colour=colour, font=font, image_size=drawn.size)
    return drawn


def weight_legend(width: int, *, font_size: int = 14, caption: str | None = None) -> Image.Image:
    """A horizontal colour bar of `WEIGHT_SCALE`, `width` pixels wide, ticked at each stop, with an
    optional caption on its left."""
    font = ImageFont.load_default(size=font_size)
    bar_height, margin = font_size + 4, 8
    caption_width = 0
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    if caption:
        left, _, right, _ = probe.textbbox((0, 0), caption, font=font)
        caption_width = right - left + 2 * margin
    legend = Image.new("RGB", (width, bar_height + font_size + 3 * margin), "white")
    draw = ImageDraw.Draw(legend)
    if caption:
        draw.text((margin, margin), caption, fill=(0, 0, 0), font=font)
    bar_left, bar_right = caption_width + margin, width - 3 * margin
    low, high = math.log2(WEIGHT_SCALE[0][0]), math.log2(WEIGHT_SCALE[-1][0])
    for x in range(bar_left, bar_right + 1):
        weight = 2 ** (low + (x - bar_left) / max(1, bar_right - bar_left) * (high - low))
        draw.line((x, margin, x, margin + bar_height), fill=weight_colour(weight))
    draw.rectangle((bar_left, margin, bar_right, margin + bar_height), outline=(0, 0, 0))
    for value, _ in WEIGHT_SCALE:
        x = bar_left + (math.log2(value) - low) / (high - low) * (bar_right - bar_left)
        draw.line((x, margin + bar_height, x, margin + bar_height + 4), fill=(0, 0, 0))
        text = f"{value:g}" if value >= 1 else f"1/{round(1 / value)}"
        left, _, right, _ = draw.textbbox((0, 0), text, font=font)
        draw.text((x - (right - left) / 2, margin + bar_height + 5), text, fill=(0, 0, 0), font=font)
    return legend


def image_grid(
    rows: list[list[Image.Image]],
    *,
    title: str | None = None,
    row_labels: list[str] | None = None,
    footer: Image.Image | None = None,
    gap: int = 6,
    font_size: int = 16,
) -> Image.Image:
    """Images laid out row by row on white, each cell as large as the largest image, with an optional
    title above, a label left of each row and a `footer` image (e.g. a `weight_legend`) below.

    Raises:
        ValueError: no images, or `row_labels` not one per row.
    """
    if not rows or not any(rows):
        raise ValueError("image_grid needs at least one image.")
    if row_labels is not None and len(row_labels) != len(rows):
        raise ValueError(f"Need one label per row; got {len(row_labels)} labels for {len(rows)} rows.")
    font = ImageFont.load_default(size=font_size)
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    cell_width = max(image.width for row in rows for image in row)
    cell_height = max(image.height for row in rows for image in row)
    columns = max(len(row) for row in rows)
    label_width = 0
    if row_labels:
        label_width = max(probe.textbbox((0, 0), label, font=font)[2] for label in row_labels) + 2 * gap
    title_height = font_size + 2 * gap if title else 0
    width = label_width + columns * (cell_width + gap) + gap
    if footer is not None:
        width = max(width, footer.width)
    height = title_height + len(rows) * (cell_height + gap) + gap + (footer.height if footer is not None else 0)
    grid = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(grid)
    if title:
        draw.text((gap, gap), title, fill=(0, 0, 0), font=font)
    for row_index, row in enumerate(rows):
        top = title_height + gap + row_index * (cell_height + gap)
        if row_labels:
            draw.text((gap, top + cell_height / 2 - font_size / 2), row_labels[row_index], fill=(0, 0, 0), font=font)
        for column, image in enumerate(row):
            grid.paste(image.convert("RGB"), (label_width + gap + column * (cell_width + gap), top))
    if footer is not None:
        grid.paste(footer, (0, height - footer.height))
    return grid


__all__ = [
    "PALETTE",
    "WEIGHT_SCALE",
    "class_colour",
    "draw_detections",
    "draw_instance_weights",
    "image_grid",
    "weight_colour",
    "weight_legend",
    "weight_line_width",
]
