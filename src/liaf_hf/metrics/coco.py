"""COCO box AP and AR by pycocotools (or faster-coco-eval), for detectors evaluated with ``transformers.Trainer``.

Three layers, each usable alone:

* ground truth as an in-memory ``pycocotools.coco.COCO``: :func:`coco_ground_truth_from_dataset`
  (a ``datasets.Dataset`` with the Hub detection schema) or :func:`coco_ground_truth_from_file`
  (an instances JSON);
* :class:`CocoDetectionEvaluator`: ``update`` with per-image detections, ``compute`` the metrics;
* :func:`make_coco_compute_metrics`: a ``compute_metrics`` for the Trainer around one evaluator.

The numbers are exactly those pycocotools gives for a results JSON holding the same detections:
boxes are turned from absolute xyxy into xywh the way such a file is written, and scored through
``COCO.loadRes``, ``COCOeval.evaluate`` and ``COCOeval.accumulate``.

Scoring backends (``backend=`` of :class:`CocoDetectionEvaluator` and :func:`make_coco_compute_metrics`;
when not given, the environment variable ``LIAF_HF_COCO_BACKEND``, else ``"pycocotools"``):

* ``"pycocotools"``: the reference;
* ``"faster_coco_eval"``: faster-coco-eval's C++ ``COCOeval_faster`` on the same ground truth and
  detections (``pip install "liaf-hf[fast-metrics]"``). Its precision is ``tp / (tp + fp)`` where
  pycocotools divides by ``tp + fp + np.spacing(1)``, so a precision of 1 is 1.0 there and
  0.9999999999999998 here, and averaged stats can differ in the last bit or two (a few 1e-16);
* ``"auto"``: faster-coco-eval when it is importable, else pycocotools.

Metric keys (values are Python floats)::

    AP AP50 AP75 APs APm APl            the six COCOeval AP stats
    AR1 AR10 AR100 ARs ARm ARl          the six AR stats ("AR100" is AR<max_detections>)
    AP_<class name>                     AP@[.50:.95], area "all", per ground-truth category

As in pycocotools, a summary stat is -1.0 when nothing is defined for it (no ground truth of that
size in the evaluated images, say). A per-class AP is NaN when the category has no non-crowd ground
truth in the evaluated images; the key is always present, so every evaluation logs the same keys.

Example::

    >>> gt = coco_ground_truth_from_dataset(eval_dataset)  # doctest: +SKIP
    >>> evaluator = CocoDetectionEvaluator(gt)  # doctest: +SKIP
    >>> evaluator.update([image_id], [{"scores": s, "labels": l, "boxes": b}])  # doctest: +SKIP
    >>> evaluator.compute()["AP"]  # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import copy
import importlib
import io
import logging
import math
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from os import PathLike
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any

import numpy as np
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from liaf_hf.data.coco import objects_as_rows
from liaf_hf.errors import DataError, LiafError

if TYPE_CHECKING:
    import datasets
    from transformers import EvalPrediction

__all__ = [
    "COCO_BACKENDS",
    "COCO_BACKEND_ENV",
    "CocoDetectionEvaluator",
    "coco_detection_metric_path",
    "coco_ground_truth_from_dataset",
    "coco_ground_truth_from_file",
    "make_coco_compute_metrics",
    "resolve_coco_backend",
]

logger = logging.getLogger(__name__)

#: The names ``backend=`` takes (see the module docstring).
COCO_BACKENDS = ("pycocotools", "faster_coco_eval", "auto")
#: The environment variable that picks the backend wherever none is passed (scripts, KITTI's COCO keys).
COCO_BACKEND_ENV = "LIAF_HF_COCO_BACKEND"

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


def resolve_coco_backend(backend: str | None = None) -> str:
    """The backend that will score: ``"pycocotools"`` or ``"faster_coco_eval"``.

    Args:
        backend: One of :data:`COCO_BACKENDS`; None reads ``LIAF_HF_COCO_BACKEND`` (default
            ``"pycocotools"``). ``"auto"`` becomes ``"faster_coco_eval"`` when that imports.

    Raises:
        ValueError: An unknown backend name.
        LiafError: ``"faster_coco_eval"`` asked for while the package is not installed.
    """
    name = os.environ.get(COCO_BACKEND_ENV, "pycocotools") if backend is None else backend
    if name not in COCO_BACKENDS:
        source = f"{COCO_BACKEND_ENV}={name!r}" if backend is None else f"backend {name!r}"
        raise ValueError(f"unknown COCO {source}; choose one of {', '.join(COCO_BACKENDS)}")
    if name == "pycocotools":
        return name
    if name == "auto":
        return "faster_coco_eval" if _import_faster_coco_eval(required=False) is not None else "pycocotools"
    _import_faster_coco_eval(required=True)
    return name


def coco_ground_truth_from_dataset(dataset: datasets.Dataset) -> COCO:
    """An in-memory COCO ground truth from a dataset with the Hub detection schema.

    Reads only ``image_id``, ``width``, ``height`` and ``objects`` (no image is decoded, and any
    transform set with ``with_transform`` is bypassed). Category ids are the contiguous labels of
    the ``objects.category`` ClassLabel, named by it, so the identity ``label_to_category_id``
    applies. ``bbox`` is COCO xywh in absolute pixels; ``area`` is taken as stored (box area when
    absent); ``iscrowd`` is kept, so COCOeval ignores crowd regions as usual. Annotation ids are
    renumbered from 1: COCOeval treats a matched annotation id of 0 as "unmatched".

    ``objects`` may be a dict of lists (``Sequence({...})`` in datasets 5) or a list of dicts.

    Raises:
        DataError: ``objects.category`` is not a ClassLabel, an image id repeats, or an object has
            no valid category.
    """
    names = _class_label_names(dataset.features)
    columns = [name for name in ("image_id", "width", "height", "objects") if name in dataset.column_names]
    table = dataset.with_format(None).select_columns(columns).to_dict()
    images: list[dict[str, Any]] = []
    annotations: list[dict[str, Any]] = []
    seen_image_ids: set[int] = set()
    for row in range(len(table["image_id"])):
        image_id = int(table["image_id"][row])
        if image_id in seen_image_ids:
            raise DataError(f"dataset: image_id {image_id} appears in more than one row")
        seen_image_ids.add(image_id)
        image = {"id": image_id}
        for size in ("width", "height"):
            if size in table:
                image[size] = int(table[size][row])
        images.append(image)
        for obj in objects_as_rows(table["objects"][row]):
            category = int(obj["category"])
            if not 0 <= category < len(names):
                raise DataError(f"dataset: image_id {image_id} has an object with category {category}")
            x, y, w, h = (float(v) for v in obj["bbox"])
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": image_id,
                    "category_id": category,
                    "bbox": [x, y, w, h],
                    "area": float(obj["area"]) if "area" in obj else w * h,
                    "iscrowd": int(bool(obj.get("iscrowd", 0))),
                }
            )
    categories = [{"id": label, "name": name} for label, name in enumerate(names)]
    return _coco_from_dict({"images": images, "annotations": annotations, "categories": categories})


def coco_ground_truth_from_file(path: str | PathLike[str]) -> COCO:
    """The COCO ground truth of an instances JSON, with pycocotools' prints silenced.

    Raises:
        DataError: An annotation has id 0, which COCOeval would count as never matched.
    """
    with _quiet():
        ground_truth = COCO(str(Path(path)))
    if 0 in ground_truth.anns:
        raise DataError(f"{path}: annotation id 0; COCOeval counts a match to it as a false positive")
    return ground_truth


@dataclass(frozen=True)
class _ImageDetections:
    """One image's detections as they go into a results JSON."""

    boxes_xywh: np.ndarray  # (n, 4) float64, absolute pixels
    scores: np.ndarray  # (n,) float64
    category_ids: np.ndarray  # (n,) int64, ground-truth category ids


