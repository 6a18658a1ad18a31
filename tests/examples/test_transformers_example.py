"""A saved GFL folder used the way transformers' object-detection example uses any detector.

The example (`examples/pytorch/object-detection/run_object_detection.py` in the transformers repository)
loads the model, config and processor through the Auto classes with a `max_height`/`max_width` size and a
fixed `pad_size`, formats each image's objects as COCO annotations, drops `pixel_mask`, stacks the batch
itself, trains with a plain `Trainer` and scores with torchmetrics' `MeanAveragePrecision` after
post-processing a bare dataclass of `logits` and `pred_boxes`. These tests walk those steps with their own
code on a generated dataset of mixed image sizes, offline.
"""

from __future__ import annotations

import dataclasses
import math

import datasets
import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw
from transformers import (
    AutoConfig,
    AutoImageProcessor,
    AutoModelForObjectDetection,
    Trainer,
    TrainingArguments,
)

from liaf_hf import GFLImageProcessor
from liaf_hf.metrics.coco import CocoDetectionEvaluator, coco_ground_truth_from_dataset
from tiny import tiny_detector

torchmetrics_detection = pytest.importorskip("torchmetrics.detection")

CLASSES = ["box", "disc"]
IMAGE_SIZES = [(64, 48), (48, 64), (56, 56), (64, 40)]  # (width, height): every batch mixes sizes
SQUARE = 64  # the example's --image_square_size: resize to fit, pad to this square


def shapes_dataset(num_images: int, *, seed: int) -> datasets.Dataset:
    """Images of mixed sizes with 1-3 boxes and discs each, in the columns of the Hub's cppe-5."""
    rng = np.random.default_rng(seed)
    rows = {"image_id": [], "image": [], "width": [], "height": [], "objects": []}
    next_object_id = 0
    for image_id in range(num_images):
        width, height = IMAGE_SIZES[image_id % len(IMAGE_SIZES)]
        image = Image.new("RGB", (width, height), (90, 90, 90))
        draw = ImageDraw.Draw(image)
        objects = {"id": [], "area": [], "bbox": [], "category": []}
        for _ in range(int(rng.integers(1, 4))):
            size = int(rng.integers(14, 26))
            x, y = int(rng.integers(0, width - size)), int(rng.integers(0, height - size))
            category = int(rng.integers(0, 2))
            shape = [x, y, x + size - 1, y + size - 1]
            (draw.rectangle if category == 0 else draw.ellipse)(
                shape, fill=(250, 200, 40) if category else (40, 120, 250)
            )
            objects["id"].append(next_object_id)
            objects["area"].append(float(size * size))
            objects["bbox"].append([float(x), float(y), float(size), float(size)])
            objects["category"].append(category)
            next_object_id += 1
        for column, value in zip(rows, (image_id, image, width, height, objects)):
            rows[column].append(value)
    features = datasets.Features(
        {
            "image_id": datasets.Value("int64"),
            "image": datasets.Image(),
            "width": datasets.Value("int32"),
            "height": datasets.Value("int32"),
            "objects": {
                "id": datasets.List(datasets.Value("int64")),
                "area": datasets.List(datasets.Value("float64")),
                "bbox": datasets.List(datasets.List(datasets.Value("float32"), length=4)),
                "category": datasets.List(datasets.ClassLabel(names=CLASSES)),
            },
        }
    )
    return datasets.Dataset.from_dict(rows, features=features)


def as_coco_annotations(image_id: int, objects: dict) -> dict:
    """One image's objects (a dict of lists, as datasets 5 gives them) as a COCO detection target."""
    annotations = [
        {"image_id": image_id, "category_id": category, "iscrowd": 0, "area": area, "bbox": list(bbox)}
        for category, area, bbox in zip(objects["category"], objects["area"], objects["bbox"])
    ]
    return {"image_id": image_id, "annotations": annotations}


def transform_without_pixel_mask(examples: dict, *, image_processor) -> dict:
    images = [np.array(image.convert("RGB")) for image in examples["image"]]
    annotations = [as_coco_annotations(i, objects) for i, objects in zip(examples["image_id"], examples["objects"])]
    result = image_processor(images=images, annotations=annotations, return_tensors="pt")
    result.pop("pixel_mask", None)
    return result


def stack_batch(features: list[dict]) -> dict:
    return {
        "pixel_values": torch.stack([feature["pixel_values"] for feature in features]),
        "labels": [feature["labels"] for feature in features],
    }


@dataclasses.dataclass
class BareOutput:
    logits: torch.Tensor
    pred_boxes: torch.Tensor


def corners_in_pixels(boxes: torch.Tensor, size: torch.Tensor) -> torch.Tensor:
    """Normalised cxcywh boxes (n, 4) as absolute xyxy in an image of `size` (height, width)."""
    height, width = (float(v) for v in size)
    cx, cy, w, h = torch.as_tensor(boxes).reshape(-1, 4).unbind(-1)
    return torch.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], dim=-1) * torch.tensor(
        [width, height, width, height]
    )


