"""Running an exported detector on images: `OnnxDetector` (an `.onnx` file on onnxruntime) and
`ProgramDetector` (a `.pt2` file from `torch.export`), both with the detections of
`GFLImageProcessor.post_process_object_detection`: boxes xyxy in pixels of each original image.

Either takes PIL images (or (H, W, 3) arrays), which the saved image processor resizes, normalises and pads,
or the processor's tensors directly (`run`). Inputs the graph cannot take (not 3 channels, not 4-D) are refused
with a message saying what it expects.
"""

from __future__ import annotations

import abc
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from ..errors import LiafError
from ..hub.saved_folder import PROCESSOR_CONFIG_NAME
from ..models.gfl.image_processing_gfl import GFLImageProcessor
from .dependencies import require
from .graph import DETECTION_OUTPUT_NAMES, INPUT_NAMES

#: What the graphs take, as the error messages and the exported README say it.
EXPECTED_INPUT = (
    "pixel_values: float32 (batch, 3, height, width), RGB, resized, scaled to [0, 1] and normalised with the "
    "image processor's image_mean and image_std, padded at the bottom and right; pixel_mask: int64 "
    "(batch, height, width), 1 on image pixels, 0 on padding"
)


class ExportedDetector(abc.ABC):
    """What both runners share: preparing images with the processor and scaling the graph's detections back to
    each original image. Subclasses implement `run`."""

    def __init__(self, path: str | os.PathLike, processor: GFLImageProcessor | None = None) -> None:
        self.path = Path(path)
        if not self.path.is_file():
            raise LiafError(f"{self.path} does not exist.")
        if processor is None:
            config = self.path.parent / PROCESSOR_CONFIG_NAME
            if not config.is_file():
                raise LiafError(
                    f"{self.path.parent} has no {PROCESSOR_CONFIG_NAME}: pass the image processor the graph was "
                    "exported with."
                )
            processor = GFLImageProcessor.from_pretrained(str(self.path.parent))
        self.processor = processor

    @abc.abstractmethod
    def run(self, pixel_values: Any, pixel_mask: Any = None) -> dict[str, np.ndarray]:
        """The graph's outputs by name for prepared inputs (tensors or arrays; `pixel_mask` all ones when
        omitted). Raises `LiafError` for inputs of the wrong rank, channel count or batch size."""

    def detect(self, images: Sequence[Image.Image | np.ndarray]) -> list[dict[str, torch.Tensor]]:
        """Detections for a batch of images of any sizes: per image `scores` (n,), `labels` (n,) int64 and `boxes`
        (n, 4) xyxy in pixels of that image, highest score first, as `post_process_object_detection` gives them
        with `target_sizes` the original sizes."""
        for index, image in enumerate(images):
            _check_image(image, index)
        batch = self.processor(images=list(images), return_tensors="pt")
        outputs = self.run(batch["pixel_values"], batch["pixel_mask"])
        valid = torch.stack([batch["pixel_mask"][:, :, 0].sum(1), batch["pixel_mask"][:, 0, :].sum(1)], 1).float()
        detections = []
        for index, image in enumerate(images):
            height, width = _image_size(image)
            count = int(outputs["num_detections"][index])
            scale = torch.tensor([width, height, width, height], dtype=torch.float32) / valid[index].flip(0).repeat(2)
            detections.append(
                {
                    "scores": torch.from_numpy(np.asarray(outputs["scores"][index, :count])),
                    "labels": torch.from_numpy(np.asarray(outputs["labels"][index, :count])),
                    "boxes": torch.from_numpy(np.asarray(outputs["boxes"][index, :count])) * scale,
                }
            )
        return detections

    __call__ = detect

    @staticmethod
    def _checked_inputs(pixel_values: Any, pixel_mask: Any) -> tuple[np.ndarray, np.ndarray]:
        pixel_values = np.ascontiguousarray(_numpy(pixel_values), dtype=np.float32)
        if pixel_values.ndim != 4 or pixel_values.shape[1] != 3:
            raise LiafError(
                f"pixel_values has shape {tuple(pixel_values.shape)}; the exported graph expects {EXPECTED_INPUT}."
            )
        if pixel_mask is None:
            pixel_mask = np.ones((pixel_values.shape[0], *pixel_values.shape[2:]), dtype=np.int64)
        pixel_mask = np.ascontiguousarray(_numpy(pixel_mask), dtype=np.int64)
        if pixel_mask.shape != (pixel_values.shape[0], *pixel_values.shape[2:]):
            raise LiafError(
                f"pixel_mask has shape {tuple(pixel_mask.shape)} for pixel_values of shape "
                f"{tuple(pixel_values.shape)}; the exported graph expects {EXPECTED_INPUT}."
            )
        return pixel_values, pixel_mask


