"""KITTI scoring for 2D detectors: VOC-style AP at IoU 0.5 and the KITTI 2D benchmark AP (40 recall points).

Two metrics, each per class, computed by :class:`KittiDetectionEvaluator` (usable alone) or by
:func:`make_kitti_compute_metrics` (a ``compute_metrics`` for ``transformers.Trainer``):

* ``VOC_AP50_<class>`` and their mean ``VOC_mAP50``: PASCAL VOC AP at IoU > 0.5, all-point interpolated
  (the VOC2010+ rule: the area under the precision envelope at every recall step, not the 11-point rule
  of VOC2007). Detections of a class, over all images, are taken by descending score; each is a true
  positive when its best IoU with a ground-truth object of its class in its image exceeds 0.5 and that
  object is not matched yet, a false positive when it exceeds 0.5 but the object is matched, and
  otherwise neither (ignored) when it lies on an ignore region (``iscrowd``: KITTI's DontCare and the
  types mapped to no class) for more than 0.5 of its own area, else a false positive. Boxes are in pixel-
  edge coordinates, so no "+1" enters widths.
* ``KITTI_AP40_<class>_<easy|moderate|hard>`` and ``KITTI_mAP40_<difficulty>`` (mean over classes): the
  KITTI 2D object benchmark's AP as its devkit computes it (``eval.py`` of the KITTI object evaluation in
  python, same rules as ``evaluate_object.cpp``): minimum IoU 0.7 for Car and 0.5 for Pedestrian,
  Cyclist and any other class (``min_overlaps``); a difficulty admits objects of box height above
  40/25/25 px, occlusion at most 0/1/2 and truncation at most 0.15/0.30/0.50; objects outside it and the
  neighbouring types (Van for Car, Person_sitting for Pedestrian) are ignored (a detection matched to one
  is neither true nor false positive); detections lower than the difficulty's minimum height are ignored;
  detections on DontCare regions (intersection over the detection's area above the class's minimum IoU)
  are not false positives; other types (Truck, Tram, Misc) are not ignored, so a Car detection on a Truck
  is a false positive, as in the devkit. An object belongs to a class by its label, so a type mapped to a
  class when loading (Van to Car) counts as that class rather than as its neighbour. Precision is sampled
  at 41 score thresholds placed at recall 0, 1/40, ..., 1 and the AP is the mean of the (envelope)
  precision at the 40 points after recall 0 ("R40"). As in the devkit, the thresholds come from the true
  positives, so a class with n < 40 valid objects gets at most n thresholds: its AP is at most
  (n - 1) / 40, a property of the benchmark's sampling that matters only on very small sets.

:func:`make_kitti_compute_metrics` adds COCO AP (``AP``, ``AP50``, ... as
:mod:`liaf_hf.metrics.coco` reports it) on the same ground truth by default.

Values are floats in 0..1 (the devkit prints percent). A class with no ground truth (for a difficulty)
has NaN and is left out of the means; the keys are always present.

Ground truth comes from a dataset with the Hub detection schema (:func:`kitti_ground_truth_from_dataset`).
KITTI rows (``liaf_hf.data.kitti``) carry per object ``type``, ``truncated`` and ``occluded``; rows of other
sets lack them and count as fully visible, untruncated objects of their class, with crowd regions as
DontCare.

Example::

    >>> evaluator = KittiDetectionEvaluator(kitti_ground_truth_from_dataset(val))  # doctest: +SKIP
    >>> evaluator.update([image_id], [{"scores": s, "labels": l, "boxes": b}])  # doctest: +SKIP
    >>> evaluator.compute()["KITTI_AP40_Car_moderate"]  # doctest: +SKIP
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
from pycocotools.coco import COCO

from liaf_hf.data.coco import objects_as_rows
from liaf_hf.errors import DataError
from liaf_hf.metrics.coco import (
    CocoDetectionEvaluator,
    _class_label_names,
    _scalar_image_id,
    _split_batch,
    _to_numpy,
    _trainer_batches,
    coco_ground_truth_from_dict,
)

if TYPE_CHECKING:
    import datasets
    from transformers import EvalPrediction

__all__ = [
    "DIFFICULTIES",
    "KittiDetectionEvaluator",
    "KittiGroundTruth",
    "KittiImageGroundTruth",
    "box_intersection_over_first",
    "box_iou",
    "coco_ground_truth_from_kitti",
    "is_kitti_dataset",
    "kitti_ground_truth_from_dataset",
    "kitti_score_thresholds",
    "make_kitti_compute_metrics",
    "voc_average_precision",
]

DIFFICULTIES: tuple[str, ...] = ("easy", "moderate", "hard")
_MIN_HEIGHT = (40.0, 25.0, 25.0)
_MAX_OCCLUSION = (0, 1, 2)
_MAX_TRUNCATION = (0.15, 0.3, 0.5)
_NUM_SAMPLE_POINTS = 41
DEFAULT_MIN_OVERLAPS: dict[str, float] = {"Car": 0.7, "Pedestrian": 0.5, "Cyclist": 0.5}
# KITTI types whose objects are neither positives nor false-positive sources for a class.
_NEIGHBOURS: dict[str, frozenset[str]] = {"Car": frozenset({"Van"}), "Pedestrian": frozenset({"Person_sitting"})}
_DONT_CARE = "DontCare"
_VOC_IOU = 0.5


@dataclass(frozen=True)
class KittiImageGroundTruth:
    """One image's objects. ``labels`` is -1 for ignore regions (``iscrowd``)."""

    boxes_xyxy: np.ndarray  # (n, 4) float64, absolute pixels
    labels: np.ndarray  # (n,) int64, class label or -1
    types: tuple[str, ...]  # (n,) KITTI type, or the class name where the set has none
    truncated: np.ndarray  # (n,) float64
    occluded: np.ndarray  # (n,) int64


