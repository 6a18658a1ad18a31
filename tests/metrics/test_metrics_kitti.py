"""KITTI scoring: VOC AP50 and KITTI AP40 on hand-worked cases."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from transformers import EvalPrediction

from liaf_hf.data.kitti import load_kitti
from liaf_hf.data.synthetic import generate_kitti_dataset
from liaf_hf.metrics.kitti import (
    KittiDetectionEvaluator,
    KittiGroundTruth,
    KittiImageGroundTruth,
    coco_ground_truth_from_kitti,
    kitti_ground_truth_from_dataset,
    kitti_score_thresholds,
    make_kitti_compute_metrics,
    voc_average_precision,
)

NAMES = ("Car", "Pedestrian", "Cyclist")
CAR, PEDESTRIAN, CYCLIST = 0, 1, 2
TALL = [100.0, 50.0, 200.0, 100.0]  # 100 x 50 px: above every difficulty's minimum height


def image(*objects: tuple) -> KittiImageGroundTruth:
    """Objects as (box xyxy, label, type, truncated, occluded); label -1 for ignore regions."""
    return KittiImageGroundTruth(
        boxes_xyxy=np.array([obj[0] for obj in objects], dtype=np.float64).reshape(-1, 4),
        labels=np.array([obj[1] for obj in objects], dtype=np.int64),
        types=tuple(obj[2] for obj in objects),
        truncated=np.array([obj[3] for obj in objects], dtype=np.float64),
        occluded=np.array([obj[4] for obj in objects], dtype=np.int64),
    )


def car(box=TALL, *, truncated=0.0, occluded=0):
    return (box, CAR, "Car", truncated, occluded)


def pedestrian(box=TALL):
    return (box, PEDESTRIAN, "Pedestrian", 0.0, 0)


def region(box, kind):
    return (box, -1, kind, -1.0 if kind == "DontCare" else 0.0, -1 if kind == "DontCare" else 0)


def found(*detections: tuple) -> dict:
    """Detections as (box xyxy, score, label)."""
    return {
        "boxes": torch.tensor([d[0] for d in detections], dtype=torch.float32).reshape(-1, 4),
        "scores": torch.tensor([d[1] for d in detections], dtype=torch.float32),
        "labels": torch.tensor([d[2] for d in detections], dtype=torch.long),
    }


def score(images: dict[int, KittiImageGroundTruth], detections: dict[int, dict]) -> dict[str, float]:
    evaluator = KittiDetectionEvaluator(KittiGroundTruth(images=images, class_names=NAMES))
    evaluator.update(list(detections), list(detections.values()))
    return evaluator.compute()


def one_per_image(count: int, make_truth, make_detection) -> tuple[dict, dict]:
    """``count`` images with one object each; ``make_detection(index)`` gives its detections (a tuple)."""
    images = {index: image(make_truth(index)) for index in range(count)}
    detections = {index: found(*make_detection(index)) for index in range(count)}
    return images, detections


def descending(index: int) -> float:
    return 0.99 - index * 0.01


def test_perfect_detections_score_one():
    # 80 objects: enough for the devkit's 41 recall thresholds.
    images, detections = one_per_image(80, lambda i: car(), lambda i: ((TALL, descending(i), CAR),))
    metrics = score(images, detections)
    assert metrics["VOC_AP50_Car"] == pytest.approx(1.0)
    for difficulty in ("easy", "moderate", "hard"):
        assert metrics[f"KITTI_AP40_Car_{difficulty}"] == pytest.approx(1.0)
    # No Pedestrian or Cyclist in the ground truth: NaN, left out of the means.
    assert math.isnan(metrics["VOC_AP50_Pedestrian"]) and math.isnan(metrics["KITTI_AP40_Cyclist_hard"])
    assert metrics["VOC_mAP50"] == pytest.approx(1.0) and metrics["KITTI_mAP40_moderate"] == pytest.approx(1.0)


def test_a_missed_half_halves_both_metrics():
    # 80 cars, the first 40 found. VOC: recall 0.5 at precision 1 -> 0.5. KITTI: thresholds at recall
    # 0, 1/40, ..., 20/40 (21 of them) with precision 1, the other 20 recall points 0 -> 20/40.
    images, detections = one_per_image(80, lambda i: car(), lambda i: ((TALL, descending(i), CAR),) if i < 40 else ())
    metrics = score(images, detections)
    assert metrics["VOC_AP50_Car"] == pytest.approx(0.5)
    assert metrics["KITTI_AP40_Car_moderate"] == pytest.approx(0.5)


def test_small_sets_follow_the_devkit_sampling():
    """With n < 40 valid objects the devkit places only n thresholds: 4 perfect cars give 3/40."""
    images, detections = one_per_image(4, lambda i: car(), lambda i: ((TALL, descending(i), CAR),))
    metrics = score(images, detections)
    assert metrics["VOC_AP50_Car"] == pytest.approx(1.0)
    assert metrics["KITTI_AP40_Car_moderate"] == pytest.approx(3 / 40)


def test_tiny_ranked_list():
    """4 cars; detections ranked TP 0.9, FP 0.8, TP 0.7, TP 0.6 (one car missed).

    VOC: recall .25 .25 .5 .75, precision 1 .5 .67 .75; envelope 1 up to recall .25, then .75 up to .75:
    AP = .25 * 1 + .25 * .75 + .25 * .75 = 0.625.
    KITTI: true-positive scores .9 .7 .6 of 4 objects -> thresholds .9 .7 .6; precision there 1, 2/3, 3/4;
    envelope 1, .75, .75; R40 sums the points after recall 0: (.75 + .75) / 40.
    """
    images = {0: image(car(), car([300.0, 50.0, 400.0, 100.0])), 1: image(car(), car([300.0, 50.0, 400.0, 100.0]))}
    detections = {
        0: found((TALL, 0.9, CAR), ([500.0, 50.0, 600.0, 100.0], 0.8, CAR)),
        1: found((TALL, 0.7, CAR), ([300.0, 50.0, 400.0, 100.0], 0.6, CAR)),
    }
    assert kitti_score_thresholds(np.array([0.6, 0.9, 0.7]), 4) == pytest.approx([0.9, 0.7, 0.6])
    metrics = score(images, detections)
    assert metrics["VOC_AP50_Car"] == pytest.approx(0.625)
    assert metrics["KITTI_AP40_Car_moderate"] == pytest.approx(1.5 / 40)


def test_score_thresholds_skip_scores_between_recall_points():
    # 40 true positives of 80 objects: recall steps of 1/80, so every other score is nearer a 1/40 point.
    thresholds = kitti_score_thresholds(np.array([descending(i) for i in range(40)]), 80)
    assert thresholds == pytest.approx([descending(0)] + [descending(i) for i in range(1, 40, 2)])


def test_voc_average_precision_all_points():
    assert voc_average_precision(np.array([True, False, True, True]), 4) == pytest.approx(0.625)
    assert voc_average_precision(np.array([], dtype=bool), 3) == 0.0


@pytest.mark.parametrize("with_dont_care", [True, False])
def test_false_positive_on_dont_care_is_ignored(with_dont_care):
    elsewhere = [500.0, 50.0, 600.0, 100.0]
    regions = (region([480.0, 40.0, 640.0, 110.0], "DontCare"),) if with_dont_care else ()
    images = {i: image(car(), *(regions if i == 0 else ())) for i in range(4)}
    # The highest-scoring detection lies on the DontCare region (or on nothing).
    detections = {
        i: found((TALL, descending(i + 1), CAR), *([(elsewhere, 0.995, CAR)] if i == 0 else [])) for i in range(4)
    }
    metrics = score(images, detections)
    if with_dont_care:
        assert metrics["VOC_AP50_Car"] == pytest.approx(1.0)
        assert metrics["KITTI_AP40_Car_moderate"] == pytest.approx(3 / 40)
    else:
        # VOC: FP first, then 4 TP: precision .5 .67 .75 .8 at recall .25 .. 1 -> envelope .8 throughout.
        assert metrics["VOC_AP50_Car"] == pytest.approx(0.8)
        # KITTI: one FP above every threshold: precision 1/2, 2/3, 3/4, 4/5 -> envelope .8 at 3 points.
        assert metrics["KITTI_AP40_Car_moderate"] == pytest.approx(3 * 0.8 / 40)


@pytest.mark.parametrize(("height", "counted"), [(20.0, False), (30.0, True)])
def test_detections_below_the_minimum_height_are_ignored(height, counted):
    """An unmatched detection lower than 25 px is no false positive at moderate; one of 30 px is."""
    images = {i: image(car()) for i in range(4)}
    low = [500.0, 50.0, 520.0, 50.0 + height]
    detections = {i: found((TALL, descending(i + 1), CAR), *([(low, 0.995, CAR)] if i == 0 else [])) for i in range(4)}
    metrics = score(images, detections)
    assert metrics["KITTI_AP40_Car_moderate"] == pytest.approx(3 * 0.8 / 40 if counted else 3 / 40)
    # At easy (minimum 40 px) both detections are too low to count either way.
    assert metrics["KITTI_AP40_Car_easy"] == pytest.approx(3 / 40)
    # VOC knows no heights.
    assert metrics["VOC_AP50_Car"] == pytest.approx(0.8)


def test_objects_outside_a_difficulty_are_ignored_there():
    """A 30 px car, an occluded car (level 1) and a truncated car (0.4): each is outside 'easy'."""
    short = [100.0, 50.0, 200.0, 80.0]
    images = {
        0: image(car(short)),
        1: image(car(occluded=1)),
        2: image(car(truncated=0.4)),
    }
    detections = {0: found((short, 0.9, CAR)), 1: found((TALL, 0.8, CAR)), 2: found((TALL, 0.7, CAR))}
    metrics = score(images, detections)
    assert math.isnan(metrics["KITTI_AP40_Car_easy"]), "no car is valid at easy; their detections are ignored"
    # At moderate the truncated car (0.4 > 0.3) is still out: two valid cars, both found -> (2 - 1) / 40.
    assert metrics["KITTI_AP40_Car_moderate"] == pytest.approx(1 / 40)
    assert metrics["KITTI_AP40_Car_hard"] == pytest.approx(2 / 40)


def test_iou_between_half_and_seven_tenths_matches_pedestrians_not_cars():
    gt_box, detection_box = [0.0, 0.0, 100.0, 50.0], [0.0, 0.0, 60.0, 50.0]  # IoU 0.6
    cars, car_detections = one_per_image(80, lambda i: car(gt_box), lambda i: ((detection_box, descending(i), CAR),))
    car_metrics = score(cars, car_detections)
    assert car_metrics["VOC_AP50_Car"] == pytest.approx(1.0)
    assert car_metrics["KITTI_AP40_Car_moderate"] == 0.0
    people, person_detections = one_per_image(
        80, lambda i: pedestrian(gt_box), lambda i: ((detection_box, descending(i), PEDESTRIAN),)
    )
    person_metrics = score(people, person_detections)
    assert person_metrics["VOC_AP50_Pedestrian"] == pytest.approx(1.0)
    assert person_metrics["KITTI_AP40_Pedestrian_moderate"] == pytest.approx(1.0)


def test_neighbouring_types_and_other_ignore_regions():
    """A Car detection on a Van is ignored by both metrics; on a Truck the devkit counts it as a false
    positive, while the VOC metric (every ignore region) does not."""
    other = [500.0, 50.0, 600.0, 100.0]
    for kind, kitti_ignores in (("Van", True), ("Truck", False)):
        images = {i: image(car(), *((region(other, kind),) if i == 0 else ())) for i in range(4)}
        detections = {
            i: found((TALL, descending(i + 1), CAR), *([(other, 0.995, CAR)] if i == 0 else [])) for i in range(4)
        }
        metrics = score(images, detections)
        assert metrics["VOC_AP50_Car"] == pytest.approx(1.0), kind
        assert metrics["KITTI_AP40_Car_moderate"] == pytest.approx(3 / 40 if kitti_ignores else 3 * 0.8 / 40), kind


def test_compute_metrics_takes_trainer_batches(tmp_path):
    root = generate_kitti_dataset(tmp_path / "kitti", num_train=2, num_val=3, seed=1)
    val = load_kitti(root, "val")
    ground_truth = kitti_ground_truth_from_dataset(val)
    compute_metrics = make_kitti_compute_metrics(ground_truth)
    # Each image's own non-ignored boxes as detections, then one padding row (score -1).
    predictions, labels = [], []
    for row in val:
        objects = [
            (box, category)
            for box, category, crowd in zip(*(row["objects"][k] for k in ("bbox", "category", "iscrowd")))
            if not crowd
        ]
        packed = -torch.ones(1, len(objects) + 1, 6)
        for index, ((x, y, w, h), category) in enumerate(objects):
            packed[0, index] = torch.tensor([x, y, x + w, y + h, 0.9 - 0.01 * index, category])
        predictions.append(packed.numpy())
        labels.append([{"image_id": torch.tensor(row["image_id"])}])
    metrics = compute_metrics(EvalPrediction(predictions=predictions, label_ids=labels))
    for name in NAMES:
        if any(
            name == NAMES[c]
            for row in val
            for c, crowd in zip(row["objects"]["category"], row["objects"]["iscrowd"])
            if not crowd
        ):
            assert metrics[f"VOC_AP50_{name}"] == pytest.approx(1.0)
    assert {"VOC_mAP50", "KITTI_mAP40_easy", "KITTI_mAP40_moderate", "KITTI_mAP40_hard"} <= set(metrics)
    assert all(f"KITTI_AP40_{name}_{d}" in metrics for name in NAMES for d in ("easy", "moderate", "hard"))
    # COCO AP comes along, on the same ground truth: every object found exactly.
    assert metrics["AP"] == pytest.approx(1.0) and "AP_Car" in metrics
    # The evaluator was reset: scoring nothing now finds nothing.
    empty = compute_metrics(EvalPrediction(predictions=[], label_ids=[]))
    kitti_values = [value for key, value in empty.items() if key.startswith(("VOC", "KITTI"))]
    assert kitti_values and all(value == 0.0 or math.isnan(value) for value in kitti_values)


def test_ground_truth_keeps_kitti_fields(tmp_path):
    root = generate_kitti_dataset(tmp_path / "kitti", num_train=10, num_val=1, seed=2)
    truth = kitti_ground_truth_from_dataset(load_kitti(root, "train"))
    assert truth.class_names == NAMES
    types = {kind for image_truth in truth.images.values() for kind in image_truth.types}
    assert {"Car", "Van", "DontCare"} <= types
    for image_truth in truth.images.values():
        assert (image_truth.labels[np.isin(image_truth.types, ["Van", "DontCare"])] == -1).all()


def test_unknown_image_and_label_are_refused():
    evaluator = KittiDetectionEvaluator(KittiGroundTruth(images={0: image(car())}, class_names=NAMES))
    with pytest.raises(ValueError, match="image_id 7"):
        evaluator.update([7], [found((TALL, 0.5, CAR))])
    with pytest.raises(ValueError, match="labels"):
        evaluator.update([0], [found((TALL, 0.5, 3))])


def test_coco_ground_truth_makes_ignore_regions_crowds_of_every_class():
    """COCO AP on KITTI data: a Pedestrian detection on a Van region is ignored, not a false positive."""
    van = [500.0, 50.0, 600.0, 100.0]
    truth = KittiGroundTruth(images={0: image(pedestrian(), region(van, "Van"))}, class_names=NAMES)
    coco = coco_ground_truth_from_kitti(truth)
    crowds = [ann for ann in coco.dataset["annotations"] if ann["iscrowd"]]
    assert sorted(ann["category_id"] for ann in crowds) == [0, 1, 2]
    compute_metrics = make_kitti_compute_metrics(truth)
    detections = np.array([[[*TALL, 0.9, PEDESTRIAN], [*van, 0.95, PEDESTRIAN], [0, 0, 0, 0, -1, 0]]])
    metrics = compute_metrics(EvalPrediction(predictions=[detections], label_ids=[[{"image_id": 0}]]))
    assert metrics["AP_Pedestrian"] == pytest.approx(1.0) and metrics["VOC_AP50_Pedestrian"] == pytest.approx(1.0)
    assert "AP" not in make_kitti_compute_metrics(truth, coco_metrics=False)(
        EvalPrediction(predictions=[detections], label_ids=[[{"image_id": 0}]])
    )
