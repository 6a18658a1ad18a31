"""Transforms and a collator that feed a Hub-schema detection dataset to `transformers.Trainer`."""

from __future__ import annotations

import logging
import random
from typing import Any

import datasets
from PIL import Image

from ..errors import DataError
from ..models.gfl.image_processing_gfl import GFLImageProcessor
from .checks import parse_iscrowd
from .coco import objects_as_rows
from .images import read_image, source_name, undecoded_images

logger = logging.getLogger(__name__)


def coco_annotation(image_id: int, objects: Any, *, flip_width: int | None = None) -> dict:
    """A dataset row's objects as the COCO-style dict `GFLImageProcessor` takes.

    Args:
        image_id: the row's image id.
        objects: the row's `objects` (bbox xywh absolute pixels, category, iscrowd: 0/1, a bool, or
            "0"/"1"/"true"/"false").
        flip_width: when given, mirror every box horizontally inside an image of this width.

    Raises:
        DataError: an object's ``iscrowd`` is none of those values (naming the image id and the object).
    """
    annotations = []
    for index, obj in enumerate(objects_as_rows(objects)):
        x, y, w, h = (float(v) for v in obj["bbox"])
        if flip_width is not None:
            x = flip_width - x - w
        annotations.append(
            {
                "bbox": [x, y, w, h],
                "category_id": int(obj["category"]),
                "iscrowd": int(parse_iscrowd(obj.get("iscrowd"), where=f"image id {image_id} object {index}")),
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

    Images are read by `liaf_hf.data.images.read_image`: upright by their EXIF orientation (the annotations
    are in upright coordinates), as 8-bit RGB with 16-bit and float greyscale scaled by their range.
    An image that cannot be read (corrupt, truncated, not an image, a possible decompression bomb, a pixel
    mode with no faithful RGB form) raises `DataError` naming the file and the image id, or with
    `skip_bad_images=True` is dropped from its batch, logged and counted in
    `bad_images_skipped` (in the process that loads the data: with `dataloader_num_workers > 0` the workers'
    counts stay in the workers, but each drop is still logged). Attach it with `apply_to`, which lets this
    transform decode the images: `datasets` would otherwise decode them first and fail with PIL's own error.

    Args:
        image_processor: the detector's processor.
        train: apply augmentation (a random horizontal flip).
        horizontal_flip_prob: probability of the flip when training.
        seed: seed of the flip decisions.
        skip_bad_images: drop unreadable images instead of raising.
    """

    def __init__(
        self,
        image_processor: GFLImageProcessor,
        *,
        train: bool,
        horizontal_flip_prob: float = 0.5,
        seed: int = 0,
        skip_bad_images: bool = False,
    ) -> None:
        self.image_processor = image_processor
        self.train = train
        self.horizontal_flip_prob = horizontal_flip_prob
        self.seed = seed
        self.epoch = 0
        self.skip_bad_images = skip_bad_images
        self.bad_images_skipped = 0

    def apply_to(self, dataset: datasets.Dataset) -> datasets.Dataset:
        """`dataset.with_transform(self)`, with the image column left undecoded so that this transform
        decodes each image itself and can name the file that fails."""
        return undecoded_images(dataset).with_transform(self)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def flips(self, image_id: int) -> bool:
        """Whether this epoch's augmentation mirrors the image `image_id`."""
        if not self.train or self.horizontal_flip_prob <= 0:
            return False
        return random.Random(f"{self.seed}/{self.epoch}/{int(image_id)}").random() < self.horizontal_flip_prob

    def decode(self, value: Any, image_id: int) -> Image.Image | None:
        """The upright RGB image of a row's `image` value (a PIL image, or datasets' `{"path", "bytes"}` dict);
        None when it is unreadable and `skip_bad_images` is on."""
        source = source_name(value)
        try:
            return read_image(value, name=source)
        except DataError as error:
            reason = str(error).removeprefix(f"{source}: ")
            message = f"{source}: cannot decode image id {int(image_id)}: {reason}"
            if not self.skip_bad_images:
                raise DataError(message) from error
            self.bad_images_skipped += 1
            logger.warning("%s; skipped (%d skipped so far)", message, self.bad_images_skipped)
            return None

    def __call__(self, batch: dict[str, list]) -> dict[str, list]:
        images, annotations = [], []
        for value, image_id, objects in zip(batch["image"], batch["image_id"], batch["objects"]):
            image = self.decode(value, image_id)
            if image is None:
                continue
            flip = self.flips(image_id)
            if flip:
                image = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
            images.append(image)
            annotations.append(coco_annotation(image_id, objects, flip_width=image.width if flip else None))
        if not images:
            return {"pixel_values": [], "labels": []}
        processed = self.image_processor(images=images, annotations=annotations, do_pad=False)
        return {"pixel_values": processed["pixel_values"], "labels": processed["labels"]}


class DetectionCollator:
    """Pads a list of processed examples into a batch: `pixel_values` (B, 3, H, W), `pixel_mask` (B, H, W)
    and `labels` (a list of per-image dicts)."""

    def __init__(self, image_processor: GFLImageProcessor) -> None:
        self.image_processor = image_processor

    def __call__(self, features: list[dict]) -> dict[str, Any]:
        if not features:
            raise DataError("every image of this batch was unreadable and skipped; nothing is left to train on")
        batch = self.image_processor.pad([feature["pixel_values"] for feature in features])
        return {
            "pixel_values": batch["pixel_values"],
            "pixel_mask": batch["pixel_mask"],
            "labels": [feature["labels"] for feature in features],
        }
