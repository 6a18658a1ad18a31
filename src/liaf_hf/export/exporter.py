"""`export_detector`: a saved GFL detector to deployable files, checked against PyTorch, in one folder.

The output folder holds, depending on the formats asked for:

- `model.onnx`: float32 ONNX with the post-processing inside (detections in input pixels);
- `model_raw.onnx`: float32 ONNX without it (every anchor's scores and box), for runtimes with their own NMS;
- `model_int8.onnx`: `model.onnx` with its convolutions quantized to INT8 (see `liaf_hf.export.quantize`);
- `model.pt2`: the same graph as `model.onnx` as a `torch.export` ExportedProgram;
- `preprocessor_config.json` (the image processor, with the post-processing settings the graphs hold),
  `README.md` (inputs, outputs, files, checks) and `export_summary.json` (files, parity, AP).

It is written into a temporary folder beside the output and renamed at the end, so a failed export leaves
nothing behind; an output folder that already holds files is refused unless `overwrite=True`.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import datasets
import numpy as np
import torch
from PIL import Image

from .. import __version__
from ..data.images import read_image, undecoded_images
from ..errors import DataError, LiafError
from ..hub.saved_folder import PROCESSOR_CONFIG_NAME
from ..inference import load_detector
from ..models.gfl.image_processing_gfl import GFLImageProcessor
from ..models.gfl.modeling_gfl import GFLForObjectDetection
from .formats import FORMATS, ONNX_OPSET, ExportError, save_onnx, save_program, trace
from .graph import DETECTION_OUTPUT_NAMES, RAW_OUTPUT_NAMES, DetectionGraph
from .parity import ParityReport, check_parity, evaluate_ap, pytorch_detector

logger = logging.getLogger(__name__)

SUMMARY_NAME = "export_summary.json"
README_NAME = "README.md"
ONNX_FILE, RAW_ONNX_FILE, INT8_ONNX_FILE, PROGRAM_FILE = "model.onnx", "model_raw.onnx", "model_int8.onnx", "model.pt2"


def check_formats(formats: Sequence[str], *, int8: bool) -> list[str]:
    """The formats to write, `onnx` first; INT8 needs the float32 ONNX file, so it adds `onnx`.

    Raises:
        LiafError: a format name that does not exist, or none at all.
    """
    unknown = [name for name in formats if name not in FORMATS]
    if unknown:
        raise LiafError(f"Unknown export format(s) {unknown}: choose from {list(FORMATS)}.")
    chosen = set(formats) | ({"onnx"} if int8 else set())
    if not chosen:
        raise LiafError(f"No export format given: choose from {list(FORMATS)}.")
    return [name for name in FORMATS if name in chosen]


def check_output_dir(output_dir: str | os.PathLike, *, overwrite: bool) -> Path:
    """Refuse an output folder that already holds files (unless `overwrite`) or is a file."""
    output_dir = Path(output_dir)
    if output_dir.exists() and not output_dir.is_dir():
        raise LiafError(f"{output_dir} exists and is not a folder.")
    if output_dir.is_dir() and any(output_dir.iterdir()) and not overwrite:
        raise LiafError(f"{output_dir} already holds files; choose an empty folder or pass overwrite (--overwrite).")
    return output_dir


def generated_images(count: int, *, seed: int = 0) -> list[Image.Image]:
    """`count` scenes of the generated `easy` set (128 px shapes), for parity checks when no data is given."""
    from ..data.synthetic import SyntheticSpec, generate_scene

    rng = np.random.default_rng(seed)
    return [generate_scene(rng, SyntheticSpec())[0] for _ in range(count)]


def load_images(dataset: datasets.Dataset, limit: int | None = None) -> list[Image.Image]:
    """The first `limit` images of a detection dataset (all without a limit), read as every liaf-hf path
    reads them (`liaf_hf.data.images.read_image`: upright, 8-bit RGB, a `DataError` naming the file)."""
    rows = dataset if limit is None else dataset.select(range(min(limit, len(dataset))))
    return [read_image(value) for value in undecoded_images(rows)["image"]]


def export_detector(
    model_dir: str | os.PathLike,
    output_dir: str | os.PathLike,
    *,
    formats: Sequence[str] = ("onnx",),
    int8: bool = False,
    calibration_images: Sequence[Image.Image] | None = None,
    parity_images: Sequence[Image.Image] | None = None,
    evaluation_set: datasets.Dataset | None = None,
    score_threshold: float | None = None,
    overwrite: bool = False,
) -> dict[str, Any]:
    """Export the saved detector in `model_dir` to `output_dir` (see the module docstring) and check it.

    Args:
        model_dir: a saved GFL detector (`check_saved_detector`).
        output_dir: the folder to write; must not hold files unless `overwrite`.
        formats: any of `FORMATS` ("onnx", "torch_export").
        int8: also write `model_int8.onnx`, calibrated on `calibration_images`.
        calibration_images: RGB images for the INT8 calibration (required with `int8`).
        parity_images: images on which every float32 file must give the PyTorch model's detections (scores
            within 1e-4, boxes within 1e-2 px); by default 8 generated scenes.
        evaluation_set: a detection dataset on which the AP of the PyTorch model and of each file is measured
            (pycocotools); None skips it.
        score_threshold: the graphs' score threshold; by default the saved processor's.
        overwrite: replace an `output_dir` that holds files.

    Returns:
        The summary also written as `export_summary.json`: files, parity reports, AP per format.

    Raises:
        LiafError: `model_dir` is not a GFL detector, a format does not exist, the output folder holds files.
        DataError: `int8` without calibration images.
        ExportError: an exporter failed (naming the model, the format and the operator) or a float32 file's
            detections differ from PyTorch's.
    """
    formats = check_formats(formats, int8=int8)
    if int8 and not calibration_images:
        raise DataError("INT8 export needs calibration images, and the calibration set holds none.")
    output_dir = check_output_dir(output_dir, overwrite=overwrite)
    model, processor = load_detector(model_dir)
    return export_loaded(
        model,
        processor,
        output_dir,
        model_name=str(model_dir),
        formats=formats,
        int8=int8,
        calibration_images=calibration_images,
        parity_images=parity_images,
        evaluation_set=evaluation_set,
        score_threshold=score_threshold,
        overwrite=overwrite,
    )


def export_loaded(
    model: GFLForObjectDetection,
    processor: GFLImageProcessor,
    output_dir: str | os.PathLike,
    *,
    model_name: str,
    formats: Sequence[str] = ("onnx",),
    int8: bool = False,
    calibration_images: Sequence[Image.Image] | None = None,
    parity_images: Sequence[Image.Image] | None = None,
    evaluation_set: datasets.Dataset | None = None,
    score_threshold: float | None = None,
    overwrite: bool = False,
) -> dict[str, Any]:
    """`export_detector` of a model already in memory (`model_name` names it in messages and the summary)."""
    formats = check_formats(formats, int8=int8)
    if int8 and not calibration_images:
        raise DataError("INT8 export needs calibration images, and the calibration set holds none.")
    output_dir = check_output_dir(output_dir, overwrite=overwrite)
    model = model.eval().cpu()
    processor = GFLImageProcessor.from_dict(processor.to_dict())  # a copy: the saved one records the graph's threshold
    if score_threshold is not None:
        processor.score_threshold = float(score_threshold)
    parity_images = list(parity_images) if parity_images is not None else generated_images(8)

    output_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{output_dir.name}.", suffix=".partial", dir=output_dir.parent))
    try:
        summary = _write_export(
            model,
            processor,
            staging,
            model_name=model_name,
            formats=formats,
            int8=int8,
            calibration_images=list(calibration_images or []),
            parity_images=parity_images,
            evaluation_set=evaluation_set,
        )
        if output_dir.exists():
            shutil.rmtree(output_dir)
        os.replace(staging, output_dir)
    finally:
        if staging.exists():
            shutil.rmtree(staging)
    logger.info("Exported %s to %s: %s", model_name, output_dir, ", ".join(summary["files"]))
    return summary


def _write_export(
    model: GFLForObjectDetection,
    processor: GFLImageProcessor,
    folder: Path,
    *,
    model_name: str,
    formats: list[str],
    int8: bool,
    calibration_images: list[Image.Image],
    parity_images: list[Image.Image],
    evaluation_set: datasets.Dataset | None,
) -> dict[str, Any]:
    graph = DetectionGraph.for_processor(model, processor)
    files = _write_files(
        graph,
        model,
        processor,
        folder,
        model_name=model_name,
        formats=formats,
        int8=int8,
        calibration=calibration_images,
    )
    processor.save_pretrained(str(folder))
    reference = pytorch_detector(model, processor, threshold=processor.score_threshold)
    runners = _runners(folder, processor, formats=formats, int8=int8)
    parity = _checked_parity(reference, runners, parity_images, model_name=model_name)
    if "onnx" in formats:
        parity["onnx_raw"] = _raw_parity(graph.model, processor, folder / RAW_ONNX_FILE, parity_images)

    evaluation: dict[str, dict[str, float]] = {}
    if evaluation_set is not None:
        for name, detector in {"pytorch": reference, **runners}.items():
            metrics = evaluate_ap(detector, evaluation_set)
            evaluation[name] = {key: metrics[key] for key in ("AP", "AP50", "AP75")}
            logger.info("AP of %s on %d images: %.4f", name, len(evaluation_set), metrics["AP"])

    summary = {
        "model": model_name,
        "liaf_hf_version": __version__,
        "torch_version": torch.__version__,
        "onnx_opset": ONNX_OPSET if "onnx" in formats else None,
        "formats": formats,
        "int8": int8,
        "calibration_images": len(calibration_images) if int8 else 0,
        "files": files,
        "post_processing": {
            "score_threshold": processor.score_threshold,
            "nms_iou_threshold": processor.nms_iou_threshold,
            "pre_nms_top_k": processor.pre_nms_top_k,
            "max_detections": processor.max_detections,
        },
        "parity": parity,
        "evaluation_images": len(evaluation_set) if evaluation_set is not None else 0,
        "evaluation": evaluation,
    }
    (folder / SUMMARY_NAME).write_text(json.dumps(summary, indent=2))
    (folder / README_NAME).write_text(export_readme(summary, processor))
    return summary


def _write_files(
    graph: DetectionGraph,
    model: GFLForObjectDetection,
    processor: GFLImageProcessor,
    folder: Path,
    *,
    model_name: str,
    formats: list[str],
    int8: bool,
    calibration: list[Image.Image],
) -> dict[str, str]:
    """Trace `graph` and write each asked format's file into `folder`; returns each file's kind by name."""
    program = trace(graph, model_name=model_name, format_name=formats[0])
    files: dict[str, str] = {}
    if "torch_export" in formats:
        save_program(program, folder / PROGRAM_FILE)
        files[PROGRAM_FILE] = "torch_export"
    if "onnx" in formats:
        save_onnx(program, folder / ONNX_FILE, output_names=DETECTION_OUTPUT_NAMES, model_name=model_name)
        raw_graph = DetectionGraph.for_processor(model, processor, post_process=False)
        raw_program = trace(raw_graph, model_name=model_name, format_name="onnx")
        save_onnx(raw_program, folder / RAW_ONNX_FILE, output_names=RAW_OUTPUT_NAMES, model_name=model_name)
        files[ONNX_FILE] = "onnx"
        files[RAW_ONNX_FILE] = "onnx_raw"
    if int8:
        from .quantize import quantize_int8

        quantize_int8(folder / ONNX_FILE, folder / INT8_ONNX_FILE, calibration_images=calibration, processor=processor)
        files[INT8_ONNX_FILE] = "onnx_int8"
    return files


def _runners(folder: Path, processor: GFLImageProcessor, *, formats: list[str], int8: bool) -> dict[str, Any]:
    """A detector running each written file, by format name."""
    from .runner import OnnxDetector, ProgramDetector

    runners: dict[str, Any] = {}
    if "onnx" in formats:
        runners["onnx"] = OnnxDetector(folder / ONNX_FILE, processor)
    if "torch_export" in formats:
        runners["torch_export"] = ProgramDetector(folder / PROGRAM_FILE, processor)
    if int8:
        runners["onnx_int8"] = OnnxDetector(folder / INT8_ONNX_FILE, processor)
    return runners


def _checked_parity(reference, runners: dict[str, Any], images: list[Image.Image], *, model_name: str) -> dict:
    """Each runner's parity report against the PyTorch `reference` on `images`; an `ExportError` when a float32
    export does not reproduce its detections (INT8 is reported, not required to match)."""
    parity: dict[str, dict] = {}
    for name, runner in runners.items():
        report = check_parity(reference, runner, images)
        parity[name] = report.as_dict()
        logger.info("Parity of %s on %d images: %s", name, report.images, _describe(report))
        if name != "onnx_int8" and not report.passed:
            raise ExportError(
                f"The {name} export of {model_name} does not reproduce the PyTorch model's detections on "
                f"{report.images} images: " + "; ".join(report.mismatches[:5])
            )
    return parity


@torch.no_grad()
def _raw_parity(model, processor: GFLImageProcessor, path: Path, images: list[Image.Image]) -> dict[str, Any]:
    """Largest differences between the raw ONNX file's per-anchor outputs and PyTorch's on `images`."""
    from .dependencies import require

    onnxruntime = require("onnxruntime")
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    graph = DetectionGraph.for_processor(model, processor, post_process=False)
    batch = processor(images=images, return_tensors="pt")
    expected_boxes, expected_scores = graph(batch["pixel_values"], batch["pixel_mask"])
    boxes, scores = session.run(
        None, {"pixel_values": batch["pixel_values"].numpy(), "pixel_mask": batch["pixel_mask"].numpy()}
    )
    return {
        "images": len(images),
        "max_score_difference": float(np.abs(scores - expected_scores.numpy()).max()),
        "max_box_difference": float(np.abs(boxes - expected_boxes.numpy()).max()),
    }


def _describe(report: ParityReport) -> str:
    text = (
        f"{report.matched}/{report.reference_detections} detections matched, max score difference "
        f"{report.max_score_difference:.2e}, max box difference {report.max_box_difference:.2e} px"
    )
    return text if not report.mismatches else f"{text}; {len(report.mismatches)} mismatches"


def export_readme(summary: dict[str, Any], processor: GFLImageProcessor) -> str:
    """The exported folder's README.md: what each file is, what the graphs take and return, the checks."""
    post = summary["post_processing"]
    lines = [
        f"# Exported GFL detector: {summary['model']}",
        "",
        f"Written by liaf-hf {summary['liaf_hf_version']} with PyTorch {summary['torch_version']}.",
        "",
        "## Files",
        "",
        "| file | what it is |",
        "|---|---|",
    ]
    descriptions = {
        "onnx": f"ONNX (opset {summary['onnx_opset']}), float32, post-processing inside: returns detections",
        "onnx_raw": "ONNX, float32, no post-processing: every anchor's boxes and per-class scores",
        "onnx_int8": "ONNX, INT8 (QDQ; convolutions int8, box decoding and NMS float32), post-processing inside",
        "torch_export": "`torch.export` ExportedProgram of the same graph as model.onnx (`torch.export.load`)",
    }
    lines += [f"| `{file}` | {descriptions[kind]} |" for file, kind in summary["files"].items()]
    lines += [
        f"| `{PROCESSOR_CONFIG_NAME}` | the image processor (`GFLImageProcessor.from_pretrained(folder)`) |",
        f"| `{SUMMARY_NAME}` | parity checks and AP of each file, as JSON |",
        "",
        "## Inputs (every graph)",
        "",
        "| name | dtype | shape | what |",
        "|---|---|---|---|",
        "| `pixel_values` | float32 | (batch, 3, height, width) | RGB, channels first: the image "
        f"{_resize_description(processor)}, scaled to [0, 1], normalised per channel with mean "
        f"{_floats(processor.image_mean)} and std {_floats(processor.image_std)}, padded with zeros at the bottom "
        f"and right ({_pad_description(processor)}) |",
        "| `pixel_mask` | int64 | (batch, height, width) | 1 on image pixels, 0 on padding (all ones for one "
        "unpadded image) |",
        "",
        "Batch size, height and width are dynamic (height and width from 32 to 8192 px). Three channels, RGB: a "
        "greyscale or RGBA image must be converted first. The processor in this folder prepares both inputs: "
        "`GFLImageProcessor.from_pretrained(folder)(images=[image], return_tensors='np')`; liaf-hf's "
        "`liaf_hf.export.OnnxDetector(folder + '/model.onnx')` does all of it and checks the inputs.",
        "",
        "## Outputs",
        "",
        "With post-processing (`model.onnx`, `model_int8.onnx`, `model.pt2`), D = "
        f"{post['max_detections']}: each image's (anchor, class) pairs scoring above {post['score_threshold']}, at "
        f"most {post['pre_nms_top_k']} of them, class-aware NMS at IoU {post['nms_iou_threshold']}, the best D kept:",
        "",
        "| name | dtype | shape | what |",
        "|---|---|---|---|",
        "| `boxes` | float32 | (batch, D, 4) | x1, y1, x2, y2 in pixels of `pixel_values` (the resized image), "
        "clipped to the image; multiply by original size / resized size for the original image |",
        "| `scores` | float32 | (batch, D) | GFL quality score, highest first; 0 in padding rows |",
        "| `labels` | int64 | (batch, D) | class index (`id2label` of the model's config.json); -1 in padding rows |",
        "| `num_detections` | int64 | (batch,) | how many of each image's D rows are detections |",
        "",
        "Without post-processing (`model_raw.onnx`), A = anchors (all FPN levels, finest first, row by row):",
        "",
        "| name | dtype | shape | what |",
        "|---|---|---|---|",
        "| `boxes` | float32 | (batch, A, 4) | every anchor's decoded box, x1, y1, x2, y2 input pixels, clipped |",
        "| `scores` | float32 | (batch, A, classes) | sigmoid of the class logits (apply threshold and NMS) |",
        "",
        "## Checks",
        "",
        *_checks(summary),
    ]
    return "\n".join(lines) + "\n"


