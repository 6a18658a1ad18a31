"""What makes `transformers.Trainer` train and score a detector: the transformed datasets, the padding collator,
the metrics, the reduction of dense outputs to detections, and the arguments detection batches need."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import datasets
import torch
from transformers import TrainingArguments

from ..data.collate import DetectionCollator, DetectionTransform
from ..models.gfl.image_processing_gfl import GFLImageProcessor
from .callbacks import AugmentationEpochCallback, TrainingProgressCallback


def detection_trainer_kwargs(
    *,
    image_processor: GFLImageProcessor,
    train_dataset: datasets.Dataset | None,
    eval_dataset: datasets.Dataset | None,
    seed: int = 0,
    skip_bad_images: bool = False,
    run_name: str | None = None,
) -> dict[str, Any]:
    """Keyword arguments that make `transformers.Trainer` (or a subclass) train and score a detector:
    transformed datasets, the padding collator, COCO metrics (and VOC AP50 and KITTI AP40 for KITTI data, see
    `liaf_hf.metrics.kitti`), the reduction of dense outputs, and the
    callback that gives each epoch its own (reproducible) augmentation, seeded by `seed`. An unreadable
    image raises `DataError` naming it, or is dropped and counted with `skip_bad_images`. With `run_name`,
    the run's start, its time per step and its estimated time left are logged under that name
    (`liaf_hf.progress.TrainingProgressCallback`)."""
    from ..metrics import (
        coco_ground_truth_from_dataset,
        is_kitti_dataset,
        kitti_ground_truth_from_dataset,
        make_coco_compute_metrics,
        make_kitti_compute_metrics,
    )

    kwargs: dict[str, Any] = {
        "data_collator": DetectionCollator(image_processor),
        "processing_class": image_processor,
        "preprocess_logits_for_metrics": DetectionsForMetrics(image_processor),
    }
    if train_dataset is not None:
        transform = DetectionTransform(image_processor, train=True, seed=seed, skip_bad_images=skip_bad_images)
        kwargs["train_dataset"] = transform.apply_to(train_dataset)
        kwargs["callbacks"] = [AugmentationEpochCallback(transform)]
        if run_name is not None:
            kwargs["callbacks"].append(TrainingProgressCallback(run_name))
    if eval_dataset is not None:
        eval_transform = DetectionTransform(image_processor, train=False, skip_bad_images=skip_bad_images)
        kwargs["eval_dataset"] = eval_transform.apply_to(eval_dataset)
        # KITTI data is scored with VOC AP50 and KITTI AP40 besides COCO AP; any other set with COCO AP.
        kwargs["compute_metrics"] = (
            make_kitti_compute_metrics(kitti_ground_truth_from_dataset(eval_dataset))
            if is_kitti_dataset(eval_dataset)
            else make_coco_compute_metrics(coco_ground_truth_from_dataset(eval_dataset))
        )
    return kwargs


def configure_for_detection(training_args: TrainingArguments) -> TrainingArguments:
    """Detection batches are images plus a list of label dicts, which the Trainer must pass through
    untouched and keep per batch, and copy to a GPU without waiting for it."""
    training_args.remove_unused_columns = False
    training_args.eval_do_concat_batches = False
    # Labels hold a different number of boxes per image: several processes can only exchange them as objects
    # (a tensor gather of unequal shapes aborts the gloo process group).
    training_args.eval_use_gather_object = True
    if not torch.cuda.is_available():
        # Pinned memory only helps copies to an accelerator; on a CPU-only machine torch warns about it.
        training_args.dataloader_pin_memory = False
    elif training_args.dataloader_pin_memory:
        # A batch carries six label tensors per image (classes, boxes, ignore regions, id, sizes), each copied
        # to the GPU on its own. A blocking copy synchronises the stream (the host waits for every kernel
        # queued before it): 194 waits for a batch of 32 images. From the loader's pinned memory the copies are
        # queued without waiting.
        training_args.accelerator_config.non_blocking = True
    return training_args


def _first_two_tensors(outputs) -> tuple[torch.Tensor, torch.Tensor]:
    """`logits` and `pred_boxes` from what Trainer passes as "logits": the model output as a tuple without
    the loss. They are the output's first two tensor fields whether or not `loss_dict` (a dict) precedes
    them, which depends on whether labels were given."""
    if isinstance(outputs, dict):
        return outputs["logits"], outputs["pred_boxes"]
    tensors = [value for value in outputs if isinstance(value, torch.Tensor)]
    if len(tensors) < 2:
        raise ValueError("Expected GFL outputs with 'logits' and 'pred_boxes' tensors.")
    return tensors[0], tensors[1]


class DetectionsForMetrics:
    """`preprocess_logits_for_metrics` for `transformers.Trainer`: reduces each batch's dense outputs
    (B, A, C) to at most `max_detections` post-processed detections per image, so evaluation memory does
    not grow with the number of anchors.

    Returns per batch a float tensor (B, K, 6) of (x1, y1, x2, y2, score, label) in absolute pixels of each
    original image; padding rows have score -1.
    """

    def __init__(self, image_processor: GFLImageProcessor) -> None:
        self.image_processor = image_processor

    def __call__(self, outputs, labels: Sequence[dict]) -> torch.Tensor:
        logits, pred_boxes = _first_two_tensors(outputs)
        target_sizes = [label["orig_size"].tolist() for label in labels]
        detections = self.image_processor.post_process_object_detection(
            {"logits": logits, "pred_boxes": pred_boxes}, target_sizes=target_sizes
        )
        max_detections = self.image_processor.max_detections
        packed = logits.new_full((len(detections), max_detections, 6), -1.0, dtype=torch.float32)
        for index, image in enumerate(detections):
            count = image["scores"].numel()
            packed[index, :count, :4] = image["boxes"]
            packed[index, :count, 4] = image["scores"]
            packed[index, :count, 5] = image["labels"].float()
        return packed
