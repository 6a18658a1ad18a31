"""Image processor for GFL: resize keeping aspect ratio, normalise, pad to a multiple of 32 with a pixel
mask, turn COCO annotations into model labels, and turn model outputs into detections."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torchvision
from PIL import Image
from torchvision.transforms.v2 import functional as TF
from transformers.image_processing_utils import BaseImageProcessor, BatchFeature
from transformers.image_utils import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD


def _to_uint8_chw(image: Any, index: int) -> torch.Tensor:
    """A PIL image, an (H, W, 3) / (3, H, W) array or tensor, as a (3, H, W) uint8 tensor."""
    if isinstance(image, Image.Image):
        return TF.pil_to_tensor(image.convert("RGB"))
    tensor = torch.as_tensor(np.asarray(image)) if not isinstance(image, torch.Tensor) else image
    if tensor.ndim == 2:
        tensor = tensor[None].expand(3, -1, -1)
    if tensor.ndim != 3:
        raise ValueError(f"images[{index}] must be 2-D or 3-D, got shape {tuple(tensor.shape)}.")
    if tensor.shape[0] not in (1, 3) and tensor.shape[-1] in (1, 3):
        tensor = tensor.permute(2, 0, 1)
    if tensor.shape[0] == 1:
        tensor = tensor.expand(3, -1, -1)
    if tensor.shape[0] != 3:
        raise ValueError(f"images[{index}] must have 1 or 3 channels, got shape {tuple(tensor.shape)}.")
    if tensor.dtype != torch.uint8:
        # Float input is taken as already scaled to [0, 1], as torchvision does.
        tensor = (tensor.float().clamp(0, 1) * 255).round().to(torch.uint8)
    return tensor.contiguous()


class GFLImageProcessor(BaseImageProcessor):
    r"""
    Prepares images (and optionally COCO-style annotations) for [`GFLForObjectDetection`] and turns its
    outputs into detections.

    Args:
        do_resize (`bool`, defaults to `True`):
            Resize so the shorter edge is `size["shortest_edge"]` unless that makes the longer edge exceed
            `size["longest_edge"]`, keeping the aspect ratio.
        size (`dict`, defaults to `{"shortest_edge": 800, "longest_edge": 1333}`):
            Target size, as above.
        do_normalize (`bool`, defaults to `True`):
            Scale to [0, 1] then subtract `image_mean` and divide by `image_std`.
        image_mean, image_std (`list[float]`, default to ImageNet's):
            Per-channel normalisation.
        do_pad (`bool`, defaults to `True`):
            Pad each batch at the bottom and right to a common size that is a multiple of
            `pad_size_divisor`, and return `pixel_mask`.
        pad_size_divisor (`int`, defaults to 32):
            The padded size is a multiple of this (the coarsest backbone stride).
        score_threshold, nms_iou_threshold, pre_nms_top_k, max_detections:
            Post-processing settings; build the processor with [`GFLImageProcessor.for_model_config`] to take
            them from a [`GFLConfig`].

    Example:

    ```python
    >>> from PIL import Image
    >>> from liaf_hf import GFLImageProcessor
    >>> processor = GFLImageProcessor(size={"shortest_edge": 128, "longest_edge": 128})
    >>> batch = processor(images=[Image.new("RGB", (200, 100))], return_tensors="pt")
    >>> tuple(batch["pixel_values"].shape), tuple(batch["pixel_mask"].shape)
    ((1, 3, 64, 128), (1, 64, 128))
    ```
    """

    model_input_names = ["pixel_values", "pixel_mask"]

    def __init__(
        self,
        *,
        do_resize: bool = True,
        size: dict[str, int] | None = None,
        do_normalize: bool = True,
        image_mean: Sequence[float] | None = None,
        image_std: Sequence[float] | None = None,
        do_pad: bool = True,
        pad_size_divisor: int = 32,
        score_threshold: float = 0.05,
        nms_iou_threshold: float = 0.6,
        pre_nms_top_k: int = 1000,
        max_detections: int = 100,
        **kwargs,
    ) -> None:
        super().__init__(**kwargs)
        size = dict(size) if size is not None else {"shortest_edge": 800, "longest_edge": 1333}
        if set(size) != {"shortest_edge", "longest_edge"}:
            raise ValueError(f"size must have exactly 'shortest_edge' and 'longest_edge', got {size}.")
        self.do_resize = do_resize
        self.size = size
        self.do_normalize = do_normalize
        self.image_mean = list(image_mean) if image_mean is not None else list(IMAGENET_DEFAULT_MEAN)
        self.image_std = list(image_std) if image_std is not None else list(IMAGENET_DEFAULT_STD)
        self.do_pad = do_pad
        self.pad_size_divisor = pad_size_divisor
        self.score_threshold = score_threshold
        self.nms_iou_threshold = nms_iou_threshold
        self.pre_nms_top_k = pre_nms_top_k
        self.max_detections = max_detections

    @classmethod
    def for_model_config(cls, config, **kwargs) -> GFLImageProcessor:
        """A processor whose post-processing settings are those of a `GFLConfig`."""
        settings = {
            "score_threshold": config.score_threshold,
            "nms_iou_threshold": config.nms_iou_threshold,
            "pre_nms_top_k": config.pre_nms_top_k,
            "max_detections": config.max_detections,
        }
        settings.update(kwargs)
        return cls(**settings)

    # --------------------------------------------------------------------------------- preprocessing

    def resized_size(self, height: int, width: int) -> tuple[int, int]:
        """The (height, width) an image of this size is resized to."""
        if not self.do_resize:
            return height, width
        scale = min(self.size["shortest_edge"] / min(height, width), self.size["longest_edge"] / max(height, width))
        return max(1, round(height * scale)), max(1, round(width * scale))

    def __call__(self, images, annotations=None, **kwargs) -> BatchFeature:
        return self.preprocess(images, annotations=annotations, **kwargs)

    def preprocess(
        self,
        images,
        annotations: dict | Sequence[dict] | None = None,
        *,
        do_pad: bool | None = None,
        return_tensors: str | None = "pt",
        **kwargs,
    ) -> BatchFeature:
        """Prepare a batch.

        Args:
            images: one image or a list (PIL, numpy (H, W, 3) uint8, or tensor (3, H, W)).
            annotations: per image, a COCO-style dict `{"image_id": int, "annotations": [{"bbox": [x, y, w, h]
                (absolute pixels of the original image), "category_id": contiguous class index,
                "iscrowd": 0 or 1}, ...]}`. Crowd boxes become `ignore_boxes`.
            do_pad: pad to a common size and return `pixel_mask`; without padding, `pixel_values` is a list
                of (3, H_i, W_i) tensors (for collators that pad later with [`GFLImageProcessor.pad`]).

        Returns:
            `pixel_values` (B, 3, H, W), `pixel_mask` (B, H, W) when padding, and with annotations `labels`:
            per image `class_labels` (n,), `boxes` (n, 4) normalised cxcywh, `ignore_boxes` (k, 4) same units,
            `image_id`, `orig_size` and `size` as (height, width).
        """
        unknown = set(kwargs) - {"data_format", "input_data_format", "device"}
        if unknown:
            raise TypeError(f"GFLImageProcessor.preprocess got unexpected arguments {sorted(unknown)}.")
        single = isinstance(images, (Image.Image, np.ndarray, torch.Tensor)) and not (
            isinstance(images, (np.ndarray, torch.Tensor)) and images.ndim == 4
        )
        images = [images] if single else list(images)
        if annotations is not None:
            annotations = [annotations] if isinstance(annotations, dict) else list(annotations)
            if len(annotations) != len(images):
                raise ValueError(f"Got {len(images)} images but {len(annotations)} annotation dicts.")

        pixel_values, labels = [], []
        for index, image in enumerate(images):
            tensor = _to_uint8_chw(image, index)
            orig_height, orig_width = tensor.shape[-2:]
            height, width = self.resized_size(orig_height, orig_width)
            if (height, width) != (orig_height, orig_width):
                tensor = TF.resize(tensor, [height, width], antialias=True)
            tensor = tensor.float() / 255.0
            if self.do_normalize:
                tensor = TF.normalize(tensor, mean=self.image_mean, std=self.image_std)
            pixel_values.append(tensor)
            if annotations is not None:
                labels.append(
                    self._annotation_to_labels(annotations[index], index, (orig_height, orig_width), (height, width))
                )

        do_pad = self.do_pad if do_pad is None else do_pad
        if do_pad:
            batch = self.pad(pixel_values)
        else:
            batch = BatchFeature(data={"pixel_values": pixel_values})
        if annotations is not None:
            batch["labels"] = labels
        return batch

    def _annotation_to_labels(
        self, annotation: dict, index: int, orig_size: tuple[int, int], size: tuple[int, int]
    ) -> dict[str, torch.Tensor]:
        if "annotations" not in annotation:
            raise ValueError(
                f"annotations[{index}] must be a dict with 'image_id' and 'annotations' (COCO detection format); "
                f"got keys {sorted(annotation)}."
            )
        height, width = orig_size
        class_labels, boxes, ignore_boxes = [], [], []
        for object_index, obj in enumerate(annotation["annotations"]):
            bbox = obj.get("bbox")
            if bbox is None or len(bbox) != 4 or not all(np.isfinite(v) for v in bbox):
                raise ValueError(
                    f"annotations[{index}] (image_id {annotation.get('image_id')}) object {object_index}: "
                    f"bbox must be 4 finite numbers [x, y, w, h], got {bbox}."
                )
            x, y, w, h = (float(v) for v in bbox)
            # Normalised by the original size, which is the same as by the resized, unpadded size.
            box = [(x + w / 2) / width, (y + h / 2) / height, w / width, h / height]
            if obj.get("iscrowd", 0):
                ignore_boxes.append(box)
                continue
            if "category_id" not in obj:
                raise ValueError(
                    f"annotations[{index}] (image_id {annotation.get('image_id')}) object {object_index} has no "
                    f"category_id."
                )
            class_labels.append(int(obj["category_id"]))
            boxes.append(box)
        return {
            "class_labels": torch.tensor(class_labels, dtype=torch.long),
            "boxes": torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
            "ignore_boxes": torch.tensor(ignore_boxes, dtype=torch.float32).reshape(-1, 4),
            "image_id": torch.tensor(int(annotation.get("image_id", index))),
            "orig_size": torch.tensor([height, width]),
            "size": torch.tensor(list(size)),
        }

    def pad(self, pixel_values: Sequence[torch.Tensor]) -> BatchFeature:
        """Pad (3, H_i, W_i) images at the bottom and right to one size, a multiple of `pad_size_divisor`.

        Returns `pixel_values` (B, 3, H, W) and `pixel_mask` (B, H, W), 1 on real pixels.
        """
        divisor = self.pad_size_divisor
        height = max(t.shape[-2] for t in pixel_values)
        width = max(t.shape[-1] for t in pixel_values)
        height = -(-height // divisor) * divisor
        width = -(-width // divisor) * divisor
        batch = pixel_values[0].new_zeros((len(pixel_values), 3, height, width))
        mask = torch.zeros((len(pixel_values), height, width), dtype=torch.long)
        for index, tensor in enumerate(pixel_values):
            batch[index, :, : tensor.shape[-2], : tensor.shape[-1]] = tensor
            mask[index, : tensor.shape[-2], : tensor.shape[-1]] = 1
        return BatchFeature(data={"pixel_values": batch, "pixel_mask": mask})

    # -------------------------------------------------------------------------------- postprocessing

    def post_process_object_detection(
        self,
        outputs,
        threshold: float | None = None,
        target_sizes: torch.Tensor | Sequence[Sequence[int]] | None = None,
    ) -> list[dict[str, torch.Tensor]]:
        """Detections from model outputs: score filter, pre-NMS top-k, class-aware NMS, top `max_detections`.

        Args:
            outputs: a `GFLObjectDetectionOutput` (or anything with `logits` (B, A, C) and `pred_boxes`
                (B, A, 4) normalised cxcywh).
            threshold: minimum score; defaults to `self.score_threshold`.
            target_sizes: (B, 2) original (height, width) per image; boxes are scaled to it. Without it
                boxes stay normalised.

        Returns:
            One dict per image with `scores` (n,), `labels` (n,) and `boxes` (n, 4) xyxy in absolute pixels
            of the target size, highest score first.
        """
        threshold = self.score_threshold if threshold is None else threshold
        logits, pred_boxes = outputs["logits"], outputs["pred_boxes"]
        if target_sizes is not None and len(target_sizes) != logits.shape[0]:
            raise ValueError(f"Got {len(target_sizes)} target sizes for a batch of {logits.shape[0]} images.")
        scores_all = logits.detach().float().sigmoid()
        num_classes = scores_all.shape[-1]
        results = []
        for index in range(scores_all.shape[0]):
            scores = scores_all[index].reshape(-1)
            keep = scores > threshold
            candidate = keep.nonzero(as_tuple=True)[0]
            scores = scores[candidate]
            if scores.numel() > self.pre_nms_top_k:
                scores, order = scores.topk(self.pre_nms_top_k)
                candidate = candidate[order]
            anchor_index = candidate // num_classes
            labels = candidate % num_classes
            cx, cy, w, h = pred_boxes[index, anchor_index].detach().float().unbind(-1)
            boxes = torch.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], dim=-1)
            if target_sizes is not None:
                height, width = (float(v) for v in target_sizes[index])
                boxes = boxes * boxes.new_tensor([width, height, width, height])
            kept = torchvision.ops.batched_nms(boxes, scores, labels, self.nms_iou_threshold)[: self.max_detections]
            results.append({"scores": scores[kept], "labels": labels[kept], "boxes": boxes[kept]})
        return results


__all__ = ["GFLImageProcessor"]
