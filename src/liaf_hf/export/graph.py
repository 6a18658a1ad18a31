"""The detector as a graph that exporters can trace: fixed inputs (`pixel_values`, `pixel_mask`), plain tensor
outputs, and the post-processing of `GFLImageProcessor.post_process_object_detection` written in tensor ops
that work for any batch and image size.

Two variants:

- `DetectionGraph(..., post_process=True)`: decoded boxes, score threshold, pre-NMS top-k over (anchor,
  class) pairs, class-aware NMS and the top `max_detections`, as the processor does, for every image of the
  batch at once; outputs padded to `max_detections` per image.
- `post_process=False`: every anchor's per-class scores and decoded box, for runtimes that add their own NMS.

Boxes are xyxy in input pixels, that is in pixels of the image as `pixel_values` holds it (resized by the
processor), clipped to each image's valid (unpadded) region. Scale them by the original size over the valid
size to get boxes in the original image (`OnnxDetector` does).
"""

from __future__ import annotations

import torch
import torchvision
from torch import nn

from ..models.gfl.modeling_gfl import GFLForObjectDetection

#: Names of the graph's inputs and outputs, in order.
INPUT_NAMES = ("pixel_values", "pixel_mask")
DETECTION_OUTPUT_NAMES = ("boxes", "scores", "labels", "num_detections")
RAW_OUTPUT_NAMES = ("boxes", "scores")


