"""Detection metrics: COCO AP through pycocotools, for ``transformers.Trainer`` and ``evaluate``."""

from liaf_hf.metrics.coco import (
    CocoDetectionEvaluator,
    coco_detection_metric_path,
    coco_ground_truth_from_dataset,
    coco_ground_truth_from_dict,
    coco_ground_truth_from_file,
    make_coco_compute_metrics,
)

__all__ = [
    "CocoDetectionEvaluator",
    "coco_detection_metric_path",
    "coco_ground_truth_from_dataset",
    "coco_ground_truth_from_dict",
    "coco_ground_truth_from_file",
    "make_coco_compute_metrics",
]