def _checks(summary: dict[str, Any]) -> list[str]:
    """The README's lines on the parity of each file with PyTorch and, when evaluated, the AP of each."""
    lines = []
    for name, report in summary["parity"].items():
        if name == "onnx_raw":
            lines.append(
                f"- `{name}` against PyTorch on {report['images']} images: max score difference "
                f"{report['max_score_difference']:.1e}, max box difference {report['max_box_difference']:.1e} px."
            )
            continue
        verdict = "same detections" if report["passed"] else f"{len(report['mismatches'])} mismatches"
        lines.append(
            f"- `{name}` against PyTorch's `post_process_object_detection` on {report['images']} images: "
            f"{verdict} ({report['matched']}/{report['reference_detections']} matched; max score difference "
            f"{report['max_score_difference']:.1e}, max box difference {report['max_box_difference']:.1e} px)."
        )
    if summary["evaluation"]:
        lines += ["", f"COCO box AP (pycocotools) on {summary['evaluation_images']} evaluation images:", ""]
        lines += ["| runtime | AP | AP50 | AP change |", "|---|---|---|---|"]
        base = summary["evaluation"]["pytorch"]["AP"]
        for name, metrics in summary["evaluation"].items():
            change = "" if name == "pytorch" else f"{metrics['AP'] - base:+.4f}"
            lines.append(f"| {name} | {metrics['AP']:.4f} | {metrics['AP50']:.4f} | {change} |")
    return lines