class CocoDetectionEvaluator:
    """Accumulates per-image detections and scores them against a COCO ground truth.

    Args:
        ground_truth: The ground truth (see :func:`coco_ground_truth_from_dataset`,
            :func:`coco_ground_truth_from_file`).
        label_to_category_id: ``label_to_category_id[label]`` is the ground truth's category id for
            a model label; needed when scoring contiguous labels against an original COCO file (see
            ``liaf_hf.data.coco.coco_category_ids``). None: labels are category ids already.
        class_names: Names indexed by model label, for the ``AP_<name>`` keys; by default the
            ground truth's category names. Categories no label maps to keep their ground-truth name.
        max_detections: Detections per image and category that count (COCOeval's ``maxDets[2]``);
            the AR key is ``AR<max_detections>``. Must exceed 10.
        only_seen_images: Evaluate only the images passed to :meth:`update` (an image passed with
            no detections counts). By default every ground-truth image counts, and an image never
            updated is one where the detector found nothing: what a Trainer evaluation over the
            whole eval set needs. (With only seen images and nothing updated, every stat is -1.)
        backend: Which library scores (module docstring): ``"pycocotools"``, ``"faster_coco_eval"``
            or ``"auto"``; None reads ``LIAF_HF_COCO_BACKEND``, else pycocotools. The resolved name
            is :attr:`backend`.

    Only compact per-image arrays are kept (xywh boxes, scores, category ids): memory grows with the
    number of detections, never with the model's dense outputs. Updating an image again replaces
    its detections (a distributed sampler may repeat images to even out the last batch). Ties in
    score within an image and category keep the order given, as they would in a results file.

    Example::

        >>> path = "instances_val.json"
        >>> evaluator = CocoDetectionEvaluator(  # doctest: +SKIP
        ...     coco_ground_truth_from_file(path), label_to_category_id=coco_category_ids(path)
        ... )
        >>> found = image_processor.post_process_object_detection(  # doctest: +SKIP
        ...     outputs, threshold=0.0, target_sizes=original_sizes
        ... )
        >>> evaluator.update(image_ids, found)  # doctest: +SKIP
        >>> metrics = evaluator.compute()  # doctest: +SKIP
    """

    def __init__(
        self,
        ground_truth: COCO,
        *,
        label_to_category_id: Sequence[int] | None = None,
        class_names: Sequence[str] | None = None,
        max_detections: int = 100,
        only_seen_images: bool = False,
        backend: str | None = None,
    ) -> None:
        if max_detections <= 10:
            raise ValueError(f"max_detections must exceed 10 (for AR1, AR10), got {max_detections}")
        self.backend = resolve_coco_backend(backend)
        self.ground_truth = ground_truth
        self.max_detections = max_detections
        self.only_seen_images = only_seen_images
        self._category_ids = np.asarray(sorted(ground_truth.getCatIds()), dtype=np.int64)
        self._image_ids = frozenset(ground_truth.getImgIds())
        self._label_to_category_id = _check_label_map(label_to_category_id, self._category_ids)
        self._class_names = _category_names(ground_truth, self._label_to_category_id, class_names)
        self._detections: dict[int, _ImageDetections] = {}
        self._faster_ground_truth: Any = None  # faster_coco_eval.COCO, built on first compute()

    def reset(self) -> None:
        """Forget every detection passed to :meth:`update`."""
        self._detections = {}

    def update(self, image_ids: Sequence[Any], detections: Sequence[Mapping[str, Any]]) -> None:
        """Add the detections of a batch of images.

        Args:
            image_ids: One ground-truth image id per image (int, or a 0-d / 1-element tensor).
            detections: One dict per image: ``scores`` (n,), ``labels`` (n,) model labels,
                ``boxes`` (n, 4) absolute xyxy pixels in the original image; torch tensors or numpy
                arrays, as ``post_process_object_detection`` returns them.

        Raises:
            ValueError: Mismatched lengths or shapes, an image id the ground truth lacks, or a label
                that maps to no ground-truth category.
        """
        if len(image_ids) != len(detections):
            raise ValueError(f"got {len(image_ids)} image ids and {len(detections)} detection dicts")
        for raw_image_id, image_detections in zip(image_ids, detections):
            image_id = _scalar_image_id(raw_image_id)
            if image_id not in self._image_ids:
                raise ValueError(f"image_id {image_id} is not in the ground truth")
            self._detections[image_id] = self._to_image_detections(image_id, image_detections)

    def compute(self) -> dict[str, float]:
        """Score everything updated so far (see the module docstring for the keys)."""
        results = [
            {"image_id": image_id, "category_id": category_id, "bbox": box, "score": score}
            for image_id, found in self._detections.items()
            for box, score, category_id in zip(
                found.boxes_xywh.tolist(), found.scores.tolist(), found.category_ids.tolist()
            )
        ]
        with _quiet() as pycocotools_output:
            if self.backend == "faster_coco_eval":
                ground_truth = self._faster_coco_ground_truth()
                # print (not the default logger) so its messages land in the same captured output.
                cocoeval = _import_faster_coco_eval(required=True).COCOeval_faster(
                    ground_truth, _load_results(ground_truth, results), iouType="bbox", print_function=print
                )
            else:
                cocoeval = COCOeval(self.ground_truth, _load_results(self.ground_truth, results), iouType="bbox")
            cocoeval.params.maxDets = [1, 10, self.max_detections]
            if self.only_seen_images:
                cocoeval.params.imgIds = sorted(self._detections)
            cocoeval.evaluate()
            cocoeval.accumulate()
        metrics = _summarize(cocoeval, self._class_names)
        logger.debug(
            "COCO evaluation (%s) of %d detections on %d images\n%s%s",
            self.backend,
            len(results),
            len(cocoeval.params.imgIds),
            pycocotools_output.getvalue(),
            " ".join(f"{key}={value:.4f}" for key, value in metrics.items()),
        )
        return metrics

    def _faster_coco_ground_truth(self) -> Any:
        """faster-coco-eval's index of the ground truth, built once per evaluator.

        Built from a deep copy of ``ground_truth.dataset``: faster-coco-eval writes into the annotation
        dicts it indexes (``ignore``), which must not reach the pycocotools object the caller holds.
        """
        if self._faster_ground_truth is None:
            faster_coco_eval = _import_faster_coco_eval(required=True)
            self._faster_ground_truth = faster_coco_eval.COCO(copy.deepcopy(self.ground_truth.dataset))
        return self._faster_ground_truth

    def _to_image_detections(self, image_id: int, detections: Mapping[str, Any]) -> _ImageDetections:
        boxes_xyxy = _to_numpy(detections["boxes"]).astype(np.float64).reshape(-1, 4)
        scores = _to_numpy(detections["scores"]).astype(np.float64).reshape(-1)
        labels = _to_numpy(detections["labels"]).astype(np.int64).reshape(-1)
        if not len(boxes_xyxy) == len(scores) == len(labels):
            raise ValueError(
                f"image_id {image_id}: {len(boxes_xyxy)} boxes, {len(scores)} scores, {len(labels)} labels"
            )
        if self._label_to_category_id is None:
            category_ids = labels
        else:
            out_of_range = (labels < 0) | (labels >= len(self._label_to_category_id))
            if out_of_range.any():
                raise ValueError(
                    f"image_id {image_id}: labels {sorted(set(labels[out_of_range].tolist()))} are "
                    f"outside label_to_category_id (length {len(self._label_to_category_id)})"
                )
            category_ids = self._label_to_category_id[labels]
        unknown = ~np.isin(category_ids, self._category_ids)
        if unknown.any():
            raise ValueError(
                f"image_id {image_id}: category ids {sorted(set(category_ids[unknown].tolist()))} "
                "are not in the ground truth; pass label_to_category_id to map model labels to its "
                "category ids"
            )
        # The xywh a results file would hold: width and height are differences of the corners.
        boxes_xywh = np.concatenate([boxes_xyxy[:, :2], boxes_xyxy[:, 2:] - boxes_xyxy[:, :2]], axis=1)
        return _ImageDetections(boxes_xywh=boxes_xywh, scores=scores, category_ids=category_ids)


