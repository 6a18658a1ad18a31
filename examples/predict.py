"""Run a saved GFL detector on images and write each image with its detections drawn (boxes, class names,
scores) as a PNG.

    python examples/predict.py --model runs/student-liaf --images photo.jpg more_photos/ \
        --output_dir runs/predictions --threshold 0.3

`--images` takes image files and folders (their images, not recursive). Each output is named after its input:
`photo.jpg` -> `runs/predictions/photo.png`. Images are read upright (their EXIF orientation applied), as the
data loaders and transformers' pipeline read them. `--output_dir` must not be a folder holding input images:
the drawings would land among them, overwriting any PNG input of the same name, so it is refused before
anything is written.
"""

from __future__ import annotations

import logging
import sys
from dataclasses import dataclass, field
from pathlib import Path

import torch
from transformers import HfArgumentParser

from liaf_hf import LiafError
from liaf_hf.inference import detect, find_images, load_detector, open_image
from liaf_hf.visualization.drawing import draw_detections

logger = logging.getLogger("predict")


@dataclass
class PredictArguments:
    model: str = field(metadata={"help": "A saved GFL detector directory (config.json, weights, image processor)."})
    images: list[str] = field(metadata={"help": "Image files and folders of images."})
    output_dir: str = field(metadata={"help": "Where the drawn PNGs go (created if needed)."})
    threshold: float = field(default=0.3, metadata={"help": "Draw detections scoring at least this."})
    batch_size: int = field(default=8, metadata={"help": "Images per forward pass."})
    device: str = field(default="cuda" if torch.cuda.is_available() else "cpu")


def output_files(files: list[Path], output_dir: str) -> list[Path]:
    """The PNG each input image is drawn into, in `output_dir`.

    Raises:
        LiafError: `output_dir` is a folder of input images (the drawings would be written among them and replace
            any PNG input of the same name), or two inputs would be drawn into the same PNG.
    """
    folder = Path(output_dir).resolve()
    among_inputs = [file for file in files if file.parent.resolve() == folder]
    if among_inputs:
        overwritten = [str(file) for file in among_inputs if file.name == f"{file.stem}.png"]
        raise LiafError(
            f"--output_dir {output_dir} is the folder of input images ({among_inputs[0].parent}): the drawn PNGs "
            "would be written among the originals"
            + (f" and replace {overwritten}" if overwritten else "")
            + ". Give another --output_dir."
        )
    outputs = [Path(output_dir) / f"{file.stem}.png" for file in files]
    if len(set(outputs)) < len(outputs):
        clashing = [str(file) for file, out in zip(files, outputs) if outputs.count(out) > 1]
        raise LiafError(f"Inputs would overwrite each other's PNG (same name, different folder or type): {clashing}")
    return outputs


def main(argv: list[str] | None = None) -> list[Path]:
    """Returns the PNGs written, in input order."""
    (args,) = HfArgumentParser(PredictArguments).parse_args_into_dataclasses(args=argv)
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)
    files = find_images(args.images)
    outputs = output_files(files, args.output_dir)
    model, processor = load_detector(args.model, device=args.device)
    Path(args.output_dir).mkdir(parents=True, exist_ok=True)
    for start in range(0, len(files), args.batch_size):
        batch_files = files[start : start + args.batch_size]
        images = [open_image(file) for file in batch_files]
        detections = detect(model, processor, images, threshold=args.threshold)
        for file, out, image, found in zip(batch_files, outputs[start:], images, detections):
            draw_detections(image, found, model.config.id2label).save(out)
            logger.info("%s: %d detections -> %s", file, len(found["scores"]), out)
    return outputs


if __name__ == "__main__":
    main(sys.argv[1:])