@dataclass(frozen=True)
class KittiGroundTruth:
    """Every image's objects by image id, and the class names indexed by label."""

    images: dict[int, KittiImageGroundTruth]
    class_names: tuple[str, ...]


def kitti_ground_truth_from_dataset(dataset: datasets.Dataset) -> KittiGroundTruth:
    """The ground truth of a dataset with the Hub detection schema (no image is decoded).

    Raises:
        DataError: ``objects.category`` is not a ClassLabel, an image id repeats, or an object's category
            is out of range.
    """
    names = _class_label_names(dataset.features)
    table = dataset.with_format(None).select_columns(["image_id", "objects"]).to_dict()
    images: dict[int, KittiImageGroundTruth] = {}
    for image_id, objects in zip(table["image_id"], table["objects"]):
        image_id = int(image_id)
        if image_id in images:
            raise DataError(f"dataset: image_id {image_id} appears in more than one row")
        rows = objects_as_rows(objects)
        boxes, labels, types, truncated, occluded = [], [], [], [], []
        for index, obj in enumerate(rows):
            x, y, w, h = (float(v) for v in obj["bbox"])
            crowd = bool(obj.get("iscrowd", False))
            label = -1 if crowd else int(obj["category"])
            if not -1 <= label < len(names):
                raise DataError(f"dataset: image_id {image_id} object {index} has category {label}")
            boxes.append([x, y, x + w, y + h])
            labels.append(label)
            types.append(str(obj.get("type") or (_DONT_CARE if crowd else names[label])))
            truncated.append(float(obj.get("truncated", 0.0)))
            occluded.append(int(obj.get("occluded", 0)))
        images[image_id] = KittiImageGroundTruth(
            boxes_xyxy=np.asarray(boxes, dtype=np.float64).reshape(-1, 4),
            labels=np.asarray(labels, dtype=np.int64),
            types=tuple(types),
            truncated=np.asarray(truncated, dtype=np.float64),
            occluded=np.asarray(occluded, dtype=np.int64),
        )
    return KittiGroundTruth(images=images, class_names=tuple(names))


@dataclass(frozen=True)
class _Detections:
    boxes_xyxy: np.ndarray  # (n, 4) float64
    scores: np.ndarray  # (n,) float64
    labels: np.ndarray  # (n,) int64


