"""COCO metrics: every path must give exactly pycocotools' numbers on the equivalent JSON files.

Box coordinates are multiples of 1/4, so float32 storage and the xywh <-> xyxy round trip are exact
and "the same numbers" can be asserted with ==.
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import sys
from collections.abc import Callable
from pathlib import Path

import datasets
import numpy as np
import pytest
import torch
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from liaf_hf.errors import DataError, LiafError
from liaf_hf.metrics import (
    COCO_BACKENDS,
    CocoDetectionEvaluator,
    coco_detection_metric_path,
    coco_ground_truth_from_dataset,
    coco_ground_truth_from_file,
    make_coco_compute_metrics,
    resolve_coco_backend,
)

STAT_KEYS = ["AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100", "ARs", "ARm", "ARl"]

# Category ids in the file are not contiguous; "fish" has no ground truth at all.
CATEGORIES = [
    {"id": 3, "name": "cat"},
    {"id": 7, "name": "dog"},
    {"id": 12, "name": "bird"},
    {"id": 20, "name": "fish"},
]
LABEL_TO_CATEGORY_ID = [3, 7, 12, 20]
CLASS_NAMES = ["cat", "dog", "bird", "fish"]

IMAGES = [
    {"id": 1, "width": 640, "height": 480, "file_name": "1.png"},
    {"id": 2, "width": 640, "height": 480, "file_name": "2.png"},
    {"id": 3, "width": 320, "height": 320, "file_name": "3.png"},
    {"id": 4, "width": 500, "height": 400, "file_name": "4.png"},  # ground truth, no detections
    {"id": 5, "width": 200, "height": 200, "file_name": "5.png"},  # no ground truth, one detection
]

# (image id, category id, xywh, area, iscrowd); areas span small (< 32^2), medium and large.
GROUND_TRUTH = [
    (1, 7, [100.0, 50.0, 200.5, 150.25], 30125.125, 0),
    (1, 3, [10.0, 10.0, 20.0, 20.0], 400.0, 0),
    (1, 3, [300.0, 300.0, 50.0, 40.0], 2000.0, 0),
    (2, 12, [50.5, 60.0, 60.0, 48.0], 2880.0, 0),
    (2, 7, [0.0, 0.0, 300.0, 200.0], 60000.0, 1),
    (2, 7, [400.0, 100.0, 120.0, 90.0], 10800.0, 0),
    (3, 3, [20.0, 20.0, 100.0, 100.0], 8000.0, 0),  # a mask area: medium, though the box is large
    (3, 12, [200.0, 200.0, 16.0, 16.0], 256.0, 0),
    (4, 7, [30.0, 40.0, 64.0, 64.0], 4096.0, 0),
    (4, 3, [200.25, 150.75, 30.0, 25.0], 750.0, 0),
]

# (image id, category id, xywh, score), in the order of a results file.
DETECTIONS = [
    (1, 7, [102.0, 52.0, 198.0, 148.0], 0.95),
    (1, 7, [150.0, 100.0, 200.0, 150.0], 0.40),
    (1, 3, [11.0, 11.0, 19.0, 19.0], 0.80),
    (1, 3, [300.0, 300.0, 50.0, 40.0], 0.30),
    (1, 3, [305.0, 310.0, 50.0, 40.0], 0.30),  # a tie in score with the previous one
    (1, 12, [10.0, 10.0, 20.0, 20.0], 0.50),  # the wrong class
    (2, 12, [52.5, 62.0, 56.0, 44.0], 0.70),
    (2, 7, [10.0, 10.0, 100.0, 100.0], 0.60),  # inside the crowd region: ignored
    (2, 7, [410.0, 110.0, 120.0, 90.0], 0.85),
    (2, 7, [400.5, 100.5, 119.5, 89.5], 0.20),
    (3, 3, [25.0, 25.0, 100.0, 100.0], 0.90),
    (3, 12, [201.0, 201.0, 16.0, 16.0], 0.65),
    (3, 12, [100.0, 100.0, 30.0, 30.0], 0.10),
    (5, 3, [50.0, 50.0, 40.0, 40.0], 0.55),
]


@pytest.fixture
def gt_path(tmp_path: Path) -> Path:
    annotations = [
        {
            "id": index + 1,
            "image_id": image_id,
            "category_id": category_id,
            "bbox": bbox,
            "area": area,
            "iscrowd": iscrowd,
        }
        for index, (image_id, category_id, bbox, area, iscrowd) in enumerate(GROUND_TRUTH)
    ]
    path = tmp_path / "instances.json"
    path.write_text(json.dumps({"images": IMAGES, "annotations": annotations, "categories": CATEGORIES}))
    return path


@pytest.fixture
def detections_path(tmp_path: Path) -> Path:
    results = [
        {"image_id": image_id, "category_id": category_id, "bbox": bbox, "score": score}
        for image_id, category_id, bbox, score in DETECTIONS
    ]
    path = tmp_path / "detections.json"
    path.write_text(json.dumps(results))
    return path


def pycocotools_eval(gt_path: Path, detections_path: Path, **params) -> COCOeval:
    """pycocotools run on the two files, as its own documentation shows."""
    with contextlib.redirect_stdout(io.StringIO()):
        ground_truth = COCO(str(gt_path))
        cocoeval = COCOeval(ground_truth, ground_truth.loadRes(str(detections_path)), "bbox")
        for name, value in params.items():
            setattr(cocoeval.params, name, value)
        cocoeval.evaluate()
        cocoeval.accumulate()
        cocoeval.summarize()
    return cocoeval


def per_image_detections(image_ids, *, contiguous: bool, as_torch: bool = True):
    """DETECTIONS as post_process_object_detection gives them: per image, xyxy, model labels."""
    detections = []
    for image_id in image_ids:
        rows = [row for row in DETECTIONS if row[0] == image_id]
        boxes = [[x, y, x + w, y + h] for _, _, (x, y, w, h), _ in rows]
        labels = [LABEL_TO_CATEGORY_ID.index(c) if contiguous else c for _, c, _, _ in rows]
        scores = [score for *_, score in rows]
        if as_torch:
            detections.append(
                {
                    "scores": torch.tensor(scores, dtype=torch.float32),
                    "labels": torch.tensor(labels, dtype=torch.int64),
                    "boxes": torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
                }
            )
        else:
            detections.append(
                {
                    "scores": np.array(scores),
                    "labels": np.array(labels),
                    "boxes": np.array(boxes).reshape(-1, 4),
                }
            )
    return detections


def assert_same_metrics(actual: dict[str, float], expected: dict[str, float]) -> None:
    assert actual.keys() == expected.keys()
    for key, value in expected.items():
        assert actual[key] == value or (math.isnan(actual[key]) and math.isnan(value)), key


def hub_dataset(*, dict_of_lists: bool) -> datasets.Dataset:
    """The ground truth as a Hub-schema dataset; image paths that do not exist prove no decoding."""
    fields = {
        "id": datasets.Value("int64"),
        "bbox": datasets.Sequence(datasets.Value("float32"), length=4),
        "category": datasets.ClassLabel(names=CLASS_NAMES),
        "area": datasets.Value("float32"),
        "iscrowd": datasets.Value("bool"),
    }
    features = datasets.Features(
        {
            "image": datasets.Image(),
            "image_id": datasets.Value("int64"),
            "width": datasets.Value("int32"),
            "height": datasets.Value("int32"),
            "objects": datasets.Sequence(fields) if dict_of_lists else datasets.List(fields),
        }
    )
    rows = []
    for image in IMAGES:
        objects = [
            {
                "id": index + 1,
                "bbox": bbox,
                "category": LABEL_TO_CATEGORY_ID.index(category_id),
                "area": area,
                "iscrowd": bool(iscrowd),
            }
            for index, (image_id, category_id, bbox, area, iscrowd) in enumerate(GROUND_TRUTH)
            if image_id == image["id"]
        ]
        if dict_of_lists:
            objects = {name: [obj[name] for obj in objects] for name in fields}
        rows.append(
            {
                "image": f"/nonexistent/{image['file_name']}",
                "image_id": image["id"],
                "width": image["width"],
                "height": image["height"],
                "objects": objects,
            }
        )
    return datasets.Dataset.from_list(rows, features=features)


def test_evaluator_gives_pycocotools_numbers_exactly(gt_path, detections_path):
    reference = pycocotools_eval(gt_path, detections_path)
    evaluator = CocoDetectionEvaluator(coco_ground_truth_from_file(gt_path), label_to_category_id=LABEL_TO_CATEGORY_ID)
    image_ids = [1, 2, 3, 5]
    evaluator.update(image_ids[:2], per_image_detections(image_ids[:2], contiguous=True))
    evaluator.update(image_ids[2:], per_image_detections(image_ids[2:], contiguous=True, as_torch=False))

    metrics = evaluator.compute()

    assert [metrics[key] for key in STAT_KEYS] == reference.stats.tolist()
    assert 0 < metrics["AP"] < 1  # the fixture is not trivially perfect or hopeless
    assert list(metrics) == STAT_KEYS + [f"AP_{name}" for name in CLASS_NAMES]


def test_per_class_ap_matches_a_pycocotools_run_per_category(gt_path, detections_path):
    evaluator = CocoDetectionEvaluator(coco_ground_truth_from_file(gt_path), label_to_category_id=LABEL_TO_CATEGORY_ID)
    evaluator.update([1, 2, 3, 5], per_image_detections([1, 2, 3, 5], contiguous=True))
    metrics = evaluator.compute()

    for category in CATEGORIES[:3]:
        single = pycocotools_eval(gt_path, detections_path, catIds=[category["id"]])
        assert metrics[f"AP_{category['name']}"] == single.stats[0]
    assert math.isnan(metrics["AP_fish"])  # no ground truth: undefined, not 0
    defined = [metrics[f"AP_{name}"] for name in CLASS_NAMES[:3]]
    assert metrics["AP"] == pytest.approx(sum(defined) / 3, abs=1e-12)


def test_updating_an_image_again_replaces_its_detections(gt_path, detections_path):
    evaluator = CocoDetectionEvaluator(coco_ground_truth_from_file(gt_path), label_to_category_id=LABEL_TO_CATEGORY_ID)
    evaluator.update([1], per_image_detections([5], contiguous=True))
    evaluator.update([1, 2, 3, 5], per_image_detections([1, 2, 3, 5], contiguous=True))

    expected = pycocotools_eval(gt_path, detections_path).stats.tolist()
    assert [evaluator.compute()[key] for key in STAT_KEYS] == expected


def test_only_seen_images_restricts_the_evaluation(gt_path, detections_path):
    evaluator = CocoDetectionEvaluator(
        coco_ground_truth_from_file(gt_path),
        label_to_category_id=LABEL_TO_CATEGORY_ID,
        only_seen_images=True,
    )
    evaluator.update([1, 2, 3], per_image_detections([1, 2, 3], contiguous=True))

    reference = pycocotools_eval(gt_path, detections_path, imgIds=[1, 2, 3])
    assert [evaluator.compute()[key] for key in STAT_KEYS] == reference.stats.tolist()


def test_max_detections_sets_cocoeval_max_dets(gt_path, detections_path):
    evaluator = CocoDetectionEvaluator(
        coco_ground_truth_from_file(gt_path),
        label_to_category_id=LABEL_TO_CATEGORY_ID,
        max_detections=20,
    )
    evaluator.update([1, 2, 3, 5], per_image_detections([1, 2, 3, 5], contiguous=True))
    metrics = evaluator.compute()

    reference = pycocotools_eval(gt_path, detections_path, maxDets=[1, 10, 20])
    # COCOeval.summarize hard-codes 100 detections for its first stat, so it reports -1 there.
    assert reference.stats[0] == -1
    keys = [key if key != "AR100" else "AR20" for key in STAT_KEYS]
    assert [metrics[key] for key in keys[1:]] == reference.stats.tolist()[1:]
    # No image has more than 20 detections of a category, so AP is the default one.
    assert metrics["AP"] == pycocotools_eval(gt_path, detections_path).stats[0]


@pytest.mark.parametrize("dict_of_lists", [True, False], ids=["dict-of-lists", "list-of-dicts"])
def test_dataset_ground_truth_gives_the_json_numbers(gt_path, detections_path, dict_of_lists):
    ground_truth = coco_ground_truth_from_dataset(hub_dataset(dict_of_lists=dict_of_lists))
    evaluator = CocoDetectionEvaluator(ground_truth)  # labels are the dataset's category ids
    evaluator.update([1, 2, 3, 5], per_image_detections([1, 2, 3, 5], contiguous=True))
    metrics = evaluator.compute()

    from_file = CocoDetectionEvaluator(coco_ground_truth_from_file(gt_path), label_to_category_id=LABEL_TO_CATEGORY_ID)
    from_file.update([1, 2, 3, 5], per_image_detections([1, 2, 3, 5], contiguous=True))
    expected = pycocotools_eval(gt_path, detections_path).stats.tolist()
    assert [metrics[key] for key in STAT_KEYS] == expected
    assert_same_metrics(metrics, from_file.compute())
    assert ground_truth.getCatIds() == [0, 1, 2, 3]
    assert [ground_truth.cats[label]["name"] for label in range(4)] == CLASS_NAMES
    assert sum(annotation["iscrowd"] for annotation in ground_truth.dataset["annotations"]) == 1


def test_dataset_without_class_label_is_rejected():
    features = datasets.Features(
        {
            "image_id": datasets.Value("int64"),
            "objects": datasets.Sequence({"category": datasets.Value("int64")}),
        }
    )
    dataset = datasets.Dataset.from_list([{"image_id": 1, "objects": {"category": [0]}}], features=features)
    with pytest.raises(DataError, match="ClassLabel"):
        coco_ground_truth_from_dataset(dataset)


def test_no_detections_at_all_scores_zero(gt_path):
    ground_truth = coco_ground_truth_from_file(gt_path)
    evaluator = CocoDetectionEvaluator(ground_truth, label_to_category_id=LABEL_TO_CATEGORY_ID)
    never_updated = evaluator.compute()
    evaluator.update([1, 2], [{"scores": [], "labels": [], "boxes": np.zeros((0, 4))}] * 2)
    updated_empty = evaluator.compute()

    for metrics in (never_updated, updated_empty):
        assert metrics["AP"] == 0.0 and metrics["AP50"] == 0.0 and metrics["AR100"] == 0.0
        assert metrics["AP_cat"] == metrics["AP_dog"] == metrics["AP_bird"] == 0.0
        assert math.isnan(metrics["AP_fish"])


def test_evaluator_rejects_inconsistent_input(gt_path, tmp_path):
    ground_truth = coco_ground_truth_from_file(gt_path)
    empty = {"scores": [], "labels": [], "boxes": np.zeros((0, 4))}
    one_box = {"scores": [0.5], "labels": [1], "boxes": [[0.0, 0.0, 1.0, 1.0]]}

    with pytest.raises(ValueError, match="not in the ground truth"):
        CocoDetectionEvaluator(ground_truth).update([99], [empty])
    with pytest.raises(ValueError, match="label_to_category_id"):  # 1 is no category id there
        CocoDetectionEvaluator(ground_truth).update([1], [one_box])
    with pytest.raises(ValueError, match="outside label_to_category_id"):
        CocoDetectionEvaluator(ground_truth, label_to_category_id=[3]).update([1], [one_box])
    with pytest.raises(ValueError, match="does not have"):
        CocoDetectionEvaluator(ground_truth, label_to_category_id=[3, 4])

    content = json.loads(gt_path.read_text())
    content["annotations"][0]["id"] = 0
    (tmp_path / "zero.json").write_text(json.dumps(content))
    with pytest.raises(DataError, match="annotation id 0"):
        coco_ground_truth_from_file(tmp_path / "zero.json")


def trainer_batches(image_ids_per_batch, *, as_torch: bool):
    """(predictions (B, K, 6), labels) per batch, padded with score -100 as the Trainer pads."""
    batches = []
    for image_ids in image_ids_per_batch:
        detections = per_image_detections(image_ids, contiguous=True, as_torch=False)
        width = max(len(found["scores"]) for found in detections) + 2
        predictions = np.full((len(image_ids), width, 6), -100.0, dtype=np.float32)
        for row, found in enumerate(detections):
            count = len(found["scores"])
            predictions[row, :count, :4] = found["boxes"]
            predictions[row, :count, 4] = found["scores"]
            predictions[row, :count, 5] = found["labels"]
        if as_torch:
            labels = [{"image_id": torch.tensor(image_id), "class_labels": torch.zeros(0)} for image_id in image_ids]
            batches.append((torch.from_numpy(predictions), labels))
        else:
            labels = [{"image_id": np.array([image_id]), "class_labels": np.zeros(0)} for image_id in image_ids]
            batches.append((predictions, labels))
    return batches


def test_compute_metrics_in_both_trainer_modes_matches_the_evaluator(gt_path):
    from transformers import EvalPrediction

    ground_truth = coco_ground_truth_from_file(gt_path)
    evaluator = CocoDetectionEvaluator(ground_truth, label_to_category_id=LABEL_TO_CATEGORY_ID)
    evaluator.update([1, 2, 3, 5], per_image_detections([1, 2, 3, 5], contiguous=True))
    expected = evaluator.compute()
    image_ids_per_batch = [[1, 2], [3, 4], [5]]

    compute_metrics = make_coco_compute_metrics(ground_truth, label_to_category_id=LABEL_TO_CATEGORY_ID)
    for _ in range(2):  # the state is reset after each evaluation
        batches = trainer_batches(image_ids_per_batch, as_torch=True)
        returned = [
            compute_metrics(EvalPrediction(predictions, labels), compute_result=index == len(batches) - 1)
            for index, (predictions, labels) in enumerate(batches)
        ]
        assert returned[:-1] == [{}, {}]
        assert_same_metrics(returned[-1], expected)

    batches = trainer_batches(image_ids_per_batch, as_torch=False)
    eval_pred = EvalPrediction([predictions for predictions, _ in batches], [labels for _, labels in batches])
    assert_same_metrics(compute_metrics(eval_pred), expected)


def test_compute_metrics_rejects_concatenated_batches(gt_path):
    from transformers import EvalPrediction

    compute_metrics = make_coco_compute_metrics(coco_ground_truth_from_file(gt_path))
    predictions, labels = trainer_batches([[1, 2], [3]], as_torch=False)[0]
    with pytest.raises(ValueError, match="eval_do_concat_batches=False"):
        compute_metrics(EvalPrediction(predictions, labels[:1]))
    with pytest.raises(ValueError, match=r"\(B, K, 6\)"):
        compute_metrics(EvalPrediction(predictions[..., :4], labels))


class _ReplayDetector(torch.nn.Module):
    """Stands in for a detector: returns the (B, K, 6) detections it is fed as its predictions."""

    def __init__(self) -> None:
        super().__init__()
        self.scale = torch.nn.Parameter(torch.ones(()))

    def forward(self, pixel_values: torch.Tensor, labels=None) -> dict[str, torch.Tensor]:
        return {"loss": (self.scale - 1.0) ** 2, "detections": pixel_values}


@pytest.mark.parametrize("batch_eval_metrics", [True, False], ids=["batch_eval_metrics", "one-call"])
def test_compute_metrics_inside_a_trainer_evaluation(gt_path, tmp_path, batch_eval_metrics):
    from transformers import Trainer, TrainingArguments

    ground_truth = coco_ground_truth_from_file(gt_path)
    evaluator = CocoDetectionEvaluator(ground_truth, label_to_category_id=LABEL_TO_CATEGORY_ID)
    evaluator.update([1, 2, 3, 5], per_image_detections([1, 2, 3, 5], contiguous=True))
    expected = evaluator.compute()

    examples = []
    for image in IMAGES:
        ((predictions, _),) = trainer_batches([[image["id"]]], as_torch=True)
        examples.append({"image_id": image["id"], "detections": predictions[0, predictions[0, :, 4] >= 0]})

    def collate(batch):
        width = max(1, *(len(example["detections"]) for example in batch))
        padded = torch.full((len(batch), width, 6), -100.0)
        for row, example in enumerate(batch):
            padded[row, : len(example["detections"])] = example["detections"]
        return {
            "pixel_values": padded,
            "labels": [{"image_id": torch.tensor(e["image_id"])} for e in batch],
        }

    args = TrainingArguments(
        output_dir=str(tmp_path / "trainer"),
        per_device_eval_batch_size=2,
        remove_unused_columns=False,
        batch_eval_metrics=batch_eval_metrics,
        eval_do_concat_batches=False,
        report_to="none",
        use_cpu=True,
    )
    trainer = Trainer(
        model=_ReplayDetector(),
        args=args,
        eval_dataset=examples,
        data_collator=collate,
        compute_metrics=make_coco_compute_metrics(ground_truth, label_to_category_id=LABEL_TO_CATEGORY_ID),
    )
    metrics = trainer.evaluate()

    assert_same_metrics({key: metrics[f"eval_{key}"] for key in expected}, expected)


def test_evaluate_module_loads_offline_and_gives_the_same_numbers(gt_path, detections_path, tmp_path):
    import evaluate

    metric = evaluate.load(coco_detection_metric_path(), cache_dir=str(tmp_path / "evaluate"))
    ground_truth = json.loads(gt_path.read_text())
    image_ids = [image["id"] for image in IMAGES]
    references = []
    for image_id in image_ids:
        annotations = [a for a in ground_truth["annotations"] if a["image_id"] == image_id]
        references.append(
            {
                "image_id": image_id,
                "boxes": [a["bbox"] for a in annotations],
                "labels": [LABEL_TO_CATEGORY_ID.index(a["category_id"]) for a in annotations],
                "area": [a["area"] for a in annotations],
                "iscrowd": [a["iscrowd"] for a in annotations],
            }
        )
    predictions = [
        {key: value.tolist() for key, value in found.items()}
        for found in per_image_detections(image_ids, contiguous=True, as_torch=False)
    ]
    evaluator = CocoDetectionEvaluator(coco_ground_truth_from_file(gt_path), label_to_category_id=LABEL_TO_CATEGORY_ID)
    evaluator.update(image_ids, per_image_detections(image_ids, contiguous=True))

    metrics = metric.compute(predictions=predictions, references=references, class_names=CLASS_NAMES)

    expected = pycocotools_eval(gt_path, detections_path).stats.tolist()
    assert [metrics[key] for key in STAT_KEYS] == expected
    assert_same_metrics(metrics, evaluator.compute())
    metric.add_batch(predictions=[{"scores": [], "labels": [], "boxes": []}] * 5, references=references)
    no_detections = metric.compute(class_names=CLASS_NAMES)
    assert no_detections["AP"] == 0.0 and math.isnan(no_detections["AP_fish"])


# --- the faster-coco-eval backend ---------------------------------------------------------------------------
#
# Each case scores one of the ground-truth/detection set-ups above with the given backend.


def _case_all_images(gt_path: Path, backend: str) -> dict[str, float]:
    evaluator = CocoDetectionEvaluator(
        coco_ground_truth_from_file(gt_path), label_to_category_id=LABEL_TO_CATEGORY_ID, backend=backend
    )
    evaluator.update([1, 2], per_image_detections([1, 2], contiguous=True))
    evaluator.update([3, 5], per_image_detections([3, 5], contiguous=True, as_torch=False))
    return evaluator.compute()


def _case_updated_again(gt_path: Path, backend: str) -> dict[str, float]:
    evaluator = CocoDetectionEvaluator(
        coco_ground_truth_from_file(gt_path), label_to_category_id=LABEL_TO_CATEGORY_ID, backend=backend
    )
    evaluator.update([1], per_image_detections([5], contiguous=True))
    evaluator.update([1, 2, 3, 5], per_image_detections([1, 2, 3, 5], contiguous=True))
    return evaluator.compute()


def _case_only_seen_images(gt_path: Path, backend: str) -> dict[str, float]:
    evaluator = CocoDetectionEvaluator(
        coco_ground_truth_from_file(gt_path),
        label_to_category_id=LABEL_TO_CATEGORY_ID,
        only_seen_images=True,
        backend=backend,
    )
    evaluator.update([1, 2, 3], per_image_detections([1, 2, 3], contiguous=True))
    return evaluator.compute()


def _case_only_seen_images_none_seen(gt_path: Path, backend: str) -> dict[str, float]:
    evaluator = CocoDetectionEvaluator(
        coco_ground_truth_from_file(gt_path),
        label_to_category_id=LABEL_TO_CATEGORY_ID,
        only_seen_images=True,
        backend=backend,
    )
    return evaluator.compute()


def _case_max_detections_20(gt_path: Path, backend: str) -> dict[str, float]:
    evaluator = CocoDetectionEvaluator(
        coco_ground_truth_from_file(gt_path),
        label_to_category_id=LABEL_TO_CATEGORY_ID,
        max_detections=20,
        backend=backend,
    )
    evaluator.update([1, 2, 3, 5], per_image_detections([1, 2, 3, 5], contiguous=True))
    return evaluator.compute()


def _case_dataset(dict_of_lists: bool) -> Callable[[Path, str], dict[str, float]]:
    def case(gt_path: Path, backend: str) -> dict[str, float]:
        ground_truth = coco_ground_truth_from_dataset(hub_dataset(dict_of_lists=dict_of_lists))
        evaluator = CocoDetectionEvaluator(ground_truth, backend=backend)
        evaluator.update([1, 2, 3, 5], per_image_detections([1, 2, 3, 5], contiguous=True))
        return evaluator.compute()

    return case


def _case_never_updated(gt_path: Path, backend: str) -> dict[str, float]:
    evaluator = CocoDetectionEvaluator(
        coco_ground_truth_from_file(gt_path), label_to_category_id=LABEL_TO_CATEGORY_ID, backend=backend
    )
    return evaluator.compute()


def _case_updated_empty(gt_path: Path, backend: str) -> dict[str, float]:
    evaluator = CocoDetectionEvaluator(
        coco_ground_truth_from_file(gt_path), label_to_category_id=LABEL_TO_CATEGORY_ID, backend=backend
    )
    evaluator.update([1, 2], [{"scores": [], "labels": [], "boxes": np.zeros((0, 4))}] * 2)
    return evaluator.compute()


def _case_compute_metrics_batches(gt_path: Path, backend: str) -> dict[str, float]:
    from transformers import EvalPrediction

    compute_metrics = make_coco_compute_metrics(
        coco_ground_truth_from_file(gt_path), label_to_category_id=LABEL_TO_CATEGORY_ID, backend=backend
    )
    batches = trainer_batches([[1, 2], [3, 4], [5]], as_torch=True)
    returned = [
        compute_metrics(EvalPrediction(predictions, labels), compute_result=index == len(batches) - 1)
        for index, (predictions, labels) in enumerate(batches)
    ]
    return returned[-1]


def _case_evaluate_module(gt_path: Path, backend: str) -> dict[str, float]:
    import evaluate

    metric = evaluate.load(coco_detection_metric_path(), cache_dir=str(gt_path.parent / "evaluate"))
    content = json.loads(gt_path.read_text())
    references = []
    for image in IMAGES:
        annotations = [a for a in content["annotations"] if a["image_id"] == image["id"]]
        references.append(
            {
                "image_id": image["id"],
                "boxes": [a["bbox"] for a in annotations],
                "labels": [LABEL_TO_CATEGORY_ID.index(a["category_id"]) for a in annotations],
                "area": [a["area"] for a in annotations],
                "iscrowd": [a["iscrowd"] for a in annotations],
            }
        )
    predictions = [
        {key: value.tolist() for key, value in found.items()}
        for found in per_image_detections([image["id"] for image in IMAGES], contiguous=True, as_torch=False)
    ]
    return metric.compute(predictions=predictions, references=references, class_names=CLASS_NAMES, backend=backend)


BACKEND_CASES = {
    "all-images": _case_all_images,
    "updated-again": _case_updated_again,
    "only-seen-images": _case_only_seen_images,
    "only-seen-images-none-seen": _case_only_seen_images_none_seen,
    "max-detections-20": _case_max_detections_20,
    "dataset-dict-of-lists": _case_dataset(dict_of_lists=True),
    "dataset-list-of-dicts": _case_dataset(dict_of_lists=False),
    "never-updated": _case_never_updated,
    "updated-empty": _case_updated_empty,
    "compute-metrics-batches": _case_compute_metrics_batches,
    "evaluate-module": _case_evaluate_module,
}

# faster-coco-eval's precision is tp / (tp + fp) where pycocotools adds np.spacing(1) to the divisor, so a
# precision of 1 is 1.0 there and 0.9999999999999998 in pycocotools. On these cases that moves APs and APm (and AP
# with only seen images) by 5.6e-17 to 1.1e-16 (faster-coco-eval 1.6.0 to 1.8.0); every other number is equal.
# 1e-12 allows that and nothing a real disagreement (one detection matched otherwise moves AP by > 1e-3) hides in.
BACKEND_TOLERANCE = 1e-12


@pytest.mark.parametrize("case", sorted(BACKEND_CASES))
def test_faster_coco_eval_gives_pycocotools_numbers(gt_path, case):
    pytest.importorskip("faster_coco_eval")
    expected = BACKEND_CASES[case](gt_path, "pycocotools")
    actual = BACKEND_CASES[case](gt_path, "faster_coco_eval")

    assert list(actual) == list(expected)
    for key, value in expected.items():
        if math.isnan(value):
            assert math.isnan(actual[key]), key
        else:
            assert actual[key] == pytest.approx(value, rel=0, abs=BACKEND_TOLERANCE), key


def test_faster_coco_eval_leaves_the_ground_truth_alone(gt_path):
    pytest.importorskip("faster_coco_eval")
    ground_truth = coco_ground_truth_from_file(gt_path)
    before = json.dumps(ground_truth.dataset, sort_keys=True)
    evaluator = CocoDetectionEvaluator(
        ground_truth, label_to_category_id=LABEL_TO_CATEGORY_ID, backend="faster_coco_eval"
    )
    evaluator.update([1, 2, 3, 5], per_image_detections([1, 2, 3, 5], contiguous=True))
    first = evaluator.compute()

    assert evaluator.backend == "faster_coco_eval"
    assert json.dumps(ground_truth.dataset, sort_keys=True) == before
    assert_same_metrics(evaluator.compute(), first)  # the cached ground truth scores alike the second time


def test_backend_from_the_environment(gt_path, monkeypatch):
    ground_truth = coco_ground_truth_from_file(gt_path)
    assert CocoDetectionEvaluator(ground_truth).backend == "pycocotools"  # the default
    monkeypatch.setenv("LIAF_HF_COCO_BACKEND", "pycocotools")
    assert CocoDetectionEvaluator(ground_truth).backend == "pycocotools"
    monkeypatch.setenv("LIAF_HF_COCO_BACKEND", "fastest")
    with pytest.raises(ValueError, match="LIAF_HF_COCO_BACKEND='fastest'.*pycocotools, faster_coco_eval, auto"):
        CocoDetectionEvaluator(ground_truth)
    assert CocoDetectionEvaluator(ground_truth, backend="pycocotools").backend == "pycocotools"  # argument wins


def test_unknown_backend_is_refused_naming_the_choices(gt_path):
    assert COCO_BACKENDS == ("pycocotools", "faster_coco_eval", "auto")
    with pytest.raises(ValueError, match="backend 'fast'.*pycocotools, faster_coco_eval, auto"):
        CocoDetectionEvaluator(coco_ground_truth_from_file(gt_path), backend="fast")
    with pytest.raises(ValueError, match="pycocotools, faster_coco_eval, auto"):
        make_coco_compute_metrics(coco_ground_truth_from_file(gt_path), backend="FASTER_COCO_EVAL")


def test_missing_faster_coco_eval_names_the_extra(gt_path, detections_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "faster_coco_eval", None)  # makes the import fail as if not installed

    with pytest.raises(LiafError, match=r"pip install \"liaf-hf\[fast-metrics\]\""):
        CocoDetectionEvaluator(coco_ground_truth_from_file(gt_path), backend="faster_coco_eval")
    assert resolve_coco_backend("auto") == "pycocotools"
    evaluator = CocoDetectionEvaluator(
        coco_ground_truth_from_file(gt_path), label_to_category_id=LABEL_TO_CATEGORY_ID, backend="auto"
    )
    evaluator.update([1, 2, 3, 5], per_image_detections([1, 2, 3, 5], contiguous=True))
    assert [evaluator.compute()[key] for key in STAT_KEYS] == pycocotools_eval(gt_path, detections_path).stats.tolist()


def test_auto_picks_faster_coco_eval_when_installed():
    pytest.importorskip("faster_coco_eval")
    assert resolve_coco_backend("auto") == "faster_coco_eval"
