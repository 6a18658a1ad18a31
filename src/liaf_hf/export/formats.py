"""Tracing a `DetectionGraph` with `torch.export` and converting it to ONNX.

Both formats come from one `torch.export` trace: `torch.onnx.export(..., dynamo=True)` accepts the
`ExportedProgram` itself, so the `.pt2` and the `.onnx` file hold the same graph. Batch size, height and width
are dynamic. Failures inside either exporter are raised as `ExportError` naming the model, the format and, when
the exporter's message names one, the operator.
"""

from __future__ import annotations

import contextlib
import os
import re
from pathlib import Path

import torch
import torch.fx.experimental._config as fx_config

from ..errors import LiafError
from .dependencies import require
from .graph import INPUT_NAMES, DetectionGraph

#: The ONNX opset the files use (18 is the lowest the dynamo exporter's operator library targets).
ONNX_OPSET = 18

#: What each format is called on the command line and the files it writes.
FORMATS = ("onnx", "torch_export")

#: Input sizes the traced graph accepts (the dynamic dimensions' ranges).
MAX_BATCH_SIZE = 1024
MIN_IMAGE_SIZE, MAX_IMAGE_SIZE = 32, 8192

# Operator names as exporters print them: `target=torch.ops.aten.remainder.Scalar`, `torchvision::nms`.
_ANSI_CODES = re.compile(r"\x1b\[[0-9;]*m")
_OPERATOR_HINTS = (re.compile(r"target=(torch\.ops\.[\w.]+)"), re.compile(r"\b(\w+::\w+(?:\.\w+)?)"))


class ExportError(LiafError):
    """An exporter failed on the model: the message names the model, the format and, when known, the operator.

    Attributes:
        operator: the operator the exporter could not handle, or None when its message names none.
    """

    def __init__(self, message: str, *, operator: str | None = None) -> None:
        super().__init__(message)
        self.operator = operator


def failing_operator(error: BaseException) -> str | None:
    """The operator an exporter's error (or an error it wraps) names, e.g. `aten.remainder.Scalar`."""
    seen = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        text = str(error)
        for pattern in _OPERATOR_HINTS:
            match = pattern.search(text)
            if match:
                return match.group(1).removeprefix("torch.ops.")
        error = error.__cause__ or error.__context__
    return None


@contextlib.contextmanager
def _exporting(model_name: str, format_name: str):
    """Turn an exporter's failure into an `ExportError` naming the model, the format and the operator."""
    try:
        yield
    except LiafError:
        raise
    except Exception as error:  # the exporters raise many types; each becomes one clear error
        operator = failing_operator(error)
        text = _ANSI_CODES.sub("", str(error)).split(" Next steps:")[0]
        first_line = next((line for line in text.splitlines() if line.strip()), type(error).__name__)
        where = f" at operator {operator}" if operator else ""
        raise ExportError(
            f"Exporting {model_name} to {format_name} failed{where}: {type(error).__name__}: {first_line}",
            operator=operator,
        ) from error


def example_inputs(*, batch_size: int = 2, height: int = 64, width: int = 96) -> tuple[torch.Tensor, torch.Tensor]:
    """Inputs to trace with: (B, 3, H, W) float32 pixels and a (B, H, W) int64 mask whose last image is padded
    on the right, so the trace cannot take the mask for all ones."""
    generator = torch.Generator().manual_seed(0)
    pixel_values = torch.randn(batch_size, 3, height, width, generator=generator)
    pixel_mask = torch.ones(batch_size, height, width, dtype=torch.long)
    pixel_mask[-1, :, width - width // 4 :] = 0
    return pixel_values, pixel_mask


def trace(graph: DetectionGraph, *, model_name: str, format_name: str = "torch_export") -> torch.export.ExportedProgram:
    """`torch.export` of `graph` with a dynamic batch size, height and width.

    Raises:
        ExportError: `torch.export` failed (the message names `model_name`, `format_name`, the format the trace is
            for, and the operator when known).
    """
    batch = torch.export.Dim("batch", min=1, max=MAX_BATCH_SIZE)
    height = torch.export.Dim("height", min=MIN_IMAGE_SIZE, max=MAX_IMAGE_SIZE)
    width = torch.export.Dim("width", min=MIN_IMAGE_SIZE, max=MAX_IMAGE_SIZE)
    dynamic_shapes = {"pixel_values": {0: batch, 2: height, 3: width}, "pixel_mask": {0: batch, 1: height, 2: width}}
    # Size-oblivious reasoning: without it the tracer specialises on whether the coarsest FPN level is one cell
    # wide (contiguity checks of size-1 dimensions), and the graph would accept only images of one size class.
    with _exporting(model_name, format_name), fx_config.patch(backed_size_oblivious=True), torch.no_grad():
        return torch.export.export(graph, example_inputs(), dynamic_shapes=dynamic_shapes, strict=False)


def save_program(program: torch.export.ExportedProgram, path: str | os.PathLike) -> Path:
    """Write the program as a `.pt2` file (`torch.export.save`); load it with `torch.export.load`."""
    torch.export.save(program, str(path))
    return Path(path)


def save_onnx(
    program: torch.export.ExportedProgram, path: str | os.PathLike, *, output_names: tuple[str, ...], model_name: str
) -> Path:
    """Convert the traced program to ONNX (opset `ONNX_OPSET`) with PyTorch's dynamo exporter and write it.

    The dynamic dimensions are named `batch`, `height` and `width` in the file (with `anchors` and
    `detections` where the graph has them), as runtimes show them.

    Raises:
        ExportError: the conversion failed (the message names `model_name` and the operator when known).
    """
    require("onnxscript")
    onnx = require("onnx")
    with _exporting(model_name, "onnx"):
        exported = torch.onnx.export(
            program,
            example_inputs(),
            dynamo=True,
            opset_version=ONNX_OPSET,
            input_names=list(INPUT_NAMES),
            output_names=list(output_names),
            verbose=False,
        )
        exported.save(str(path))
    proto = onnx.load(str(path))
    _name_dynamic_dimensions(proto)
    onnx.save(proto, str(path))
    return Path(path)


def _name_dynamic_dimensions(proto) -> None:
    """Rename the exporter's symbols (`s52`, ...) in the file's inputs and outputs after the input dimension they
    stand for; symbols derived from them (the anchor count) become `anchors`."""
    names = {}
    for value in proto.graph.input:
        dims = value.type.tensor_type.shape.dim
        axes = {"pixel_values": (0, 2, 3), "pixel_mask": (0, 1, 2)}[value.name]
        for axis, label in zip(axes, ("batch", "height", "width")):
            if dims[axis].dim_param:
                names[dims[axis].dim_param] = label
    for value in list(proto.graph.input) + list(proto.graph.output):
        for dim in value.type.tensor_type.shape.dim:
            if dim.dim_param:
                dim.dim_param = names.get(dim.dim_param, "anchors")


__all__ = [
    "FORMATS",
    "ONNX_OPSET",
    "ExportError",
    "example_inputs",
    "failing_operator",
    "save_onnx",
    "save_program",
    "trace",
]