def make_coco_compute_metrics(
    ground_truth: COCO,
    *,
    label_to_category_id: Sequence[int] | None = None,
    class_names: Sequence[str] | None = None,
    max_detections: int = 100,
    only_seen_images: bool = False,
    backend: str | None = None,
) -> Callable[..., dict[str, float]]:
    """A ``compute_metrics`` for ``transformers.Trainer`` reporting COCO AP (keys without prefix).

    The arguments are those of :class:`CocoDetectionEvaluator`. The Trainer must be given:

    * ``preprocess_logits_for_metrics`` turning the model's outputs into a float tensor (B, K, 6) of
      ``(x1, y1, x2, y2, score, label)``, boxes in absolute pixels of the original image, rows with
      a score below 0 being padding (the Trainer itself pads with -100);
    * labels: per batch a list of B dicts, each with ``image_id`` (an int or a one-element tensor);
    * ``remove_unused_columns=False`` and either ``batch_eval_metrics=True`` or
      ``eval_do_concat_batches=False`` (concatenated batches would merge the label dicts).

    Both Trainer modes work. With ``batch_eval_metrics=True`` the Trainer calls this once per batch:
    it returns ``{}`` until ``compute_result`` is True (the last batch), then the metrics, and
    starts afresh. Otherwise it is called once, with a list of per-batch predictions and of
    per-batch labels. A list of predictions is taken as the second mode, an array as the first.

    Dense outputs are never held here: the Trainer keeps only what ``preprocess_logits_for_metrics``
    returns (K detections per image, not the per-anchor logits), and each batch is cut at once into
    per-image arrays without the padding rows, which are all the evaluator stores. In batch mode
    even the (B, K, 6) tensors are dropped after each batch.

    Example::

        >>> trainer = Trainer(  # doctest: +SKIP
        ...     model, args, eval_dataset=eval_dataset, data_collator=collate,
        ...     preprocess_logits_for_metrics=to_detections,
        ...     compute_metrics=make_coco_compute_metrics(ground_truth),
        ... )
    """
    evaluator = CocoDetectionEvaluator(
        ground_truth,
        label_to_category_id=label_to_category_id,
        class_names=class_names,
        max_detections=max_detections,
        only_seen_images=only_seen_images,
        backend=backend,
    )

    def compute_metrics(eval_pred: EvalPrediction, compute_result: bool = True) -> dict[str, float]:
        for predictions, labels in _trainer_batches(eval_pred.predictions, eval_pred.label_ids):
            evaluator.update(*_split_batch(predictions, labels))
        if not compute_result:
            return {}
        try:
            return evaluator.compute()
        finally:
            evaluator.reset()

    return compute_metrics