class KittiDetectionEvaluator:
    """Accumulates per-image detections and scores them with VOC AP50 and KITTI AP40 (module docstring).

    Args:
        ground_truth: From :func:`kitti_ground_truth_from_dataset`.
        min_overlaps: Minimum IoU of the KITTI metric per class name; classes not named use 0.5. By
            default Car 0.7, Pedestrian 0.5, Cyclist 0.5.

    Every ground-truth image counts; one never updated is an image where the detector found nothing.
    Updating an image again replaces its detections.
    """

    def __init__(self, ground_truth: KittiGroundTruth, *, min_overlaps: Mapping[str, float] | None = None) -> None:
        self.ground_truth = ground_truth
        self.min_overlaps = dict(DEFAULT_MIN_OVERLAPS if min_overlaps is None else min_overlaps)
        self._detections: dict[int, _Detections] = {}

    def reset(self) -> None:
        """Forget every detection passed to :meth:`update`."""
        self._detections = {}

    def update(self, image_ids: Sequence[Any], detections: Sequence[Mapping[str, Any]]) -> None:
        """Add the detections of a batch of images.

        Args:
            image_ids: One ground-truth image id per image (int, or a 0-d / 1-element tensor).
            detections: One dict per image: ``scores`` (n,), ``labels`` (n,), ``boxes`` (n, 4) absolute xyxy
                pixels; torch tensors or numpy arrays.

        Raises:
            ValueError: Mismatched lengths, an image id the ground truth lacks, or a label out of range.
        """
        if len(image_ids) != len(detections):
            raise ValueError(f"got {len(image_ids)} image ids and {len(detections)} detection dicts")
        num_classes = len(self.ground_truth.class_names)
        for raw_image_id, found in zip(image_ids, detections):
            image_id = _scalar_image_id(raw_image_id)
            if image_id not in self.ground_truth.images:
                raise ValueError(f"image_id {image_id} is not in the ground truth")
            boxes = _to_numpy(found["boxes"]).astype(np.float64).reshape(-1, 4)
            scores = _to_numpy(found["scores"]).astype(np.float64).reshape(-1)
            labels = _to_numpy(found["labels"]).astype(np.int64).reshape(-1)
            if not len(boxes) == len(scores) == len(labels):
                raise ValueError(f"image_id {image_id}: {len(boxes)} boxes, {len(scores)} scores, {len(labels)} labels")
            if ((labels < 0) | (labels >= num_classes)).any():
                raise ValueError(f"image_id {image_id}: labels must be in 0..{num_classes - 1}, got {labels.tolist()}")
            self._detections[image_id] = _Detections(boxes_xyxy=boxes, scores=scores, labels=labels)

    def compute(self) -> dict[str, float]:
        """Score everything updated so far (keys in the module docstring)."""
        metrics: dict[str, float] = {}
        names = self.ground_truth.class_names
        voc = {name: self._voc_ap(label) for label, name in enumerate(names)}
        metrics.update({f"VOC_AP50_{name}": value for name, value in voc.items()})
        metrics["VOC_mAP50"] = _nanmean(voc.values())
        for difficulty_index, difficulty in enumerate(DIFFICULTIES):
            per_class = {name: self._kitti_ap(label, difficulty_index) for label, name in enumerate(names)}
            metrics.update({f"KITTI_AP40_{name}_{difficulty}": value for name, value in per_class.items()})
            metrics[f"KITTI_mAP40_{difficulty}"] = _nanmean(per_class.values())
        return metrics

    def _image_detections(self, image_id: int, label: int) -> _Detections:
        found = self._detections.get(image_id)
        if found is None:
            empty = np.zeros(0)
            return _Detections(boxes_xyxy=empty.reshape(0, 4), scores=empty, labels=empty.astype(np.int64))
        keep = found.labels == label
        return _Detections(boxes_xyxy=found.boxes_xyxy[keep], scores=found.scores[keep], labels=found.labels[keep])

    def _voc_ap(self, label: int) -> float:
        records = []  # (score, image_id, detection index)
        overlaps: dict[int, np.ndarray] = {}  # (D, G) IoU with the objects of the class
        on_region: dict[int, np.ndarray] = {}  # (D,) lies on an ignore region
        matched: dict[int, np.ndarray] = {}
        num_positives = 0
        for image_id, truth in self.ground_truth.images.items():
            positives = truth.boxes_xyxy[truth.labels == label]
            regions = truth.boxes_xyxy[truth.labels < 0]
            found = self._image_detections(image_id, label)
            num_positives += len(positives)
            matched[image_id] = np.zeros(len(positives), dtype=bool)
            overlaps[image_id] = box_iou(found.boxes_xyxy, positives)
            on_region[image_id] = (box_intersection_over_first(found.boxes_xyxy, regions) > _VOC_IOU).any(axis=1)
            records.extend((score, image_id, index) for index, score in enumerate(found.scores.tolist()))
        if num_positives == 0:
            return math.nan
        # Stable sort by score: ties keep image and detection order.
        records.sort(key=lambda record: -record[0])
        outcomes = []  # True: true positive, False: false positive; ignored detections are left out
        for _, image_id, index in records:
            image_overlaps = overlaps[image_id][index]
            if image_overlaps.size and image_overlaps.max() > _VOC_IOU:
                best = int(image_overlaps.argmax())
                outcomes.append(not matched[image_id][best])
                matched[image_id][best] = True
            elif not on_region[image_id][index]:
                outcomes.append(False)
        return voc_average_precision(np.asarray(outcomes, dtype=bool), num_positives)

    def _kitti_ap(self, label: int, difficulty: int) -> float:
        class_name = self.ground_truth.class_names[label]
        min_overlap = self.min_overlaps.get(class_name, 0.5)
        prepared = [
            _prepare_image(
                truth, self._image_detections(image_id, label), label, class_name, difficulty, min_overlap=min_overlap
            )
            for image_id, truth in self.ground_truth.images.items()
        ]
        num_valid = sum(int((image.ignored_gt == 0).sum()) for image in prepared)
        if num_valid == 0:
            return math.nan
        true_positive_scores = np.concatenate(
            [_statistics(image, threshold=0.0, compute_fp=False).scores for image in prepared]
        )
        thresholds = kitti_score_thresholds(true_positive_scores, num_valid)
        precision = np.zeros(_NUM_SAMPLE_POINTS)
        for index, threshold in enumerate(thresholds):
            counts = np.zeros(3)
            for image in prepared:
                stats = _statistics(image, threshold=threshold, compute_fp=True)
                counts += (stats.tp, stats.fp, stats.fn)
            tp, fp, _ = counts
            precision[index] = tp / (tp + fp) if tp + fp > 0 else 0.0
        # The envelope: precision at a recall point is the best at that or any higher recall.
        precision = np.maximum.accumulate(precision[::-1])[::-1]
        return float(precision[1:].sum() / (_NUM_SAMPLE_POINTS - 1))