def example_processor(folder):
    """The folder's processor loaded with the example's arguments: fit in the square, pad to it."""
    return AutoImageProcessor.from_pretrained(
        folder,
        do_resize=True,
        size={"max_height": SQUARE, "max_width": SQUARE},
        do_pad=True,
        pad_size={"height": SQUARE, "width": SQUARE},
        use_fast=True,
    )


@pytest.fixture(scope="module")
def saved_gfl(tmp_path_factory):
    """A GFL folder as a user saves it: tiny model, its processor, the model code for trust_remote_code."""
    folder = tmp_path_factory.mktemp("gfl")
    model = tiny_detector(dict(enumerate(CLASSES)), channels=32)
    model.save_pretrained(folder)
    GFLImageProcessor.for_model_config(model.config, size={"shortest_edge": 800, "longest_edge": 1333}).save_pretrained(
        folder
    )
    return folder


def test_processor_of_the_example_pads_to_the_square_and_keeps_each_image_size(saved_gfl):
    processor = example_processor(saved_gfl)
    dataset = shapes_dataset(4, seed=0).with_transform(
        lambda examples: transform_without_pixel_mask(examples, image_processor=processor)
    )
    batch = stack_batch([dataset[i] for i in range(4)])
    assert batch["pixel_values"].shape == (4, 3, SQUARE, SQUARE)
    # 64x48 fits as it is, 48x64 too, 56x56 grows to 64x64, 64x40 stays.
    assert [label["size"].tolist() for label in batch["labels"]] == [[48, 64], [64, 48], [64, 64], [40, 64]]
    assert all({"area", "iscrowd", "orig_size"} <= set(label) for label in batch["labels"])


def test_the_example_trains_and_its_torchmetrics_map_matches_our_pycocotools_ap(saved_gfl, tmp_path):
    config = AutoConfig.from_pretrained(
        saved_gfl, id2label=dict(enumerate(CLASSES)), label2id={name: i for i, name in enumerate(CLASSES)}
    )
    model = AutoModelForObjectDetection.from_pretrained(saved_gfl, config=config)
    processor = example_processor(saved_gfl)
    raw = shapes_dataset(8, seed=1)
    train = raw.with_transform(lambda examples: transform_without_pixel_mask(examples, image_processor=processor))
    evaluated = {}

    def compute_metrics(evaluation) -> dict[str, float]:
        targets, predictions = [], []
        for batch_predictions, batch_labels in zip(evaluation.predictions, evaluation.label_ids):
            assert len(batch_predictions) == 3, "only loss_dict, logits and pred_boxes should be gathered"
            sizes = torch.tensor(np.stack([label["orig_size"] for label in batch_labels]))
            for label in batch_labels:
                targets.append(
                    {
                        "boxes": corners_in_pixels(torch.as_tensor(label["boxes"]), label["orig_size"]),
                        "labels": torch.as_tensor(label["class_labels"]),
                    }
                )
            output = BareOutput(
                logits=torch.as_tensor(batch_predictions[1]), pred_boxes=torch.as_tensor(batch_predictions[2])
            )
            found = processor.post_process_object_detection(output, threshold=0.0, target_sizes=sizes)
            predictions.extend(found)
            evaluated.setdefault("image_ids", []).extend(int(label["image_id"]) for label in batch_labels)
        evaluated["predictions"] = predictions
        metric = torchmetrics_detection.MeanAveragePrecision(box_format="xyxy", class_metrics=True)
        metric.update(predictions, targets)
        return {key: float(value) for key, value in metric.compute().items() if torch.as_tensor(value).numel() == 1}

    arguments = TrainingArguments(
        output_dir=str(tmp_path / "run"),
        max_steps=30,
        per_device_train_batch_size=4,
        per_device_eval_batch_size=4,
        learning_rate=2e-3,
        warmup_steps=5,
        eval_do_concat_batches=False,
        remove_unused_columns=False,
        report_to="none",
        save_strategy="no",
        logging_steps=1000,
        dataloader_num_workers=0,
        use_cpu=True,
        seed=0,
    )
    trainer = Trainer(
        model=model,
        args=arguments,
        train_dataset=train,
        eval_dataset=train,
        processing_class=processor,
        data_collator=stack_batch,
        compute_metrics=compute_metrics,
    )
    trainer.train()
    metrics = trainer.evaluate()

    evaluator = CocoDetectionEvaluator(coco_ground_truth_from_dataset(raw))
    evaluator.update(evaluated["image_ids"], evaluated["predictions"])
    ours = evaluator.compute()
    assert ours["AP50"] > 0.3, "the model should have learnt the eight training images a little"
    assert math.isclose(metrics["eval_map"], ours["AP"], abs_tol=1e-3)
    assert math.isclose(metrics["eval_map_50"], ours["AP50"], abs_tol=1e-3)
    assert math.isclose(metrics["eval_mar_100"], ours["AR100"], abs_tol=1e-3)
