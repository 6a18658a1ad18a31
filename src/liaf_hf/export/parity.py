"""Checking an exported detector against the PyTorch model it came from: the same detections on the same
images, and the AP of each on an evaluation set.

Detections are matched per image and class, each reference detection to the unused candidate whose box is
nearest, so two detections whose scores differ by less than the runtimes' rounding may come in either order.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field

import datasets
import torch
from PIL import Image

from ..data.images import read_image, undecoded_images
from ..inference import detect
from ..metrics import (
    CocoDetectionEvaluator,
    coco_ground_truth_from_dataset,
    coco_ground_truth_from_kitti,
    is_kitti_dataset,
    kitti_ground_truth_from_dataset,
)
from ..models.gfl.image_processing_gfl import GFLImageProcessor
from ..models.gfl.modeling_gfl import GFLForObjectDetection

#: A detector as these checks call it: images -> per image `scores`, `labels`, `boxes` (xyxy original pixels).
Detector = Callable[[Sequence[Image.Image]], list[dict[str, torch.Tensor]]]

#: Tolerances of the float32 parity check (the issue's): score difference and box corner difference in pixels.
SCORE_TOLERANCE = 1e-4
BOX_TOLERANCE = 1e-2


@dataclass
class ParityReport:
    """How an exported detector's detections compare with the reference's on the same images.

    Attributes:
        images: images compared.
        reference_detections: detections the reference found on them.
        matched: reference detections the candidate reproduced within the tolerances.
        max_score_difference: largest |score difference| over matched pairs.
        max_box_difference: largest corner difference over matched pairs, in pixels of the original images.
        mismatches: one line per image whose detections differ (count, or a detection without a match).
    """

    images: int = 0
    reference_detections: int = 0
    matched: int = 0
    max_score_difference: float = 0.0
    max_box_difference: float = 0.0
    mismatches: list[str] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return not self.mismatches and self.matched == self.reference_detections

    def as_dict(self) -> dict:
        return {**asdict(self), "passed": self.passed}


def compare_detections(
    reference: Sequence[dict[str, torch.Tensor]],
    candidate: Sequence[dict[str, torch.Tensor]],
    *,
    score_tolerance: float = SCORE_TOLERANCE,
    box_tolerance: float = BOX_TOLERANCE,
    report: ParityReport | None = None,
) -> ParityReport:
    """Compare two detectors' detections of the same images (lists of per-image dicts); adds to `report`."""
    report = report or ParityReport()
    for expected, found in zip(reference, candidate, strict=True):
        report.images += 1
        count = len(expected["scores"])
        report.reference_detections += count
        if len(found["scores"]) != count:
            report.mismatches.append(
                f"image {report.images - 1}: {count} detections, the export gave {len(found['scores'])}"
            )
        used = torch.zeros(len(found["scores"]), dtype=torch.bool)
        for score, label, box in zip(expected["scores"], expected["labels"], expected["boxes"]):
            same_class = (found["labels"] == label) & ~used
            if not same_class.any():
                report.mismatches.append(f"image {report.images - 1}: no {int(label)} detection matches {box.tolist()}")
                continue
            distances = (found["boxes"].float() - box.float()).abs().max(dim=1).values
            distances[~same_class] = float("inf")
            nearest = int(distances.argmin())
            score_difference = abs(float(found["scores"][nearest]) - float(score))
            if distances[nearest] > box_tolerance or score_difference > score_tolerance:
                report.mismatches.append(
                    f"image {report.images - 1}: detection {box.tolist()} (score {float(score):.5f}) is nearest to "
                    f"{found['boxes'][nearest].tolist()} (score {float(found['scores'][nearest]):.5f})"
                )
                continue
            used[nearest] = True
            report.matched += 1
            report.max_score_difference = max(report.max_score_difference, score_difference)
            report.max_box_difference = max(report.max_box_difference, float(distances[nearest]))
    return report


def pytorch_detector(model: GFLForObjectDetection, processor: GFLImageProcessor, *, threshold: float) -> Detector:
    """The reference: the PyTorch model and `post_process_object_detection` at `threshold`."""
    return lambda images: detect(model, processor, images, threshold=threshold)


def check_parity(
    reference: Detector, candidate: Detector, images: Sequence[Image.Image], *, batch_size: int = 4, **tolerances
) -> ParityReport:
    """`compare_detections` of two detectors over `images`, in batches of `batch_size`."""
    report = ParityReport()
    for start in range(0, len(images), batch_size):
        batch = list(images[start : start + batch_size])
        compare_detections(reference(batch), candidate(batch), report=report, **tolerances)
    return report


def evaluate_ap(detector: Detector, dataset: datasets.Dataset, *, batch_size: int = 8) -> dict[str, float]:
    """COCO box AP (pycocotools, through `liaf_hf.metrics`) of `detector` on a detection dataset (COCO, Hub or
    KITTI schema; KITTI's ignore regions count as crowds)."""
    if is_kitti_dataset(dataset):
        ground_truth = coco_ground_truth_from_kitti(kitti_ground_truth_from_dataset(dataset))
    else:
        ground_truth = coco_ground_truth_from_dataset(dataset)
    evaluator = CocoDetectionEvaluator(ground_truth)
    dataset = undecoded_images(dataset)
    for start in range(0, len(dataset), batch_size):
        rows = dataset[start : start + batch_size]
        images = [read_image(value) for value in rows["image"]]
        evaluator.update([int(image_id) for image_id in rows["image_id"]], detector(images))
    return evaluator.compute()


__all__ = [
    "BOX_TOLERANCE",
    "SCORE_TOLERANCE",
    "Detector",
    "ParityReport",
    "check_parity",
    "compare_detections",
    "evaluate_ap",
    "pytorch_detector",
]
