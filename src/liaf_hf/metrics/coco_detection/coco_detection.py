"""COCO box AP and AR computed by pycocotools (or faster-coco-eval), as an ``evaluate`` metric module.

Load it offline by path: ``evaluate.load(liaf_hf.metrics.coco_detection_metric_path())``.

``evaluate`` copies this file into its cache and imports it alone, so it uses only absolute imports;
it ships inside liaf_hf, so ``liaf_hf.metrics`` is always importable beside it. It builds the ground
truth from the references and scores with ``liaf_hf.metrics.CocoDetectionEvaluator``, so it returns the
same keys and numbers; the tests compare both with pycocotools run on JSON files.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import datasets
import evaluate

from liaf_hf.metrics.coco import CocoDetectionEvaluator, coco_ground_truth_from_dict

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
    backend: "pycocotools", "faster_coco_eval" (the `fast-metrics` extra) or "auto" (faster-coco-eval
        when installed); not given: the environment variable LIAF_HF_COCO_BACKEND, else pycocotools.
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
        backend: str | None = None,
    ) -> dict[str, float]:
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
        ground_truth = coco_ground_truth_from_dict(
            {"images": images, "annotations": _annotations(references), "categories": categories}
        )
        evaluator = CocoDetectionEvaluator(ground_truth, max_detections=max_detections, backend=backend)
        evaluator.update([reference["image_id"] for reference in references], predictions)
        return evaluator.compute()


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