def make_kitti_compute_metrics(
    ground_truth: KittiGroundTruth,
    *,
    min_overlaps: Mapping[str, float] | None = None,
    coco_metrics: bool = True,
) -> Callable[..., dict[str, float]]:
    """A ``compute_metrics`` for ``transformers.Trainer`` with the VOC and KITTI keys (module docstring).

    With ``coco_metrics`` the COCO keys of :class:`~liaf_hf.metrics.CocoDetectionEvaluator` (``AP``,
    ``AP50``, ..., ``AP_<class>``) come too, scored against :func:`coco_ground_truth_from_kitti`, so that
    the scripts' summaries, model cards and teacher checks, which read ``AP``, work on KITTI data as well.

    The Trainer must be set up as for :func:`liaf_hf.metrics.make_coco_compute_metrics`: predictions per
    batch a (B, K, 6) tensor of ``(x1, y1, x2, y2, score, label)`` in original pixels (padding rows with a
    negative score), labels a list of dicts with ``image_id``; both ``batch_eval_metrics`` modes work.
    """
    evaluators: list[Any] = [KittiDetectionEvaluator(ground_truth, min_overlaps=min_overlaps)]
    if coco_metrics:
        evaluators.append(CocoDetectionEvaluator(coco_ground_truth_from_kitti(ground_truth)))

    def compute_metrics(eval_pred: EvalPrediction, compute_result: bool = True) -> dict[str, float]:
        for predictions, labels in _trainer_batches(eval_pred.predictions, eval_pred.label_ids):
            image_ids, detections = _split_batch(predictions, labels)
            for evaluator in evaluators:
                evaluator.update(image_ids, detections)
        if not compute_result:
            return {}
        try:
            return {key: value for evaluator in evaluators for key, value in evaluator.compute().items()}
        finally:
            for evaluator in evaluators:
                evaluator.reset()

    return compute_metrics