def coco_detection_metric_path() -> str:
    """Folder of the local ``evaluate`` module ``coco_detection``; ``evaluate.load`` it offline."""
    return str(Path(__file__).resolve().parent / "coco_detection")


def _trainer_batches(predictions: Any, label_ids: Any) -> list[tuple[Any, Any]]:
    """``(predictions, labels)`` per batch, from either Trainer mode."""
    if isinstance(predictions, (list, tuple)):
        # eval_do_concat_batches=False: one (B, K, 6) array and one list of B label dicts per batch.
        if len(predictions) != len(label_ids):
            raise ValueError(f"{len(predictions)} prediction batches, {len(label_ids)} label batches")
        return list(zip(predictions, label_ids))
    # batch_eval_metrics=True: this batch's (B, K, 6) tensor and its list of B label dicts.
    return [(predictions, label_ids)]


def _split_batch(predictions: Any, labels: Sequence[Mapping[str, Any]]) -> tuple[list[int], list[dict[str, Any]]]:
    """Image ids and per-image detection dicts from a (B, K, 6) batch, padding rows dropped."""
    predictions = _to_numpy(predictions)
    if predictions.ndim != 3 or predictions.shape[-1] != 6:
        raise ValueError(
            "compute_metrics expects per batch a (B, K, 6) array of (x1, y1, x2, y2, score, "
            f"label), got shape {predictions.shape}; return that from preprocess_logits_for_metrics"
        )
    if isinstance(labels, Mapping) or len(labels) != len(predictions):
        raise ValueError(
            f"a batch of {len(predictions)} predictions needs a list of {len(predictions)} label "
            "dicts; set eval_do_concat_batches=False (or batch_eval_metrics=True) so the Trainer "
            "does not merge batches"
        )
    detections = []
    for image_predictions in predictions:
        kept = image_predictions[image_predictions[:, 4] >= 0]
        detections.append({"boxes": kept[:, :4], "scores": kept[:, 4], "labels": kept[:, 5]})
    return [label["image_id"] for label in labels], detections