def _resize_description(processor) -> str:
    """How the processor resizes, in words, for each form of its `size`."""
    if not processor.do_resize:
        return "at its own size"
    size = processor.size
    if size.shortest_edge and size.longest_edge:
        return f"resized so its shorter edge is {size.shortest_edge} px (longer edge at most {size.longest_edge} px)"
    if size.max_height and size.max_width:
        return f"resized to fit in {size.max_height}x{size.max_width} px (height x width), keeping its aspect ratio"
    if size.height and size.width:
        return f"resized to exactly {size.height}x{size.width} px (height x width)"
    if size.shortest_edge:
        return f"resized so its shorter edge is {size.shortest_edge} px"
    return f"resized so its longer edge is {size.longest_edge} px"


def _pad_description(processor) -> str:
    if processor.pad_size is not None:
        return f"to {processor.pad_size.height}x{processor.pad_size.width} px"
    return f"to a multiple of {processor.pad_size_divisor} px when batching"


def _floats(values: Sequence[float]) -> str:
    return "(" + ", ".join(f"{value:.3f}" for value in values) + ")"


__all__ = [
    "INT8_ONNX_FILE",
    "ONNX_FILE",
    "PROGRAM_FILE",
    "RAW_ONNX_FILE",
    "SUMMARY_NAME",
    "check_formats",
    "check_output_dir",
    "export_detector",
    "export_loaded",
    "export_readme",
    "generated_images",
    "load_images",
]
