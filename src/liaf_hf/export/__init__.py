"""Deploying a GFL detector: ONNX (float32 and INT8) and `torch.export` files with the post-processing inside,
checked against the PyTorch model, and runners for them.

    >>> from liaf_hf.export import export_detector, OnnxDetector  # doctest: +SKIP
    >>> export_detector("runs/student-liaf", "exported", formats=["onnx", "torch_export"])  # doctest: +SKIP
    >>> detections = OnnxDetector("exported/model.onnx")([image])  # doctest: +SKIP

The ONNX parts need the `export` extra (`pip install "liaf-hf[export]"`: onnx, onnxruntime, onnxscript);
this package imports without it and names the extra when a function needs it.
"""

from __future__ import annotations

import importlib
from typing import Any

from .formats import FORMATS, ExportError
from .graph import DetectionGraph

_LAZY = {
    "export_detector": "exporter",
    "export_loaded": "exporter",
    "OnnxDetector": "runner",
    "ProgramDetector": "runner",
    "quantize_int8": "quantize",
    "check_parity": "parity",
    "compare_detections": "parity",
    "evaluate_ap": "parity",
    "ParityReport": "parity",
}

__all__ = ["FORMATS", "DetectionGraph", "ExportError", *sorted(_LAZY)]


def __getattr__(name: str) -> Any:
    # Loaded on first use: the exporter, runners and quantization pull in pycocotools, datasets and onnxruntime.
    if name in _LAZY:
        return getattr(importlib.import_module(f"{__name__}.{_LAZY[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