def _summarize(cocoeval: Any, class_names: Mapping[int, str]) -> dict[str, float]:
    """The 12 COCOeval stats and per-class AP, from ``cocoeval.eval`` after ``accumulate()``.

    ``cocoeval`` is pycocotools' ``COCOeval`` or faster-coco-eval's ``COCOeval_faster``: both leave
    ``eval["precision"]``, ``eval["recall"]`` and ``params`` in the same layout.

    Mirrors ``COCOeval.summarize`` (same slices, same mean over entries > -1), which cannot be
    called itself because it hard-codes 100 detections for the first stat.
    """
    params = cocoeval.params
    # precision: (iou thresholds, recall thresholds, classes, areas, max dets);
    # recall: (iou thresholds, classes, areas, max dets); -1 where undefined.
    precision, recall = cocoeval.eval["precision"], cocoeval.eval["recall"]
    metrics = {}
    for key, is_ap, iou_threshold, area, max_dets_index in _SUMMARY_STATS:
        values = precision if is_ap else recall
        if iou_threshold is not None:
            values = values[np.where(iou_threshold == params.iouThrs)[0]]
        values = values[..., params.areaRngLbl.index(area), max_dets_index]
        metrics[key.format(max_detections=params.maxDets[2])] = _mean_defined(values, undefined=-1.0)
    all_areas = params.areaRngLbl.index("all")
    for class_index, category_id in enumerate(params.catIds):
        class_precision = precision[:, :, class_index, all_areas, -1]
        metrics[f"AP_{class_names[category_id]}"] = _mean_defined(class_precision, undefined=math.nan)
    return metrics


