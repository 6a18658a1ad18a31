"""INT8 ONNX models by onnxruntime's static quantization, calibrated on a set of images.

The convolutions (backbone, FPN, head: all but a sliver of the arithmetic) are quantized in QDQ format, weights
per output channel to int8 and activations per tensor to uint8 (the pairing onnxruntime's x86 kernels run
fastest), with ranges from the calibration images (min-max). Everything after the head stays float32: the
softmax over box-edge distributions and their expectation, the box decoding, the score threshold, top-k and
NMS. Rounding boxes or scores to 8 bits before NMS and the threshold would move detections for no speed, and
onnxruntime has no integer NMS. So the INT8 file keeps the post-processing inside, as the float32 one does.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np
from PIL import Image

from ..errors import DataError
from ..models.gfl.image_processing_gfl import GFLImageProcessor
from .dependencies import require

logger = logging.getLogger(__name__)

#: The ONNX operators whose inputs and weights become int8.
QUANTIZED_OPERATORS = ("Conv",)


def calibration_reader(images: Iterable[Image.Image], processor: GFLImageProcessor):
    """An onnxruntime `CalibrationDataReader` giving the graph's inputs for each image, one image per batch
    (the processor's `pixel_values` (1, 3, H, W) float32 and `pixel_mask` (1, H, W) int64, numpy), so that images
    of different sizes calibrate at their own size."""
    quantization = require("onnxruntime.quantization")

    class ProcessorCalibrationReader(quantization.CalibrationDataReader):
        def __init__(self) -> None:
            self._images: Iterator[Image.Image] = iter(images)
            self.count = 0

        def get_next(self) -> dict[str, np.ndarray] | None:
            image = next(self._images, None)
            if image is None:
                return None
            self.count += 1
            batch = processor(images=[image], return_tensors="pt")
            return {"pixel_values": batch["pixel_values"].numpy(), "pixel_mask": batch["pixel_mask"].numpy()}

    return ProcessorCalibrationReader()


def quantize_int8(
    float_model: str | os.PathLike,
    int8_model: str | os.PathLike,
    *,
    calibration_images: list[Image.Image],
    processor: GFLImageProcessor,
) -> Path:
    """Write an INT8 copy of the float32 ONNX detector `float_model` to `int8_model` (see the module docstring).

    Args:
        float_model: an ONNX file from `save_onnx` (with or without post-processing).
        int8_model: where the quantized model goes.
        calibration_images: RGB images like those the model will see (a few hundred is plenty for min-max).
        processor: the detector's image processor, which prepares them as the graph expects.

    Raises:
        DataError: `calibration_images` is empty.
    """
    if not calibration_images:
        raise DataError("INT8 calibration needs at least one image; the calibration set holds none.")
    quantization = require("onnxruntime.quantization")
    reader = calibration_reader(calibration_images, processor)
    quantization.quantize_static(
        str(float_model),
        str(int8_model),
        reader,
        quant_format=quantization.QuantFormat.QDQ,
        op_types_to_quantize=list(QUANTIZED_OPERATORS),
        per_channel=True,
        activation_type=quantization.QuantType.QUInt8,
        weight_type=quantization.QuantType.QInt8,
        calibrate_method=quantization.CalibrationMethod.MinMax,
    )
    logger.info("Quantized %s to INT8 with %d calibration images -> %s", float_model, reader.count, int8_model)
    return Path(int8_model)


__all__ = ["QUANTIZED_OPERATORS", "calibration_reader", "quantize_int8"]
