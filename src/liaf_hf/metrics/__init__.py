"""Detection metrics: COCO AP through pycocotools, and KITTI's (VOC AP50, KITTI AP40), for
``transformers.Trainer`` and ``evaluate``."""

from liaf_hf.metrics.coco import (
    CocoDetectionEvaluator,
    coco_detection_metric_path,
    coco_ground_truth_from_dataset,
    coco_ground_truth_from_dict,
    coco_ground_truth_from_file,
    make_coco_compute_metrics,
)
from liaf_hf.metrics.kitti import (
    KittiDetectionEvaluator,
    coco_ground_truth_from_kitti,
    is_kitti_dataset,
    kitti_ground_truth_from_dataset,
    make_kitti_compute_metrics,
)

__all__ = [
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
]