def _mean_defined(values: np.ndarray, *, undefined: float) -> float:
    """Mean over the entries COCOeval defined (> -1), as ``COCOeval.summarize`` takes it."""
    defined = values[values > -1]
    return float(np.mean(defined)) if defined.size else undefined


def _import_faster_coco_eval(*, required: bool) -> ModuleType | None:
    """The ``faster_coco_eval`` module; None when it is not installed, unless ``required``.

    Imported on use, never at module import, so the library works without the optional extra.
    """
    try:
        return importlib.import_module("faster_coco_eval")
    except ImportError as error:
        if not required:
            return None
        raise LiafError(
            'the COCO backend "faster_coco_eval" needs faster-coco-eval, which is not installed: '
            'pip install "liaf-hf[fast-metrics]"'
        ) from error


def _load_results(ground_truth: Any, results: list[dict[str, Any]]) -> Any:
    """``ground_truth.loadRes(results)``, also for no results at all.

    ``ground_truth`` is pycocotools' or faster-coco-eval's ``COCO`` and the results object is of the
    same class. With no results pycocotools' ``loadRes`` raises, as faster-coco-eval's does before 1.8,
    so the empty results index is built here. Called inside :func:`_quiet`, which takes the prints.
    """
    if results:
        return ground_truth.loadRes(results)
    empty = type(ground_truth)()
    empty.dataset = {
        "info": copy.deepcopy(ground_truth.dataset.get("info", {})),
        "images": list(ground_truth.dataset["images"]),
        "categories": copy.deepcopy(ground_truth.dataset["categories"]),
        "annotations": [],
    }
    empty.createIndex()
    return empty