def coco_ground_truth_from_kitti(ground_truth: KittiGroundTruth) -> COCO:
    """A COCO ground truth of the same objects, for COCO AP on KITTI data.

    Objects of a class are ordinary annotations (area: the box area, since KITTI has no masks); every
    ignore region becomes one crowd annotation per class, so that COCOeval ignores detections of any
    class on it, as the VOC metric here does. Category ids are the labels.
    """
    annotations: list[dict[str, Any]] = []
    for image_id, truth in ground_truth.images.items():
        for box, label in zip(truth.boxes_xyxy.tolist(), truth.labels.tolist()):
            x1, y1, x2, y2 = box
            crowd = label < 0
            for category in range(len(ground_truth.class_names)) if crowd else (label,):
                annotations.append(
                    {
                        # COCOeval counts a match to annotation id 0 as unmatched: start at 1.
                        "id": len(annotations) + 1,
                        "image_id": image_id,
                        "category_id": category,
                        "bbox": [x1, y1, x2 - x1, y2 - y1],
                        "area": (x2 - x1) * (y2 - y1),
                        "iscrowd": int(crowd),
                    }
                )
    return coco_ground_truth_from_dict(
        {
            "images": [{"id": image_id} for image_id in ground_truth.images],
            "annotations": annotations,
            "categories": [{"id": label, "name": name} for label, name in enumerate(ground_truth.class_names)],
        }
    )


def is_kitti_dataset(dataset: datasets.Dataset) -> bool:
    """Whether the rows carry KITTI's per-object fields (``type``, ``truncated``, ``occluded``), as
    :func:`liaf_hf.data.kitti.load_kitti` writes them."""
    objects = dataset.features.get("objects")
    return isinstance(objects, dict) and all(field in objects for field in ("type", "truncated", "occluded"))


def voc_average_precision(outcomes: np.ndarray, num_positives: int) -> float:
    """All-point interpolated AP (VOC2010+) of detections ranked by score.

    Args:
        outcomes: (n,) bool, True for a true positive, in descending score order (ignored detections
            left out).
        num_positives: Ground-truth objects of the class.
    """
    true_positives = np.cumsum(outcomes)
    false_positives = np.cumsum(~outcomes)
    recall = true_positives / num_positives
    precision = true_positives / np.maximum(true_positives + false_positives, np.finfo(np.float64).eps)
    recall = np.concatenate([[0.0], recall, [1.0]])
    precision = np.concatenate([[0.0], precision, [0.0]])
    precision = np.maximum.accumulate(precision[::-1])[::-1]
    steps = np.nonzero(recall[1:] != recall[:-1])[0]
    return float(np.sum((recall[steps + 1] - recall[steps]) * precision[steps + 1]))


def kitti_score_thresholds(true_positive_scores: np.ndarray, num_valid: int) -> list[float]:
    """The devkit's score thresholds: from the true positives' scores (descending), the one nearest each
    recall point 0, 1/40, 2/40, ... (at most 41, fewer when there are fewer true positives)."""
    scores = np.sort(np.asarray(true_positive_scores, dtype=np.float64))[::-1]
    thresholds: list[float] = []
    current_recall = 0.0
    for index, score in enumerate(scores.tolist()):
        left_recall = (index + 1) / num_valid
        last = index == len(scores) - 1
        right_recall = left_recall if last else (index + 2) / num_valid
        # Skip this score while the next one is at least as near the recall point sought.
        if not last and (right_recall - current_recall) < (current_recall - left_recall):
            continue
        thresholds.append(score)
        current_recall += 1.0 / (_NUM_SAMPLE_POINTS - 1)
    return thresholds


def box_iou(first: np.ndarray, second: np.ndarray) -> np.ndarray:
    """(n, m) IoU of xyxy boxes (n, 4) and (m, 4), pixel-edge coordinates (no "+1")."""
    intersection = _intersection(first, second)
    union = _area(first)[:, None] + _area(second)[None, :] - intersection
    return np.where(union > 0, intersection / np.maximum(union, np.finfo(np.float64).tiny), 0.0)


def box_intersection_over_first(first: np.ndarray, second: np.ndarray) -> np.ndarray:
    """(n, m) intersection over the area of the first box: how much of each ``first`` box lies in each
    ``second`` one (the devkit's DontCare overlap)."""
    intersection = _intersection(first, second)
    area = _area(first)[:, None]
    return np.where(area > 0, intersection / np.maximum(area, np.finfo(np.float64).tiny), 0.0)


def _intersection(first: np.ndarray, second: np.ndarray) -> np.ndarray:
    width = np.minimum(first[:, None, 2], second[None, :, 2]) - np.maximum(first[:, None, 0], second[None, :, 0])
    height = np.minimum(first[:, None, 3], second[None, :, 3]) - np.maximum(first[:, None, 1], second[None, :, 1])
    return np.clip(width, 0, None) * np.clip(height, 0, None)


def _area(boxes: np.ndarray) -> np.ndarray:
    return (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])


