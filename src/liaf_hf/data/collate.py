"""Transforms and a collator that feed a Hub-schema detection dataset to `transformers.Trainer`."""

from __future__ import annotations

import random
from typing import Any

from PIL import Image

from ..models.gfl.image_processing_gfl import GFLImageProcessor
from .coco import objects_as_rows


def coco_annotation(image_id: int, objects: Any, *, flip_width: int | None = None) -> dict:
    """A dataset row's objects as the COCO-style dict `GFLImageProcessor` takes.

    Args:
        image_id: the row's image id.
        objects: the row's `objects` (bbox xywh absolute pixels, category, iscrowd).
        flip_width: when given, mirror every box horizontally inside an image of this width.
    """
    annotations = []
    for obj in objects_as_rows(objects):
        x, y, w, h = (float(v) for v in obj["bbox"])
        if flip_width is not None:
            x = flip_width - x - w
        annotations.append(
            {
                "bbox": [x, y, w, h],
                "category_id": int(obj["category"]),
                "iscrowd": int(bool(obj.get("iscrowd", 0))),
            }
        )
    return {"image_id": int(image_id), "annotations": annotations}


class DetectionTransform:
    """`dataset.with_transform` callable: decodes images, optionally flips them, and runs the image
    processor without padding (the collator pads each batch to its own size).

    Whether an image is flipped is a function of (`seed`, epoch, image id) alone, not of a global random
    state: the Trainer's dataloader loads one batch ahead and a resumed run skips batches without loading
    them, so a flip drawn from a shared generator would differ between a resumed run and an uninterrupted
    one. `set_epoch` (called by `AugmentationEpochCallback`) gives each epoch fresh flips.

    Args:
        image_processor: the detector's processor.
        train: apply augmentation (a random horizontal flip).
        horizontal_flip_prob: probability of the flip when training.
        seed: seed of the flip decisions.
    """

    def __init__(
        self, image_processor: GFLImageProcessor, *, train: bool, horizontal_flip_prob: float = 0.5, seed: int = 0
    ) -> None:
        self.image_processor = image_processor
        self.train = train
        self.horizontal_flip_prob = horizontal_flip_prob
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def flips(self, image_id: int) -> bool:
        """Whether this epoch's augmentation mirrors the image `image_id`."""
        if not self.train or self.horizontal_flip_prob <= 0:
            return False
        return random.Random(f"{self.seed}/{self.epoch}/{int(image_id)}").random() < self.horizontal_flip_prob

    def __call__(self, batch: dict[str, list]) -> dict[str, list]:
        images, annotations = [], []
        for image, image_id, objects in zip(batch["image"], batch["image_id"], batch["objects"]):
            image = image.convert("RGB")
            flip = self.flips(image_id)
            if flip:
                image = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
            images.append(image)
            annotations.append(coco_annotation(image_id, objects, flip_width=image.width if flip else None))
        processed = self.image_processor(images=images, annotations=annotations, do_pad=False)
        return {"pixel_values": processed["pixel_values"], "labels": processed["labels"]}


class DetectionCollator:
    """Pads a list of processed examples into a batch: `pixel_values` (B, 3, H, W), `pixel_mask` (B, H, W)
    and `labels` (a list of per-image dicts)."""

    def __init__(self, image_processor: GFLImageProcessor) -> None:
        self.image_processor = image_processor

    def __call__(self, features: list[dict]) -> dict[str, Any]:
        batch = self.image_processor.pad([feature["pixel_values"] for feature in features])
        return {
            "pixel_values": batch["pixel_values"],
            "pixel_mask": batch["pixel_mask"],
            "labels": [feature["labels"] for feature in features],
        }