def coco_ground_truth_from_dict(content: dict[str, Any]) -> COCO:
    """A pycocotools ``COCO`` index of an in-memory instances dict (``images``, ``annotations``,
    ``categories``), built without pycocotools' prints."""
    return _coco_from_dict(content)


def _coco_from_dict(content: dict[str, Any]) -> COCO:
    coco = COCO()
    coco.dataset = content
    with _quiet():
        coco.createIndex()
    return coco


@contextlib.contextmanager
def _quiet():
    """Capture pycocotools' prints; yields the buffer."""
    buffer = io.StringIO()
    with contextlib.redirect_stdout(buffer):
        yield buffer


def _check_label_map(label_to_category_id: Sequence[int] | None, category_ids: np.ndarray) -> np.ndarray | None:
    if label_to_category_id is None:
        return None
    mapping = np.asarray(label_to_category_id, dtype=np.int64).reshape(-1)
    unknown = sorted(set(mapping.tolist()) - set(category_ids.tolist()))
    if unknown:
        raise ValueError(f"label_to_category_id names category ids {unknown} that the ground truth does not have")
    if len(set(mapping.tolist())) != len(mapping):
        raise ValueError("label_to_category_id maps two labels to the same category id")
    return mapping


def _category_names(
    ground_truth: COCO, label_to_category_id: np.ndarray | None, class_names: Sequence[str] | None
) -> dict[int, str]:
    """Name of each ground-truth category id, for the per-class keys."""
    names = {category_id: str(category["name"]) for category_id, category in ground_truth.cats.items()}
    if class_names is not None:
        if label_to_category_id is not None and len(class_names) != len(label_to_category_id):
            raise ValueError(
                f"{len(class_names)} class_names but {len(label_to_category_id)} entries in label_to_category_id"
            )
        for label, name in enumerate(class_names):
            category_id = label if label_to_category_id is None else int(label_to_category_id[label])
            if category_id not in names:
                raise ValueError(
                    f"class_names[{label}] ({name!r}) is for category id {category_id}, which the "
                    "ground truth does not have"
                )
            names[category_id] = str(name)
    if len(set(names.values())) != len(names):
        raise ValueError(f"class names must be unique to name the AP_<name> keys, got {sorted(names.values())}")
    return names


def _class_label_names(features: datasets.Features) -> list[str]:
    """Names of the ``objects.category`` ClassLabel, whichever way ``objects`` is nested."""
    objects = features["objects"]
    # A list of dicts wraps the dict in ``.feature``; a dict of lists wraps each field instead.
    category = (objects.feature if hasattr(objects, "feature") else objects)["category"]
    category = getattr(category, "feature", category)
    names = getattr(category, "names", None)
    if names is None:
        raise DataError(f"dataset: objects.category must be a ClassLabel, got {category!r}")
    return list(names)


def _scalar_image_id(image_id: Any) -> int:
    values = _to_numpy(image_id).reshape(-1)
    if values.size != 1:
        raise ValueError(f"an image_id must be one number, got {values.size} values")
    return int(values[0])


def _to_numpy(values: Any) -> np.ndarray:
    """A numpy array from a torch tensor (any device, bfloat16 included), array, list or number."""
    if hasattr(values, "detach"):
        values = values.detach().cpu()
        if values.is_floating_point():
            values = values.double()
        return values.numpy()
    return np.asarray(values)