class OnnxDetector(ExportedDetector):
    """An exported `.onnx` detector (with post-processing) on onnxruntime.

    Args:
        path: the `.onnx` file (float32 or INT8).
        processor: its image processor; by default the `preprocessor_config.json` beside the file.
        threads: onnxruntime's intra-op threads (None: its default, every core).

    Example:
        >>> detector = OnnxDetector("exported/model.onnx")  # doctest: +SKIP
        >>> [found] = detector([Image.open("street.jpg").convert("RGB")])  # doctest: +SKIP
        >>> found["boxes"].shape  # doctest: +SKIP
        torch.Size([4, 4])
    """

    def __init__(
        self, path: str | os.PathLike, processor: GFLImageProcessor | None = None, *, threads: int | None = None
    ) -> None:
        super().__init__(path, processor)
        onnxruntime = require("onnxruntime")
        options = onnxruntime.SessionOptions()
        if threads is not None:
            options.intra_op_num_threads = threads
            options.inter_op_num_threads = 1
        self.session = onnxruntime.InferenceSession(str(self.path), options, providers=["CPUExecutionProvider"])
        self.output_names = [output.name for output in self.session.get_outputs()]
        if tuple(self.output_names) != DETECTION_OUTPUT_NAMES:
            raise LiafError(
                f"{self.path} returns {self.output_names}, not detections {list(DETECTION_OUTPUT_NAMES)}: it is the "
                "variant without post-processing; run it with onnxruntime directly."
            )

    def run(self, pixel_values: Any, pixel_mask: Any = None) -> dict[str, np.ndarray]:
        pixel_values, pixel_mask = self._checked_inputs(pixel_values, pixel_mask)
        outputs = self.session.run(self.output_names, dict(zip(INPUT_NAMES, (pixel_values, pixel_mask))))
        return dict(zip(self.output_names, outputs))


class ProgramDetector(ExportedDetector):
    """An exported `.pt2` detector (`torch.export.save`), run by PyTorch without the model's Python code."""

    def __init__(self, path: str | os.PathLike, processor: GFLImageProcessor | None = None) -> None:
        super().__init__(path, processor)
        self.module = torch.export.load(str(self.path)).module()

    @torch.no_grad()
    def run(self, pixel_values: Any, pixel_mask: Any = None) -> dict[str, np.ndarray]:
        pixel_values, pixel_mask = self._checked_inputs(pixel_values, pixel_mask)
        outputs = self.module(torch.from_numpy(pixel_values), torch.from_numpy(pixel_mask))
        return {name: output.numpy() for name, output in zip(DETECTION_OUTPUT_NAMES, outputs)}


def _numpy(value: Any) -> np.ndarray:
    return value.detach().cpu().numpy() if isinstance(value, torch.Tensor) else np.asarray(value)


def _image_size(image: Image.Image | np.ndarray) -> tuple[int, int]:
    """(height, width) of a PIL image or an (H, W, C) array."""
    if isinstance(image, Image.Image):
        return image.height, image.width
    return tuple(np.asarray(image).shape[:2])


def _check_image(image: Any, index: int) -> None:
    """Refuse an image the graph cannot take, before the processor fails less clearly."""
    if isinstance(image, Image.Image):
        return  # the processor converts every PIL mode to RGB
    shape = tuple(np.asarray(image).shape)
    if len(shape) != 3 or shape[2] != 3:
        raise LiafError(
            f"images[{index}] has shape {shape}; pass PIL images or (height, width, 3) RGB arrays (the exported "
            f"graph expects {EXPECTED_INPUT})."
        )


__all__ = ["EXPECTED_INPUT", "ExportedDetector", "OnnxDetector", "ProgramDetector"]
