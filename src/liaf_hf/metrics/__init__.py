"""Detection metrics: COCO AP through pycocotools (or faster-coco-eval), and KITTI's (VOC AP50, KITTI AP40), for
``transformers.Trainer`` and ``evaluate``."""

from liaf_hf.metrics.coco import (
    COCO_BACKENDS,
    CocoDetectionEvaluator,
    coco_detection_metric_path,
    coco_ground_truth_from_dataset,
    coco_ground_truth_from_dict,
    coco_ground_truth_from_file,
    make_coco_compute_metrics,
    resolve_coco_backend,
)
from liaf_hf.metrics.kitti import (
    KittiDetectionEvaluator,
    coco_ground_truth_from_kitti,
    is_kitti_dataset,
    kitti_ground_truth_from_dataset,
    make_kitti_compute_metrics,
)

__all__ = [
    "COCO_BACKENDS",
    "CocoDetectionEvaluator",
    "KittiDetectionEvaluator",
    "coco_detection_metric_path",
    "coco_ground_truth_from_dataset",
    "coco_ground_truth_from_dict",
    "coco_ground_truth_from_file",
    "coco_ground_truth_from_kitti",
    "is_kitti_dataset",
    "kitti_ground_truth_from_dataset",
    "make_coco_compute_metrics",
    "make_kitti_compute_metrics",
    "resolve_coco_backend",
]
