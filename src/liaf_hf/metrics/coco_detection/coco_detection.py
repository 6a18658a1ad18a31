"""COCO box AP and AR computed by pycocotools, as an ``evaluate`` metric module.

Load it offline by path: ``evaluate.load(liaf_hf.metrics.coco_detection_metric_path())``.

The module is self-contained (``evaluate`` copies this file into its cache and imports it alone)
and needs only numpy, pycocotools, datasets and evaluate. It scores exactly as
``liaf_hf.metrics.CocoDetectionEvaluator`` does and returns the same keys; the tests
(``tests/test_metrics_coco.py``) keep the two equal by comparing both with pycocotools run on JSON
files.
"""

from __future__ import annotations

import contextlib
import io
import math
from collections.abc import Sequence
from typing import Any

import datasets
import evaluate
import numpy as np
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

_DESCRIPTION = """\
COCO-style detection metrics from pycocotools' COCOeval (iouType "bbox"): the 12 summary stats
(AP, AP50, AP75, APs, APm, APl, AR1, AR10, AR100, ARs, ARm, ARl) and AP@[.50:.95] per class
(AP_<class name>). The ground truth is built from the references, one per image; every referenced
image counts, with or without predictions.
"""

_KWARGS_DESCRIPTION = """\
Args:
    predictions: one dict per image, in the order of `references`:
        scores (n,) floats; labels (n,) ints, the class labels; boxes (n, 4) absolute xyxy pixels in
        the original image (the output of `post_process_object_detection`).
    references: one dict per image:
        image_id int, unique; boxes (m, 4) COCO xywh absolute pixels; labels (m,) ints; area (m,)
        floats (the COCO `area`, used for the small/medium/large ranges); iscrowd (m,) 0 or 1.
    class_names: names indexed by label. Given: the categories are labels 0 .. len - 1 and a
        predicted label outside them is an error. Not given: the categories are the labels that
        occur, named by their number.
    max_detections: detections per image and category that count (COCOeval's maxDets[2], > 10);
        the AR key is AR<max_detections>.
Returns:
    dict of floats: the 12 stats (-1.0 where pycocotools has nothing to average, as it reports) and
    AP_<class name> for every category (NaN for a category without non-crowd ground truth).
Example:
    >>> metric = evaluate.load(coco_detection_metric_path())
    >>> metric.compute(
    ...     predictions=[{"scores": [0.9], "labels": [0], "boxes": [[10.0, 10.0, 50.0, 50.0]]}],
    ...     references=[{"image_id": 1, "boxes": [[10.0, 10.0, 40.0, 40.0]], "labels": [0],
    ...                  "area": [1600.0], "iscrowd": [0]}],
    ... )["AP50"]
    0.9999999999999999
"""

_CITATION = """\
@inproceedings{lin2014microsoft,
  title={Microsoft COCO: Common Objects in Context},
  author={Lin, Tsung-Yi and Maire, Michael and Belongie, Serge and Hays, James and
          Perona, Pietro and Ramanan, Deva and Doll{\'a}r, Piotr and Zitnick, C. Lawrence},
  booktitle={European Conference on Computer Vision (ECCV)},
  year={2014}
}
"""

# (key, is_ap, IoU threshold or None for .50:.95, area range label, index into params.maxDets),
# in the order of COCOeval.stats.
_SUMMARY_STATS = (
    ("AP", True, None, "all", 2),
    ("AP50", True, 0.5, "all", 2),
    ("AP75", True, 0.75, "all", 2),
    ("APs", True, None, "small", 2),
    ("APm", True, None, "medium", 2),
    ("APl", True, None, "large", 2),
    ("AR1", False, None, "all", 0),
    ("AR10", False, None, "all", 1),
    ("AR{max_detections}", False, None, "all", 2),
    ("ARs", False, None, "small", 2),
    ("ARm", False, None, "medium", 2),
    ("ARl", False, None, "large", 2),
)

