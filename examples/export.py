"""Export a saved GFL detector (a distilled student) for deployment: ONNX with the post-processing inside (and a
variant without it), `torch.export`, and INT8 ONNX calibrated on a data set; each file checked against the
PyTorch model, with the AP of each on the evaluation split.

    python examples/export.py --model runs/student-liaf --format onnx torch_export --int8 \\
        --calibration_data data/shapes --output exported/student-liaf

`--calibration_data` takes what the training scripts take as `--data_dir` or `--dataset_name` (a COCO- or
KITTI-layout root, a saved or imagefolder Hub-format set, or a Hub id): the first `--calibration_samples`
images of `--calibration_split` calibrate INT8, the first `--parity_samples` of `--eval_split` are the parity
images and up to `--max_eval_samples` of it measure AP. Without it, parity runs on generated scenes and AP is
not measured. The model's card (its README.md) gets a "Deployment" section with the formats and their AP.
"""

from __future__ import annotations

import json
import logging
import sys
from dataclasses import dataclass, field
from pathlib import Path

from transformers import HfArgumentParser

from liaf_hf import DataError
from liaf_hf.cli import DataArguments
from liaf_hf.export.exporter import check_formats, check_output_dir, export_detector, load_images
from liaf_hf.hub.model_card import add_export_section
from liaf_hf.hub.saved_folder import check_saved_detector

logger = logging.getLogger("export")


@dataclass
class ExportArguments:
    model: str = field(metadata={"help": "A saved GFL detector directory (config.json, weights, image processor)."})
    output: str = field(metadata={"help": "The folder to write (must be empty unless --overwrite)."})
    format: list[str] = field(default_factory=lambda: ["onnx"], metadata={"help": "onnx and/or torch_export."})
    int8: bool = field(default=False, metadata={"help": "Also write INT8 ONNX (needs --calibration_data)."})
    calibration_data: str | None = field(
        default=None, metadata={"help": "COCO/KITTI root or Hub-format set: calibration and evaluation images."}
    )
    dataset_format: str = field(default="auto", metadata={"help": "auto, coco, kitti or hub."})
    calibration_split: str = field(default="train")
    calibration_samples: int = field(default=200, metadata={"help": "Images that calibrate INT8."})
    eval_split: str = field(default="val")
    max_eval_samples: int | None = field(default=500, metadata={"help": "Images that measure AP (all: none)."})
    parity_samples: int = field(default=16, metadata={"help": "Images on which parity is checked."})
    score_threshold: float | None = field(default=None, metadata={"help": "Default: the saved processor's."})
    overwrite: bool = field(default=False, metadata={"help": "Replace an output folder that holds files."})
    update_model_card: bool = field(default=True, metadata={"help": "Add the Deployment section to the model card."})


def main(argv: list[str] | None = None) -> dict:
    """Returns the export summary (also written as export_summary.json)."""
    (args,) = HfArgumentParser(ExportArguments).parse_args_into_dataclasses(args=argv)
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)
    # Everything that can be refused is refused before the slow parts: data loading, tracing, calibration.
    check_saved_detector(args.model)
    check_formats(args.format, int8=args.int8)
    check_output_dir(args.output, overwrite=args.overwrite)
    calibration_images, parity_images, evaluation_set = None, None, None
    if args.calibration_data is not None:
        source = Path(args.calibration_data)
        data = DataArguments(
            data_dir=str(source) if source.exists() else None,
            dataset_name=None if source.exists() else args.calibration_data,
            dataset_format=args.dataset_format,
            train_split=args.calibration_split,
            eval_split=args.eval_split,
        )
        evaluation_set = data.load_split(args.eval_split)
        if args.max_eval_samples is not None:
            evaluation_set = evaluation_set.select(range(min(args.max_eval_samples, len(evaluation_set))))
        parity_images = load_images(evaluation_set, args.parity_samples)
        if args.int8:
            calibration_images = load_images(data.load_split(args.calibration_split), args.calibration_samples)
    if args.int8 and not calibration_images:
        raise DataError(
            "--int8 needs calibration images: "
            + (
                f"split {args.calibration_split!r} of {args.calibration_data} holds none."
                if args.calibration_data
                else "give --calibration_data."
            )
        )
    summary = export_detector(
        args.model,
        args.output,
        formats=args.format,
        int8=args.int8,
        calibration_images=calibration_images,
        parity_images=parity_images,
        evaluation_set=evaluation_set,
        score_threshold=args.score_threshold,
        overwrite=args.overwrite,
    )
    if args.update_model_card:
        card = add_export_section(args.model, summary)
        logger.info("Model card: %s", card or f"{args.model} has no README.md; the summary is in {args.output}")
    print(json.dumps({"files": summary["files"], "evaluation": summary["evaluation"]}, indent=2))
    return summary


if __name__ == "__main__":
    main(sys.argv[1:])
