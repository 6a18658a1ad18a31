"""Glue between the GFL detector and `transformers.Trainer` evaluation."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from .models.gfl.image_processing_gfl import GFLImageProcessor


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