@dataclass(frozen=True)
class _PreparedImage:
    """One image for one class, difficulty and minimum overlap, in the devkit's terms."""

    overlaps: np.ndarray  # (D, G) IoU of detections with ground truth
    matches: np.ndarray  # (D, G) IoU above the minimum overlap
    scores: np.ndarray  # (D,)
    ignored_gt: np.ndarray  # (G,) 0 counts, 1 ignored, -1 another class
    ignored_det: np.ndarray  # (D,) 0 counts, 1 ignored (too low)
    on_dont_care: np.ndarray  # (D,) lies on a DontCare region beyond the minimum overlap


def _prepare_image(
    truth: KittiImageGroundTruth,
    found: _Detections,
    label: int,
    class_name: str,
    difficulty: int,
    *,
    min_overlap: float,
) -> _PreparedImage:
    heights = truth.boxes_xyxy[:, 3] - truth.boxes_xyxy[:, 1]
    outside = (
        (truth.occluded > _MAX_OCCLUSION[difficulty])
        | (truth.truncated > _MAX_TRUNCATION[difficulty])
        | (heights <= _MIN_HEIGHT[difficulty])
    )
    of_class = truth.labels == label
    neighbour = np.array([kind in _NEIGHBOURS.get(class_name, ()) for kind in truth.types], dtype=bool)
    ignored_gt = np.full(len(truth.labels), -1, dtype=np.int64)
    ignored_gt[neighbour | (of_class & outside)] = 1
    ignored_gt[of_class & ~outside] = 0
    dont_care = truth.boxes_xyxy[np.array([kind == _DONT_CARE for kind in truth.types], dtype=bool).reshape(-1)]
    detection_heights = found.boxes_xyxy[:, 3] - found.boxes_xyxy[:, 1]
    overlaps = box_iou(found.boxes_xyxy, truth.boxes_xyxy)
    return _PreparedImage(
        overlaps=overlaps,
        matches=overlaps > min_overlap,
        scores=found.scores,
        ignored_gt=ignored_gt,
        ignored_det=(detection_heights < _MIN_HEIGHT[difficulty]).astype(np.int64),
        on_dont_care=(box_intersection_over_first(found.boxes_xyxy, dont_care) > min_overlap).any(axis=1),
    )


@dataclass(frozen=True)
class _Statistics:
    tp: int
    fp: int
    fn: int
    scores: np.ndarray  # scores of the true positives


def _statistics(image: _PreparedImage, *, threshold: float, compute_fp: bool) -> _Statistics:
    """The devkit's ``compute_statistics`` for one image (2D boxes, detections of one class only)."""
    num_detections = len(image.scores)
    assigned = np.zeros(num_detections, dtype=bool)
    below = image.scores < threshold if compute_fp else np.zeros(num_detections, dtype=bool)
    tp = fn = 0
    scores = []
    # Only objects of the class or ignored for it take part; with none (most images, for rare classes)
    # the loop below is skipped.
    relevant = np.nonzero(image.ignored_gt != -1)[0]
    for gt_index, ignored in zip(relevant.tolist(), image.ignored_gt[relevant].tolist()):
        candidates = image.matches[:, gt_index] & ~assigned & ~below
        chosen = -1
        if not compute_fp:
            if candidates.any():
                # The highest score; the first one among equal scores.
                chosen = int(np.argmax(np.where(candidates, image.scores, -np.inf)))
        else:
            counting = candidates & (image.ignored_det == 0)
            if counting.any():
                # A counting detection wins over an ignored one; among them the largest overlap, the first on ties.
                chosen = int(np.argmax(np.where(counting, image.overlaps[:, gt_index], -np.inf)))
            elif candidates.any():
                chosen = int(np.argmax(candidates))
        if chosen < 0:
            fn += ignored == 0
        elif ignored == 1 or image.ignored_det[chosen] == 1:
            assigned[chosen] = True
        else:
            tp += 1
            scores.append(image.scores[chosen])
            assigned[chosen] = True
    fp = 0
    if compute_fp:
        fp = int((~assigned & (image.ignored_det == 0) & ~below & ~image.on_dont_care).sum())
    return _Statistics(tp=tp, fp=fp, fn=fn, scores=np.asarray(scores, dtype=np.float64))


def _nanmean(values: Any) -> float:
    defined = [value for value in values if not math.isnan(value)]
    return float(np.mean(defined)) if defined else math.nan
