"""Image processor for GFL, on transformers' torchvision image-processor backend: resize keeping the aspect
ratio, rescale, normalise, pad at the bottom and right with a pixel mask, turn COCO annotations into model
labels, and turn model outputs into detections.

It follows the contract of transformers' fast detection processors (DETR, RT-DETR): every `size` form,
`do_resize` / `do_rescale` / `do_normalize` / `do_pad` with `pad_size`, per-call overrides, `return_tensors`
and `format="coco_detection"`. One difference is deliberate: label boxes stay normalised to each image's own
(resized, unpadded) size, which `labels[i]["size"]` gives, and the model measures its boxes against that
size, so padding never moves a target (DETR's processor instead renormalises boxes to the padded canvas).

Pixel values follow transformers' rule: with `do_rescale=True` every image, float or integer, is multiplied by
`rescale_factor`; nothing is clipped. A float image already in [0, 1] that is rescaled, or one outside [0, 1]
that is not, is processed as asked with a warning, since either is usually a wrong `do_rescale`.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
import torchvision
from transformers.image_processing_backends import TorchvisionBackend
from transformers.image_processing_utils import BatchFeature
from transformers.image_utils import (
    IMAGENET_DEFAULT_MEAN,
    IMAGENET_DEFAULT_STD,
    AnnotationFormat,
    PILImageResampling,
    SizeDict,
    get_image_size_for_max_height_width,
)
from transformers.processing_utils import ImagesKwargs

SUPPORTED_SIZE_FORMS = (
    "{'shortest_edge', 'longest_edge'}, {'max_height', 'max_width'}, {'height', 'width'}, {'shortest_edge'} "
    "or {'longest_edge'}"
)
POST_PROCESSING_DEFAULTS = {
    "score_threshold": 0.05,
    "nms_iou_threshold": 0.6,
    "pre_nms_top_k": 1000,
    "max_detections": 100,
}

# PIL modes whose pixels do not fit 8 bits: PIL's RGB conversion clips them instead of scaling.
_WIDE_PIL_MODES = frozenset({"I", "I;16", "I;16L", "I;16B", "I;16N", "F"})


class GFLImageProcessorKwargs(ImagesKwargs, total=False):
    r"""
    format (`str`, *optional*, defaults to `"coco_detection"`):
        Format of the annotations; only COCO detection (`{"image_id", "annotations": [{"bbox": [x, y, w, h],
        "category_id", "iscrowd", "area"}, ...]}`) is supported.
    pad_size_divisor (`int`, *optional*, defaults to 32):
        Without `pad_size`, each batch is padded to its largest image rounded up to a multiple of this.
    """

    format: str | AnnotationFormat
    pad_size_divisor: int


def _float_range(image: Any) -> tuple[float, float] | None:
    """(min, max) of a float numpy array or tensor image; None for integer images and PIL images."""
    if isinstance(image, torch.Tensor) and image.is_floating_point() and image.numel():
        return float(image.min()), float(image.max())
    if isinstance(image, np.ndarray) and np.issubdtype(image.dtype, np.floating) and image.size:
        return float(image.min()), float(image.max())
    return None


def _warn_about_scale(index: int, value_range: tuple[float, float], do_rescale: bool) -> None:
    low, high = value_range
    if do_rescale:
        warnings.warn(
            f"images[{index}] is a float image already in [0, 1] (values {low:.4g} to {high:.4g}) and is rescaled "
            "again by rescale_factor. If its pixel values are meant to lie between 0 and 1, pass do_rescale=False.",
            UserWarning,
            stacklevel=7,
        )
    else:
        warnings.warn(
            f"images[{index}] is a float image with values outside [0, 1] ({low:.4g} to {high:.4g}) and "
            "do_rescale=False, so they reach normalisation unscaled. If they are 0..255 pixel values, pass "
            "do_rescale=True (the default) to multiply them by rescale_factor.",
            UserWarning,
            stacklevel=7,
        )


def _has_alpha(image: np.ndarray | torch.Tensor) -> bool:
    """Whether a 3-D array or tensor image has 4 channels, first or last."""
    return image.ndim == 3 and 4 in (image.shape[0], image.shape[-1])


def _output_field(outputs: Any, name: str) -> torch.Tensor:
    """`outputs.name` of a ModelOutput, a dataclass or any object, or `outputs[name]` of a mapping."""
    if isinstance(outputs, Mapping):
        if name not in outputs:
            raise KeyError(f"post_process_object_detection needs '{name}' in the model outputs; got {sorted(outputs)}.")
        return outputs[name]
    value = getattr(outputs, name, None)
    if value is None:
        raise AttributeError(f"post_process_object_detection needs outputs.{name}; {type(outputs).__name__} has none.")
    return torch.as_tensor(value)


class GFLImageProcessor(TorchvisionBackend):
    r"""
    Prepares images (and optionally COCO-style annotations) for [`GFLForObjectDetection`] and turns its
    outputs into detections.

    Args:
        do_resize (`bool`, defaults to `True`):
            Resize each image to `size`.
        size (`dict`, defaults to `{"shortest_edge": 800, "longest_edge": 1333}`):
            One of transformers' size forms: `{"shortest_edge", "longest_edge"}` (the shorter edge to
            `shortest_edge` unless that makes the longer edge exceed `longest_edge`), `{"max_height",
            "max_width"}` (as large as fits in that box), `{"shortest_edge"}` or `{"longest_edge"}` alone, all
            keeping the aspect ratio, or `{"height", "width"}` (exactly that size).
        resample (`PILImageResampling`, defaults to `BILINEAR`):
            The resampling filter (antialiased).
        do_rescale (`bool`, defaults to `True`), rescale_factor (`float`, defaults to `1 / 255`):
            Multiply pixel values by `rescale_factor` (0..255 images, integer or float, to [0, 1]). Pass
            `do_rescale=False` for float images already in [0, 1]; a float image whose range disagrees with
            `do_rescale` is processed as asked, with a warning.
        do_normalize (`bool`, defaults to `True`), image_mean, image_std (default to ImageNet's):
            Subtract `image_mean` and divide by `image_std`, per channel.
        do_pad (`bool`, defaults to `True`):
            Pad each batch at the bottom and right, to `pad_size` when it is given, else to its largest image
            rounded up to a multiple of `pad_size_divisor`, and return `pixel_mask` (1 on real pixels).
            Without padding, `pixel_values` is a list of `(3, H_i, W_i)` tensors, for collators that pad later
            with [`GFLImageProcessor.pad`].
        pad_size (`dict`, *optional*):
            `{"height", "width"}`: the size every image is padded to.
        pad_size_divisor (`int`, defaults to 32):
            The padded size is a multiple of this (the coarsest backbone stride) when `pad_size` is not given.
        score_threshold, nms_iou_threshold, pre_nms_top_k, max_detections:
            Post-processing settings; build the processor with [`GFLImageProcessor.for_model_config`] to take
            them from a [`GFLConfig`].

    Every preprocessing argument can also be given per call, e.g. `processor(images, size={"height": 64,
    "width": 64}, do_pad=False)`.

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

    valid_kwargs = GFLImageProcessorKwargs
    resample = PILImageResampling.BILINEAR
    size = {"shortest_edge": 800, "longest_edge": 1333}
    default_to_square = False
    do_resize = True
    do_rescale = True
    rescale_factor = 1 / 255
    do_normalize = True
    image_mean = IMAGENET_DEFAULT_MEAN
    image_std = IMAGENET_DEFAULT_STD
    do_pad = True
    pad_size = None
    pad_size_divisor = 32
    do_convert_rgb = True
    format = AnnotationFormat.COCO_DETECTION
    model_input_names = ["pixel_values", "pixel_mask"]

    def __init__(
        self,
        *,
        score_threshold: float = 0.05,
        nms_iou_threshold: float = 0.6,
        pre_nms_top_k: int = 1000,
        max_detections: int = 100,
        **kwargs,
    ) -> None:
        super().__init__(**kwargs)
        self.score_threshold = score_threshold
        self.nms_iou_threshold = nms_iou_threshold
        self.pre_nms_top_k = pre_nms_top_k
        self.max_detections = max_detections
        self._check_size(self.size, "size")

    @classmethod
    def for_model_config(cls, config, **kwargs) -> GFLImageProcessor:
        """A processor whose post-processing settings are those of a `GFLConfig`."""
        settings = {name: getattr(config, name) for name in POST_PROCESSING_DEFAULTS}
        settings.update(kwargs)
        return cls(**settings)

    # --------------------------------------------------------------------------------- preprocessing

    @staticmethod
    def _check_size(size: SizeDict | None, name: str) -> None:
        if size is None:
            return
        forms = [
            size.shortest_edge and size.longest_edge,
            size.max_height and size.max_width,
            size.height and size.width,
            size.shortest_edge,
            size.longest_edge,
        ]
        if not any(forms):
            raise ValueError(f"{name} must be one of {SUPPORTED_SIZE_FORMS}; got {dict(size)}.")

    def resized_size(self, height: int, width: int, size: SizeDict | dict | None = None) -> tuple[int, int]:
        """The (height, width) an image of this size is resized to (with `size`, or the processor's own)."""
        if size is None:
            if not self.do_resize:
                return height, width
            size = self.size
        size = size if isinstance(size, SizeDict) else SizeDict(**size)
        if size.shortest_edge and size.longest_edge:
            scale = min(size.shortest_edge / min(height, width), size.longest_edge / max(height, width))
        elif size.max_height and size.max_width:
            return tuple(get_image_size_for_max_height_width((height, width), size.max_height, size.max_width))
        elif size.height and size.width:
            return size.height, size.width
        elif size.shortest_edge:
            scale = size.shortest_edge / min(height, width)
        elif size.longest_edge:
            scale = size.longest_edge / max(height, width)
        else:
            raise ValueError(f"size must be one of {SUPPORTED_SIZE_FORMS}; got {dict(size)}.")
        return max(1, round(height * scale)), max(1, round(width * scale))

    def resize(self, image: torch.Tensor, size: SizeDict, resample=None, **kwargs) -> torch.Tensor:
        """Resize `(..., 3, H, W)` images to what `size` gives for their (H, W) (see `resized_size`)."""
        height, width = image.shape[-2:]
        new_height, new_width = self.resized_size(height, width, size)
        if (new_height, new_width) == (height, width):
            return image
        return super().resize(image, SizeDict(height=new_height, width=new_width), resample=resample, **kwargs)

    def _prepare_image_like_inputs(self, images, expected_ndims: int = 3, **kwargs) -> list[torch.Tensor]:
        images = self._prepare_images_structure(images, expected_ndims=expected_ndims)
        prepared = []
        for index, image in enumerate(images):
            if getattr(image, "mode", None) in _WIDE_PIL_MODES:
                raise ValueError(
                    f"images[{index}] is a PIL image of mode {image.mode!r} (16-bit or 32-bit greyscale), which "
                    "converting to RGB would saturate or blacken: scale it to 8 bits by its range first "
                    "(liaf_hf.data.images.to_rgb does), or pass it as an array with the do_rescale it needs."
                )
            if isinstance(image, (np.ndarray, torch.Tensor)) and image.ndim not in (2, 3):
                raise ValueError(f"images[{index}] must be 2-D or 3-D, got shape {tuple(image.shape)}.")
            value_range = _float_range(image)
            unit_range = value_range is not None and value_range[0] >= 0.0 and value_range[1] <= 1.0
            if value_range is not None and bool(kwargs.get("do_rescale")) == unit_range:
                _warn_about_scale(index, value_range, bool(kwargs.get("do_rescale")))
            try:
                if value_range is not None and kwargs.get("do_rescale") and not unit_range and _has_alpha(image):
                    tensor = self._process_unscaled_rgba(image, **kwargs)
                else:
                    tensor = self.process_image(image, **kwargs)
            except ValueError as error:
                raise ValueError(f"images[{index}] (shape {tuple(np.shape(image))}): {error}") from error
            if tensor.shape[0] != 3:
                raise ValueError(
                    f"images[{index}] must have 1, 3 or 4 channels (grey, RGB or RGBA), got shape "
                    f"{tuple(np.shape(image))}."
                )
            prepared.append(tensor)
        return prepared

    def _process_unscaled_rgba(self, image, *, rescale_factor: float, **kwargs) -> torch.Tensor:
        """An RGBA float image in rescale units (e.g. 0..255): composited over white at its own scale, since
        transformers' RGBA conversion takes float images only in [0, 1]."""
        unit = self.process_image(image * rescale_factor, rescale_factor=rescale_factor, **kwargs)
        return unit / rescale_factor

    def preprocess(self, images, annotations: dict | Sequence[dict] | None = None, **kwargs) -> BatchFeature:
        """Prepare a batch.

        Args:
            images: one image or a list (PIL, numpy (H, W, C) or (C, H, W), or tensor (C, H, W); C 1, 3 or 4).
            annotations: per image, a COCO detection dict `{"image_id": int, "annotations": [{"bbox": [x, y, w,
                h] (absolute pixels of the original image), "category_id": contiguous class index, "iscrowd": 0
                or 1, "area": optional}, ...]}`. Crowd boxes become `ignore_boxes`.
            **kwargs: any preprocessing argument of the constructor, for this call only, and `return_tensors`.

        Returns:
            `pixel_values` (B, 3, H, W) and `pixel_mask` (B, H, W) when padding, and with annotations `labels`:
            per image `class_labels` (n,), `boxes` (n, 4) normalised cxcywh relative to the image's resized,
            unpadded size, `ignore_boxes` (k, 4) same units, `area` (n,) in resized pixels, `iscrowd` (n,)
            zeros, `image_id`, and `orig_size` and `size` (the resized, unpadded size) as (height, width).
        """
        return super().preprocess(images, annotations, **kwargs)

    def _standardize_kwargs(self, **kwargs) -> dict:
        kwargs = super()._standardize_kwargs(**kwargs)
        self._check_size(kwargs.get("size"), "size")
        pad_size = kwargs.get("pad_size")
        if pad_size is not None and not (pad_size.height and pad_size.width):
            raise ValueError(f"pad_size must have 'height' and 'width', got {dict(pad_size)}.")
        return kwargs

    def _preprocess(
        self,
        images: list[torch.Tensor],
        annotations: dict | Sequence[dict] | None,
        *,
        do_resize: bool,
        size: SizeDict,
        resample,
        do_rescale: bool,
        rescale_factor: float,
        do_normalize: bool,
        image_mean,
        image_std,
        do_pad: bool,
        pad_size: SizeDict | None,
        pad_size_divisor: int | None = None,
        format: str | AnnotationFormat | None = None,
        return_tensors: str | None = None,
        **kwargs,
    ) -> BatchFeature:
        if annotations is not None:
            annotations = [annotations] if isinstance(annotations, Mapping) else list(annotations)
            if len(annotations) != len(images):
                raise ValueError(f"Got {len(images)} images but {len(annotations)} annotation dicts.")
            if AnnotationFormat(format or AnnotationFormat.COCO_DETECTION) != AnnotationFormat.COCO_DETECTION:
                raise ValueError(f"format {format!r} is not supported: GFLImageProcessor reads 'coco_detection'.")

        pixel_values, labels = [], []
        for index, image in enumerate(images):
            orig_height, orig_width = image.shape[-2:]
            if do_resize:
                image = self.resize(image, size, resample=resample)
            image = self.rescale_and_normalize(image, do_rescale, rescale_factor, do_normalize, image_mean, image_std)
            pixel_values.append(image)
            if annotations is not None:
                labels.append(
                    self._annotation_to_labels(
                        annotations[index], index, (orig_height, orig_width), tuple(image.shape[-2:])
                    )
                )

        if do_pad:
            batch = self.pad(pixel_values, pad_size=pad_size, pad_size_divisor=pad_size_divisor)
        else:
            batch = BatchFeature(data={"pixel_values": pixel_values})
        if return_tensors == "np":
            batch = BatchFeature(
                data={
                    k: [v.numpy() for v in value] if isinstance(value, list) else value.numpy()
                    for k, value in batch.items()
                }
            )
            labels = [{k: v.numpy() for k, v in label.items()} for label in labels]
        if annotations is not None:
            batch["labels"] = labels
        return batch

    def _annotation_to_labels(
        self, annotation: Mapping, index: int, orig_size: tuple[int, int], size: tuple[int, int]
    ) -> dict[str, torch.Tensor]:
        if not isinstance(annotation, Mapping) or "annotations" not in annotation:
            keys = sorted(annotation) if isinstance(annotation, Mapping) else type(annotation).__name__
            raise ValueError(
                f"annotations[{index}] must be a dict with 'image_id' and 'annotations' (COCO detection format); "
                f"got {keys}."
            )
        height, width = orig_size
        area_scale = (size[0] / height) * (size[1] / width)
        class_labels, boxes, areas, ignore_boxes = [], [], [], []
        for object_index, obj in enumerate(annotation["annotations"]):
            where = f"annotations[{index}] (image_id {annotation.get('image_id')}) object {object_index}"
            bbox = obj.get("bbox")
            if bbox is None or len(bbox) != 4 or not all(np.isfinite(float(v)) for v in bbox):
                raise ValueError(f"{where}: bbox must be 4 finite numbers [x, y, w, h], got {bbox}.")
            x, y, w, h = (float(v) for v in bbox)
            # Normalised by the original size, which is the same as by the resized, unpadded size.
            box = [(x + w / 2) / width, (y + h / 2) / height, w / width, h / height]
            if obj.get("iscrowd", 0):
                ignore_boxes.append(box)
                continue
            if "category_id" not in obj:
                raise ValueError(f"{where} has no category_id.")
            class_labels.append(int(obj["category_id"]))
            boxes.append(box)
            areas.append(float(obj.get("area", w * h)) * area_scale)
        return {
            "class_labels": torch.tensor(class_labels, dtype=torch.long),
            "boxes": torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
            "ignore_boxes": torch.tensor(ignore_boxes, dtype=torch.float32).reshape(-1, 4),
            "area": torch.tensor(areas, dtype=torch.float32),
            "iscrowd": torch.zeros(len(class_labels), dtype=torch.long),
            "image_id": torch.tensor(int(annotation.get("image_id", index))),
            "orig_size": torch.tensor([height, width]),
            "size": torch.tensor(list(size)),
        }

    def pad(
        self,
        pixel_values: Sequence[torch.Tensor],
        *,
        pad_size: SizeDict | dict | None = None,
        pad_size_divisor: int | None = None,
        **kwargs,
    ) -> BatchFeature:
        """Pad (3, H_i, W_i) images at the bottom and right to one size: `pad_size`, or the largest image
        rounded up to a multiple of `pad_size_divisor` (both default to the processor's own).

        Returns `pixel_values` (B, 3, H, W) and `pixel_mask` (B, H, W), 1 on real pixels.
        """
        pad_size = self.pad_size if pad_size is None else pad_size
        if pad_size is not None:
            pad_size = pad_size if isinstance(pad_size, SizeDict) else SizeDict(**pad_size)
            height, width = pad_size.height, pad_size.width
            for index, tensor in enumerate(pixel_values):
                if tensor.shape[-2] > height or tensor.shape[-1] > width:
                    raise ValueError(
                        f"images[{index}] is {tensor.shape[-2]}x{tensor.shape[-1]} after resizing, larger than "
                        f"pad_size {height}x{width}: resize it to fit (e.g. size={{'max_height': {height}, "
                        f"'max_width': {width}}}) or pad to a larger size."
                    )
        else:
            divisor = pad_size_divisor or self.pad_size_divisor
            height = -(-max(t.shape[-2] for t in pixel_values) // divisor) * divisor
            width = -(-max(t.shape[-1] for t in pixel_values) // divisor) * divisor
        batch = pixel_values[0].new_zeros((len(pixel_values), 3, height, width))
        mask = torch.zeros((len(pixel_values), height, width), dtype=torch.long, device=batch.device)
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
            outputs: a `GFLObjectDetectionOutput`, or any object or mapping with `logits` (B, A, C) and
                `pred_boxes` (B, A, 4) normalised cxcywh (e.g. the plain dataclass of transformers'
                object-detection example).
            threshold: minimum score; defaults to `self.score_threshold`.
            target_sizes: (B, 2) original (height, width) per image; boxes are scaled to it. Without it
                boxes stay normalised.

        Returns:
            One dict per image with `scores` (n,), `labels` (n,) and `boxes` (n, 4) xyxy in absolute pixels
            of the target size, highest score first.
        """
        threshold = self.score_threshold if threshold is None else threshold
        logits = torch.as_tensor(_output_field(outputs, "logits"))
        pred_boxes = torch.as_tensor(_output_field(outputs, "pred_boxes"))
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