class DetectionGraph(nn.Module):
    """A `GFLForObjectDetection` in eval mode with its post-processing, as one traceable module.

    Args:
        model: the detector (its weights are shared, not copied).
        post_process: include threshold, top-k and NMS (see the module docstring).
        score_threshold: keep (anchor, class) pairs scoring above this.
        nms_iou_threshold: class-aware NMS suppresses a box overlapping a better one of its class by more.
        pre_nms_top_k: at most this many (anchor, class) pairs per image enter NMS.
        max_detections: detections kept per image (the padded width of the outputs).
    """

    def __init__(
        self,
        model: GFLForObjectDetection,
        *,
        post_process: bool = True,
        score_threshold: float = 0.05,
        nms_iou_threshold: float = 0.6,
        pre_nms_top_k: int = 1000,
        max_detections: int = 100,
    ) -> None:
        super().__init__()
        self.model = model.eval()
        self.post_process = post_process
        self.score_threshold = float(score_threshold)
        self.nms_iou_threshold = float(nms_iou_threshold)
        self.pre_nms_top_k = int(pre_nms_top_k)
        self.max_detections = int(max_detections)

    @classmethod
    def for_processor(cls, model: GFLForObjectDetection, processor, *, post_process: bool = True, **overrides):
        """The graph with the post-processing settings of a `GFLImageProcessor` (`overrides` win)."""
        settings = {
            "score_threshold": processor.score_threshold,
            "nms_iou_threshold": processor.nms_iou_threshold,
            "pre_nms_top_k": processor.pre_nms_top_k,
            "max_detections": processor.max_detections,
        }
        settings.update(overrides)
        return cls(model, post_process=post_process, **settings)

    @property
    def output_names(self) -> tuple[str, ...]:
        return DETECTION_OUTPUT_NAMES if self.post_process else RAW_OUTPUT_NAMES

    def forward(self, pixel_values: torch.Tensor, pixel_mask: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """
        Args:
            pixel_values: (B, 3, H, W) float32, RGB, normalised by the processor, padded at the bottom and right.
            pixel_mask: (B, H, W) int64, 1 on real pixels, 0 on padding.

        Returns:
            With post-processing: `boxes` (B, D, 4) float32 xyxy input pixels, `scores` (B, D) float32,
            `labels` (B, D) int64 and `num_detections` (B,) int64, D = `max_detections`; each image's first
            `num_detections` rows are its detections, highest score first, the rest is padding (score 0, label
            -1, box 0). Without: `boxes` (B, A, 4) and `scores` (B, A, C), sigmoid of the logits.
        """
        boxes, scores = self._dense(pixel_values, pixel_mask)
        if not self.post_process:
            return boxes, scores
        return self._detections(boxes, scores)

    def _dense(self, pixel_values: torch.Tensor, pixel_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Every anchor's box (B, A, 4) xyxy input pixels clipped to its image and scores (B, A, C).

        The model's own pieces, in the order its `forward` runs them, without the anchor cache (it is keyed by
        the feature sizes, which are symbolic while exporting) and without the normalised cxcywh round trip.
        """
        model = self.model
        features = model.forward_features(pixel_values)
        class_logits, box_distributions = model.head(features)
        anchor_points, anchor_strides = self._anchor_points(features)
        logits = torch.cat([logit.flatten(2).transpose(1, 2) for logit in class_logits], dim=1)
        distributions = torch.cat([dist.flatten(2).transpose(1, 2) for dist in box_distributions], dim=1)
        boxes = model._decode_boxes(distributions, anchor_points, anchor_strides)
        valid_sizes = model.valid_sizes(pixel_values, pixel_mask)  # (B, 2) as (height, width)
        limits = valid_sizes.flip(-1).repeat(1, 2)[:, None, :]  # (B, 1, 4) as (w, h, w, h)
        boxes = torch.minimum(boxes.clamp(min=0.0), limits)
        return boxes, logits.float().sigmoid()

    def _anchor_points(self, features: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """The model's anchor centres (A, 2) as (x, y) input pixels and strides (A,), built from a flat index
        rather than `meshgrid`: reshaping a meshgrid's expanded view makes the exporter specialise on whether a
        level is one cell wide, which fixes the input size range it accepts."""
        points, strides = [], []
        for feature, stride in zip(features, self.model.strides):
            height, width = feature.shape[-2:]
            cells = torch.arange(height * width, device=feature.device)
            rows = torch.div(cells, width, rounding_mode="floor")  # not `%`: no ONNX form for a symbolic divisor
            xs = ((cells - rows * width).float() + 0.5) * stride
            ys = (rows.float() + 0.5) * stride
            points.append(torch.stack([xs, ys], dim=1))
            strides.append(torch.full_like(xs, float(stride)))
        return torch.cat(points), torch.cat(strides)

    def _detections(self, boxes: torch.Tensor, scores: torch.Tensor) -> tuple[torch.Tensor, ...]:
        batch_size, num_anchors, num_classes = scores.shape
        flat_scores = scores.reshape(batch_size, num_anchors * num_classes)
        # The processor takes the top k of the pairs above the threshold; the top k of all pairs, then the
        # threshold, selects the same pairs with a static k per image, so the whole batch goes through at once.
        k = torch.sym_min(self.pre_nms_top_k, num_anchors * num_classes)
        top_scores, top_pairs = flat_scores.topk(k, dim=1)  # (B, K), highest first
        top_labels = top_pairs % num_classes
        top_boxes = boxes.gather(1, (top_pairs // num_classes)[..., None].expand(-1, -1, 4))  # (B, K, 4)
        images = torch.arange(batch_size, device=scores.device)[:, None].expand_as(top_pairs)

        kept = (top_scores > self.score_threshold).reshape(-1).nonzero().squeeze(1)
        candidate_scores = top_scores.reshape(-1)[kept]
        candidate_labels = top_labels.reshape(-1)[kept]
        candidate_boxes = top_boxes.reshape(-1, 4)[kept]
        candidate_images = images.reshape(-1)[kept]
        # One NMS over the whole batch, class-aware and image-aware: each (image, class) group's boxes are moved
        # to a region of their own, so boxes of different groups never overlap (torchvision's batched_nms does
        # the same per image).
        group = candidate_images * num_classes + candidate_labels
        offsets = (group.to(candidate_boxes.dtype) * (candidate_boxes.max() + 1.0))[:, None]
        survivors = torchvision.ops.nms(candidate_boxes + offsets, candidate_scores, self.nms_iou_threshold)
        # survivors are ordered by score over the whole batch; an image's rank among its own survivors is the
        # count of its survivors before it.
        survivor_images = candidate_images[survivors]
        one_hot = (survivor_images[:, None] == torch.arange(batch_size, device=scores.device)[None, :]).long()
        ranks = (one_hot.cumsum(0) * one_hot).sum(1) - 1
        within = (ranks < self.max_detections).nonzero().squeeze(1)
        rows, columns, chosen = survivor_images[within], ranks[within], survivors[within]

        width = self.max_detections
        out_boxes = boxes.new_zeros((batch_size, width, 4))
        out_scores = scores.new_zeros((batch_size, width))
        out_labels = torch.full((batch_size, width), -1, dtype=torch.long, device=scores.device)
        out_boxes = out_boxes.index_put((rows, columns), candidate_boxes[chosen])
        out_scores = out_scores.index_put((rows, columns), candidate_scores[chosen])
        out_labels = out_labels.index_put((rows, columns), candidate_labels[chosen])
        num_detections = one_hot.sum(0).clamp(max=width)
        return out_boxes, out_scores, out_labels, num_detections


__all__ = ["DETECTION_OUTPUT_NAMES", "INPUT_NAMES", "RAW_OUTPUT_NAMES", "DetectionGraph"]