_FLOATS = datasets.Sequence(datasets.Value("float64"))
_INTS = datasets.Sequence(datasets.Value("int64"))
_BOXES = datasets.Sequence(datasets.Sequence(datasets.Value("float64"), length=4))


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class CocoDetection(evaluate.Metric):
    """COCO detection AP/AR from per-image predictions and references (see the module docstring)."""

    def _info(self) -> evaluate.MetricInfo:
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            # float64 so that boxes and scores reach pycocotools unrounded.
            features=datasets.Features(
                {
                    "predictions": {"scores": _FLOATS, "labels": _INTS, "boxes": _BOXES},
                    "references": {
                        "image_id": datasets.Value("int64"),
                        "boxes": _BOXES,
                        "labels": _INTS,
                        "area": _FLOATS,
                        "iscrowd": _INTS,
                    },
                }
            ),
            reference_urls=["https://github.com/cocodataset/cocoapi"],
        )

    def _compute(
        self,
        predictions: Sequence[dict[str, Any]],
        references: Sequence[dict[str, Any]],
        class_names: Sequence[str] | None = None,
        max_detections: int = 100,
    ) -> dict[str, float]:
        if max_detections <= 10:
            raise ValueError(f"max_detections must exceed 10 (for AR1, AR10), got {max_detections}")
        if class_names is None:
            labels = {label for item in (*references, *predictions) for label in item["labels"]}
            names = {label: str(label) for label in sorted(labels)}
        else:
            names = dict(enumerate(class_names))
        if len(set(names.values())) != len(names):
            raise ValueError(f"class names must be unique, got {sorted(names.values())}")
        categories = [{"id": label, "name": name} for label, name in names.items()]
        images = [{"id": reference["image_id"]} for reference in references]
        if len({image["id"] for image in images}) != len(images):
            raise ValueError("references: every image_id must be unique")
        results = _results(predictions, references, names)

        with contextlib.redirect_stdout(io.StringIO()):
            ground_truth = _coco_from_dict(
                {
                    "images": images,
                    "annotations": _annotations(references),
                    "categories": categories,
                }
            )
            # loadRes raises on an empty list; an index with no annotations scores the same way.
            detections = (
                ground_truth.loadRes(results)
                if results
                else _coco_from_dict(
                    {"images": images, "annotations": [], "categories": categories}
                )
            )
            cocoeval = COCOeval(ground_truth, detections, iouType="bbox")
            cocoeval.params.maxDets = [1, 10, max_detections]
            cocoeval.evaluate()
            cocoeval.accumulate()
        return _summarize(cocoeval, names)


def _annotations(references: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """COCO ground-truth annotations; ids from 1, as COCOeval reads a matched id 0 as unmatched."""
    annotations = []
    for reference in references:
        for box, label, area, iscrowd in zip(
            reference["boxes"], reference["labels"], reference["area"], reference["iscrowd"]
        ):
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": reference["image_id"],
                    "category_id": label,
                    "bbox": list(box),
                    "area": area,
                    "iscrowd": iscrowd,
                }
            )
    return annotations


def _results(
    predictions: Sequence[dict[str, Any]],
    references: Sequence[dict[str, Any]],
    names: dict[int, str],
) -> list[dict[str, Any]]:
    """The detections as a COCO results file holds them (xywh ``bbox``)."""
    results = []
    for reference, prediction in zip(references, predictions):
        unknown = set(prediction["labels"]) - set(names)
        if unknown:
            raise ValueError(
                f"image_id {reference['image_id']}: labels {sorted(unknown)} are not in class_names"
            )
        boxes_xyxy = np.asarray(prediction["boxes"], dtype=np.float64).reshape(-1, 4)
        # The xywh a results file would hold: width and height are differences of the corners.
        boxes_xywh = np.concatenate([boxes_xyxy[:, :2], boxes_xyxy[:, 2:] - boxes_xyxy[:, :2]], 1)
        results.extend(
            {"image_id": reference["image_id"], "category_id": label, "bbox": box, "score": score}
            for box, score, label in zip(
                boxes_xywh.tolist(), prediction["scores"], prediction["labels"]
            )
        )
    return results


def _summarize(cocoeval: COCOeval, class_names: dict[int, str]) -> dict[str, float]:
    """The 12 COCOeval stats, computed as ``COCOeval.summarize`` does, and per-class AP."""
    params = cocoeval.params
    precision = cocoeval.eval[
        "precision"
    ]  # (iou thresholds, recall thresholds, classes, areas, max dets)
    recall = cocoeval.eval["recall"]  # (iou thresholds, classes, areas, max dets)
    metrics = {}
    for key, is_ap, iou_threshold, area, max_dets_index in _SUMMARY_STATS:
        values = precision if is_ap else recall
        if iou_threshold is not None:
            values = values[np.where(iou_threshold == params.iouThrs)[0]]
        values = values[..., params.areaRngLbl.index(area), max_dets_index]
        metrics[key.format(max_detections=params.maxDets[2])] = _mean_defined(
            values, undefined=-1.0
        )
    all_areas = params.areaRngLbl.index("all")
    for class_index, category_id in enumerate(params.catIds):
        class_precision = precision[:, :, class_index, all_areas, -1]
        metrics[f"AP_{class_names[category_id]}"] = _mean_defined(
            class_precision, undefined=math.nan
        )
    return metrics


def _mean_defined(values: np.ndarray, *, undefined: float) -> float:
    defined = values[values > -1]
    return float(np.mean(defined)) if defined.size else undefined


def _coco_from_dict(content: dict[str, Any]) -> COCO:
    coco = COCO()
    coco.dataset = content
    coco.createIndex()
    return coco
