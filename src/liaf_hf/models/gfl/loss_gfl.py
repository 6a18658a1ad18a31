"""The GFL training loss: ATSS anchor assignment, Quality Focal, Distribution Focal and GIoU losses, and the
per-anchor targets they are computed against.

`GFLForObjectDetection` computes its loss with `GFLLoss` (its `loss_function`), as transformers' detectors keep
theirs apart from the network. The loss functions are plain functions with per-element results; `GFLLoss`
weights and normalises them. Like `modeling_gfl.py`, this file imports only torch: it is saved beside the model
code, which `trust_remote_code=True` loads without liaf_hf.

Boxes are absolute (x1, y1, x2, y2) in pixels of the padded input throughout.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

# --------------------------------------------------------------------------------------------------
# Box helpers
# --------------------------------------------------------------------------------------------------


def box_cxcywh_to_xyxy(boxes: torch.Tensor) -> torch.Tensor:
    """(..., 4) centre-size boxes to (..., 4) corner boxes, same units (both corners at once: four kernels on
    a GPU rather than one per coordinate)."""
    centres, half_sizes = boxes[..., :2], 0.5 * boxes[..., 2:]
    return torch.cat([centres - half_sizes, centres + half_sizes], dim=-1)


def box_xyxy_to_cxcywh(boxes: torch.Tensor) -> torch.Tensor:
    """(..., 4) corner boxes to (..., 4) centre-size boxes, same units."""
    top_left, bottom_right = boxes[..., :2], boxes[..., 2:]
    return torch.cat([(top_left + bottom_right) * 0.5, bottom_right - top_left], dim=-1)


# Host data (Python numbers and lists) sent to the device without making the host wait for it.
# `torch.tensor(data, device="cuda")`, or `torch.tensor(data).to("cuda")`, copies from pageable memory, and
# PyTorch synchronises the stream after such a copy: the host waits until the GPU has run everything queued
# before it. In a training step whose host is the bottleneck (the GPU idles between kernels it has not been
# given yet) each such wait is time lost. (Here rather than in liaf_hf: the model code that `trust_remote_code=True`
# loads uses them, and it cannot import liaf_hf.)


def host_tensor(data, *, dtype: torch.dtype, device: torch.device | str) -> torch.Tensor:
    """`torch.tensor(data, dtype=dtype)` on `device`; on a CUDA device copied from pinned memory without
    blocking the host (PyTorch's pinned-memory cache keeps the source until the copy has run)."""
    device = torch.device(device)
    if device.type != "cuda":
        return torch.tensor(data, dtype=dtype, device=device)
    return torch.tensor(data, dtype=dtype, pin_memory=True).to(device, non_blocking=True)


def host_scalar(value: float, *, device: torch.device | str, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """A () tensor holding `value` on `device`, filled there: no copy from the host at all."""
    return torch.full((), value, dtype=dtype, device=device)


def group_of_each(counts: list[int], *, device: torch.device | str) -> torch.Tensor:
    """(sum(counts),) long: `i` repeated `counts[i]` times, e.g. the image of each box of a batch whose boxes
    are listed one image after another (`repeat_interleave` on the host, sent with `host_tensor`)."""
    return host_tensor(
        [group for group, count in enumerate(counts) for _ in range(count)], dtype=torch.long, device=device
    )


def _padded(tensors: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-image lists `(n_i, ...)` stacked as `(B, max n_i, ...)` with zeros after each list's end, and the
    `(B, max n_i)` mask of real entries (a handful of kernel launches whatever B is)."""
    counts = [len(tensor) for tensor in tensors]
    width = max(counts, default=0)
    flat = torch.cat(tensors)
    stacked = flat.new_zeros((len(tensors), width, *flat.shape[1:]))
    # Where each entry goes, worked out in Python and sent to the device in one copy.
    places = [(row, column) for row, count in enumerate(counts) for column in range(count)]
    rows, columns = host_tensor(places, dtype=torch.long, device=flat.device).reshape(-1, 2).unbind(1)
    stacked[rows, columns] = flat
    valid = torch.zeros(len(tensors), width, dtype=torch.bool, device=flat.device)
    valid[rows, columns] = True
    return stacked, valid


def aligned_box_iou(boxes1: torch.Tensor, boxes2: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """IoU of each box in `boxes1` (N, 4) xyxy with the box at the same index in `boxes2` (N, 4): (N,)."""
    top_left = torch.maximum(boxes1[:, :2], boxes2[:, :2])
    bottom_right = torch.minimum(boxes1[:, 2:], boxes2[:, 2:])
    overlap = (bottom_right - top_left).clamp(min=0).prod(dim=1)
    area1 = (boxes1[:, 2:] - boxes1[:, :2]).clamp(min=0).prod(dim=1)
    area2 = (boxes2[:, 2:] - boxes2[:, :2]).clamp(min=0).prod(dim=1)
    return overlap / (area1 + area2 - overlap).clamp(min=eps)


def box_intersection_over_first(boxes1: torch.Tensor, boxes2: torch.Tensor) -> torch.Tensor:
    """Intersection of every pair divided by the area of the box from `boxes1`: (N, 4), (..., M, 4) ->
    (..., N, M)."""
    overlap = _pairwise_intersection(boxes1, boxes2)
    area1 = (boxes1[:, 2:] - boxes1[:, :2]).clamp(min=1e-6).prod(dim=1)
    return overlap / area1[:, None]


def pairwise_box_iou(boxes1: torch.Tensor, boxes2: torch.Tensor) -> torch.Tensor:
    """IoU of every pair of xyxy boxes: (N, 4), (..., M, 4) -> (..., N, M) (a batch of box lists against one
    set of anchors in one call)."""
    overlap = _pairwise_intersection(boxes1, boxes2)
    area1 = (boxes1[:, 2:] - boxes1[:, :2]).prod(dim=1)
    area2 = (boxes2[..., 2:] - boxes2[..., :2]).prod(dim=-1)
    return overlap / (area1[:, None] + area2[..., None, :] - overlap)


def _pairwise_intersection(boxes1: torch.Tensor, boxes2: torch.Tensor) -> torch.Tensor:
    top_left = torch.maximum(boxes1[:, None, :2], boxes2[..., None, :, :2])
    bottom_right = torch.minimum(boxes1[:, None, 2:], boxes2[..., None, :, 2:])
    return (bottom_right - top_left).clamp(min=0).prod(dim=-1)


# --------------------------------------------------------------------------------------------------
# Losses (plain functions, per-element results; the caller weights and normalises)
# --------------------------------------------------------------------------------------------------


def quality_focal_loss(
    logits: torch.Tensor, target_labels: torch.Tensor, target_quality: torch.Tensor, beta: float = 2.0
) -> torch.Tensor:
    """Quality Focal Loss (Li et al. 2020, eq. 5), summed over classes.

    Args:
        logits: (N, C) classification logits.
        target_labels: (N,) class index per sample; C (or any value outside 0..C-1) means background.
        target_quality: (N,) IoU of the predicted box with its ground truth, the soft target of the
            positive class; ignored for background samples.
        beta: focusing exponent.

    Returns:
        (N,) loss per sample.
    """
    logits = logits.float()
    probs = logits.sigmoid()
    # Every class starts as a negative: target 0, modulated by the predicted probability.
    loss = F.binary_cross_entropy_with_logits(logits, torch.zeros_like(logits), reduction="none") * probs.pow(beta)
    num_classes = logits.shape[1]
    positive = (target_labels >= 0) & (target_labels < num_classes)
    # The positive class's term of every sample, computed densely and kept where the sample is positive:
    # selecting the positives first (`nonzero`) made the host wait for the device on every call.
    columns = target_labels.clamp(0, num_classes - 1)[:, None]  # (N, 1)
    quality = torch.where(positive, target_quality.float(), 0.0)  # finite where unused, so are the gradients
    scale = (quality - probs.gather(1, columns).squeeze(1)).abs().pow(beta)
    positive_loss = F.binary_cross_entropy_with_logits(logits.gather(1, columns).squeeze(1), quality, reduction="none")
    kept = torch.where(positive, positive_loss * scale, loss.gather(1, columns).squeeze(1))
    loss = loss.scatter(1, columns, kept[:, None])
    return loss.sum(dim=1)


def distribution_focal_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Distribution Focal Loss (Li et al. 2020, eq. 6).

    Args:
        logits: (M, R + 1) logits of the distribution over the integer distances 0..R.
        target: (M,) real-valued target distance in [0, R).

    Returns:
        (M,) loss per sample: cross-entropy towards the two integers around the target, weighted by
        closeness.
    """
    # One log-softmax for both neighbours (two cross-entropies would keep two for the backward pass: the GFL
    # loss evaluates this at every anchor, so that is a (B * A * 4, R + 1) tensor).
    log_probs = F.log_softmax(logits.float(), dim=1)
    left = target.long()
    right = left + 1
    weight_left = right.float() - target
    weight_right = target - left.float()
    return -(
        log_probs.gather(1, left[:, None]).squeeze(1) * weight_left
        + log_probs.gather(1, right[:, None]).squeeze(1) * weight_right
    )


def giou_loss(pred_boxes: torch.Tensor, target_boxes: torch.Tensor, eps: float = 1e-7) -> torch.Tensor:
    """1 - GIoU for aligned pairs of (N, 4) xyxy boxes: (N,).

    The values and gradients of `torchvision.ops.generalized_box_iou_loss`, with the intersection clamped at
    zero instead of taken under a boolean mask: on a GPU each masked read waits for the device to count the
    mask, five waits per training step.
    """
    pred_boxes, target_boxes = pred_boxes.float(), target_boxes.float()
    top_left = torch.maximum(pred_boxes[:, :2], target_boxes[:, :2])
    bottom_right = torch.minimum(pred_boxes[:, 2:], target_boxes[:, 2:])
    intersection = (bottom_right - top_left).clamp(min=0).prod(dim=1)
    pred_area = (pred_boxes[:, 2:] - pred_boxes[:, :2]).prod(dim=1)
    target_area = (target_boxes[:, 2:] - target_boxes[:, :2]).prod(dim=1)
    union = pred_area + target_area - intersection
    enclosing = (
        torch.maximum(pred_boxes[:, 2:], target_boxes[:, 2:]) - torch.minimum(pred_boxes[:, :2], target_boxes[:, :2])
    ).prod(dim=1)
    giou = intersection / (union + eps) - (enclosing - union) / (enclosing + eps)
    return 1 - giou


def _mean_over_processes(value: torch.Tensor, *, floor: float = 1.0) -> torch.Tensor:
    """A loss normaliser: the scalar summed over training processes and floored at `floor`, then divided by
    the number of processes, so every process divides by the same count and the gradients DDP averages equal
    one process's on the whole batch. (mmdetection floors the per-process mean instead, which halves the
    loss of two processes whenever the total is below 2, as early in training when few scores are high.)"""
    world_size = 1
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        value = value.clone()
        torch.distributed.all_reduce(value)
        world_size = torch.distributed.get_world_size()
    return value.clamp(min=floor) / world_size


# --------------------------------------------------------------------------------------------------
# Assignment
# --------------------------------------------------------------------------------------------------


#: Most (image, anchor, box) elements one assignment pass holds (2**24 float32: 64 MB per tensor).
ASSIGNMENT_CHUNK_ELEMENTS = 1 << 24


@dataclass
class AnchorAssignment:
    """Result of assigning anchors, for one image (A,) or a batch (B, A).

    Attributes:
        gt_index: (..., A) index of the ground-truth box each anchor is positive for, -1 for negatives.
        ignored: (..., A) anchors that are neither positive nor negative (inside an ignore region or in the
            padding), so the classification loss skips them.
    """

    gt_index: torch.Tensor
    ignored: torch.Tensor


class ATSSAssigner:
    """Adaptive Training Sample Selection (Zhang et al., CVPR 2020).

    For each ground-truth box, the `topk` anchors per level whose centres are closest to the box centre
    are candidates; those whose IoU with the box reaches the candidates' mean + standard deviation and
    whose centre lies inside the box become positives. An anchor claimed by several boxes goes to the one
    it overlaps most.

    When many candidates overlap the box equally (on a small image the finest anchors, eight strides wide,
    each hold the whole picture), mean + standard deviation can exceed every IoU and leave the box without
    a positive, as it does in mmdetection. The threshold is then lowered to the best IoU among the
    candidates centred inside the box, so a box gets positives whenever a candidate is centred in it; the
    assignment of a box that has a positive by the paper's rule is unchanged.

    `assign_batch` assigns a batch of images in one pass over padded box lists: a pass per image would launch
    its kernels once per image, and on a GPU launches, not arithmetic, set a step's time.
    """

    def __init__(self, *, topk: int = 9, ignore_iof_threshold: float = 0.5) -> None:
        self.topk = topk
        self.ignore_iof_threshold = ignore_iof_threshold

    def assign(
        self,
        *,
        anchors: torch.Tensor,
        num_anchors_per_level: list[int],
        gt_boxes: torch.Tensor,
        ignore_boxes: torch.Tensor | None = None,
        anchor_valid: torch.Tensor | None = None,
    ) -> AnchorAssignment:
        """Assign one image's anchors to its ground-truth boxes.

        Args:
            anchors: (A, 4) anchor boxes, xyxy in pixels, levels concatenated in order.
            num_anchors_per_level: number of anchors of each level, summing to A.
            gt_boxes: (G, 4) ground-truth boxes, xyxy in pixels.
            ignore_boxes: (I, 4) regions to ignore, xyxy in pixels.
            anchor_valid: (A,) False for anchors whose centre lies in the padding.

        Returns:
            `gt_index` and `ignored` of shape (A,).
        """
        batched = self.assign_batch(
            anchors=anchors,
            num_anchors_per_level=num_anchors_per_level,
            gt_boxes=gt_boxes[None],
            ignore_boxes=None if ignore_boxes is None else ignore_boxes[None],
            anchor_valid=None if anchor_valid is None else anchor_valid[None],
        )
        return AnchorAssignment(gt_index=batched.gt_index[0], ignored=batched.ignored[0])

    def assign_batch(
        self,
        *,
        anchors: torch.Tensor,
        num_anchors_per_level: list[int],
        gt_boxes: torch.Tensor,
        gt_valid: torch.Tensor | None = None,
        ignore_boxes: torch.Tensor | None = None,
        ignore_valid: torch.Tensor | None = None,
        anchor_valid: torch.Tensor | None = None,
    ) -> AnchorAssignment:
        """Assign the anchors of B images (the same anchors for each) to each image's boxes.

        Args:
            anchors: (A, 4) anchor boxes, xyxy in pixels, levels concatenated in order.
            num_anchors_per_level: number of anchors of each level, summing to A.
            gt_boxes: (B, G, 4) each image's ground-truth boxes, xyxy in pixels, padded to the longest list.
            gt_valid: (B, G) False at padding; None when no list is padded.
            ignore_boxes: (B, I, 4) regions to ignore, xyxy in pixels, padded likewise.
            ignore_valid: (B, I) False at padding; None when no list is padded.
            anchor_valid: (B, A) False for anchors whose centre lies in the image's padding.

        Returns:
            `gt_index` and `ignored` of shape (B, A).
        """
        batch_size, num_gt = gt_boxes.shape[:2]
        ignored = self._ignored(anchors, batch_size, ignore_boxes, ignore_valid, anchor_valid)
        if num_gt == 0:
            gt_index = torch.full((batch_size, anchors.shape[0]), -1, dtype=torch.long, device=anchors.device)
            return AnchorAssignment(gt_index=gt_index, ignored=ignored)

        overlaps = pairwise_box_iou(anchors, gt_boxes)  # (B, A, G)
        anchor_centres = (anchors[:, :2] + anchors[:, 2:]) * 0.5  # (A, 2)
        gt_centres = (gt_boxes[..., :2] + gt_boxes[..., 2:]) * 0.5  # (B, G, 2)
        distances = torch.hypot(
            anchor_centres[None, :, None, 0] - gt_centres[:, None, :, 0],
            anchor_centres[None, :, None, 1] - gt_centres[:, None, :, 1],
        )  # (B, A, G)
        if anchor_valid is not None:
            distances = distances.masked_fill(~anchor_valid[:, :, None], float("inf"))

        candidates = self._closest_per_level(distances, num_anchors_per_level)  # (B, K, G)
        candidate_overlaps = overlaps.gather(1, candidates)
        # A single candidate has no spread (its unbiased std would be NaN and reject everything).
        spread = (
            candidate_overlaps.std(dim=1) if candidates.shape[1] > 1 else torch.zeros_like(candidate_overlaps[:, 0])
        )
        threshold = candidate_overlaps.mean(dim=1) + spread  # (B, G)

        candidate_centres = anchor_centres[candidates]  # (B, K, G, 2)
        edge_distances = torch.cat(
            [candidate_centres - gt_boxes[:, None, :, :2], gt_boxes[:, None, :, 2:] - candidate_centres], dim=3
        )
        centred_inside = edge_distances.min(dim=3).values > 0.01  # (B, K, G)
        if gt_valid is not None:
            centred_inside &= gt_valid[:, None, :]
        # Tied IoUs (every candidate of a level holds the whole box) can put mean + std above every IoU; the
        # best candidate centred in the box then still reaches the threshold. A box that has a positive by
        # the paper's rule keeps exactly its assignment.
        best_inside = candidate_overlaps.masked_fill(~centred_inside, -math.inf).amax(dim=1)  # (B, G)
        threshold = torch.minimum(threshold, best_inside)
        is_positive = centred_inside & (candidate_overlaps >= threshold[:, None, :])

        # A box's candidates are distinct anchors (top-k within a level, levels disjoint), so the scatter
        # writes each (image, anchor, box) at most once.
        claimed = torch.full_like(overlaps, -math.inf).scatter_(
            1, candidates, candidate_overlaps.masked_fill(~is_positive, -math.inf)
        )
        best_overlap, best_gt = claimed.max(dim=2)
        positive = best_overlap > -math.inf
        gt_index = torch.where(positive, best_gt, -1)
        return AnchorAssignment(gt_index=gt_index, ignored=ignored & ~positive)

    def _ignored(
        self,
        anchors: torch.Tensor,
        batch_size: int,
        ignore_boxes: torch.Tensor | None,
        ignore_valid: torch.Tensor | None,
        anchor_valid: torch.Tensor | None,
    ) -> torch.Tensor:
        """(B, A) anchors in the padding or covered, over `ignore_iof_threshold` of their area, by an ignore
        region (shapes as in `assign_batch`)."""
        ignored = torch.zeros(batch_size, anchors.shape[0], dtype=torch.bool, device=anchors.device)
        if anchor_valid is not None:
            ignored |= ~anchor_valid
        if ignore_boxes is not None and ignore_boxes.shape[1] > 0:
            iof = box_intersection_over_first(anchors, ignore_boxes)  # (B, A, I)
            if ignore_valid is not None:
                iof = iof.masked_fill(~ignore_valid[:, None, :], 0.0)
            ignored |= iof.max(dim=2).values > self.ignore_iof_threshold
        return ignored

    def _closest_per_level(self, distances: torch.Tensor, num_anchors_per_level: list[int]) -> torch.Tensor:
        """(B, K, G) indices of each box's `topk` closest anchors on every level (fewer on a level with fewer
        anchors), from the (B, A, G) centre distances."""
        candidates = []
        start = 0
        for level_count in num_anchors_per_level:
            k = min(self.topk, level_count)
            _, level_candidates = distances[:, start : start + level_count].topk(k, dim=1, largest=False)
            candidates.append(level_candidates + start)
            start += level_count
        return torch.cat(candidates, dim=1)


# --------------------------------------------------------------------------------------------------
# The loss of a batch
# --------------------------------------------------------------------------------------------------


@dataclass
class GFLLossOutput:
    """What `GFLLoss` computes for a batch. A = anchor points over all levels, N = ground-truth instances of the
    batch, image after image.

    Attributes:
        losses: `loss_qfl`, `loss_dfl` and `loss_giou`, each times its weight from the config; the loss is their sum.
        positive_mask: (B, A) bool, True at the anchors the assignment made positive.
        instance_losses: (N,) each instance's own loss, without gradient, when asked for; else None.
        instance_quality: (N,) how right the detector is on each instance, when asked for; else None.
    """

    losses: dict[str, torch.Tensor]
    positive_mask: torch.Tensor
    instance_losses: torch.Tensor | None = None
    instance_quality: torch.Tensor | None = None


class GFLLoss:
    """The training loss of a GFL detector with `config` (a `GFLConfig`): ATSS assignment of the anchors
    (`assign_anchors`), then the GFL losses against the targets it gives (`__call__`).

    Args:
        config: the detector's `GFLConfig`; read at each call, so a changed loss weight takes effect.
    """

    def __init__(self, config) -> None:
        self.config = config
        self.assigner = ATSSAssigner(topk=config.atss_topk, ignore_iof_threshold=config.ignore_iof_threshold)

    def assign_anchors(
        self,
        *,
        anchor_points: torch.Tensor,
        anchor_strides: torch.Tensor,
        num_anchors_per_level: list[int],
        valid_sizes: torch.Tensor,
        targets: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]],
    ) -> AnchorAssignment:
        """ATSS assignment of every image's anchors: squares `anchor_scale` strides wide centred on the
        anchor points; anchors centred in an image's padding are never positive.

        Args:
            anchor_points: (A, 2) anchor centres (x, y) in input pixels.
            anchor_strides: (A,) stride of each anchor's level.
            num_anchors_per_level: anchors per level, summing to A.
            valid_sizes: (B, 2) unpadded (height, width) per image.
            targets: per image, what `labels_in_pixels` returns (boxes xyxy in input pixels).

        Returns:
            `gt_index` (B, A), indices into each image's own box list, and `ignored` (B, A).
        """
        half_size = anchor_strides[:, None] * self.config.anchor_scale / 2
        anchors = torch.cat([anchor_points - half_size, anchor_points + half_size], dim=1)
        anchor_valid = (anchor_points[None, :, 0] < valid_sizes[:, 1:2]) & (
            anchor_points[None, :, 1] < valid_sizes[:, 0:1]
        )  # (B, A)
        gt_boxes, gt_valid = _padded([boxes for _, boxes, _ in targets])
        ignore_boxes, ignore_valid = _padded(
            [ignore if ignore is not None else anchors.new_zeros((0, 4)) for _, _, ignore in targets]
        )
        # The (image, anchor, box) tensors are built in chunks of images that keep each under ~64 MB, so a
        # large batch of large images with many boxes cannot exhaust memory; a small batch is one chunk.
        per_image = anchors.shape[0] * max(gt_boxes.shape[1], ignore_boxes.shape[1], 1)
        chunk = max(1, ASSIGNMENT_CHUNK_ELEMENTS // per_image)
        parts = [
            self.assigner.assign_batch(
                anchors=anchors,
                num_anchors_per_level=num_anchors_per_level,
                gt_boxes=gt_boxes[start : start + chunk],
                gt_valid=gt_valid[start : start + chunk],
                ignore_boxes=ignore_boxes[start : start + chunk],
                ignore_valid=ignore_valid[start : start + chunk],
                anchor_valid=anchor_valid[start : start + chunk],
            )
            for start in range(0, len(targets), chunk)
        ]
        if len(parts) == 1:
            return parts[0]
        return AnchorAssignment(
            gt_index=torch.cat([part.gt_index for part in parts]), ignored=torch.cat([part.ignored for part in parts])
        )

    def __call__(
        self,
        *,
        flat_logits: torch.Tensor,
        flat_distributions: torch.Tensor,
        boxes_xyxy: torch.Tensor,
        anchor_points: torch.Tensor,
        anchor_strides: torch.Tensor,
        num_anchors_per_level: list[int],
        valid_sizes: torch.Tensor,
        targets: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]],
        output_instance_terms: bool = False,
    ) -> GFLLossOutput:
        """The GFL losses of a batch, normalised as in the paper's code.

        Args:
            flat_logits: (B, A, C) classification logits.
            flat_distributions: (B, A, 4 * (R + 1)) box-edge distribution logits.
            boxes_xyxy: (B, A, 4) decoded boxes in input pixels.
            anchor_points: (A, 2) anchor centres (x, y) in input pixels.
            anchor_strides: (A,) stride of each anchor's level.
            num_anchors_per_level: anchors per level, summing to A.
            valid_sizes: (B, 2) unpadded (height, width) per image.
            targets: per image `(class_labels (n,), boxes (n, 4) xyxy pixels, ignore_boxes (m, 4) or None)`.
            output_instance_terms: also compute each instance's (N,) loss and quality, without gradient
                (`GFLObjectDetectionOutput.instance_losses`, `instance_quality`).

        Returns:
            `loss_qfl` (QFL summed over anchors / number of positives), `loss_dfl` and `loss_giou` (summed over
            positives weighted by the predicted quality / the sum of those weights), each times its config weight,
            both normalisers averaged over processes; the positive mask; the instance terms when asked.
        """
        assignments = self.assign_anchors(
            anchor_points=anchor_points,
            anchor_strides=anchor_strides,
            num_anchors_per_level=num_anchors_per_level,
            valid_sizes=valid_sizes,
            targets=targets,
        )
        positive = assignments.gt_index >= 0  # (B, A)
        flat_index, cls_targets, target_boxes = self._anchor_targets(assignments, targets, anchor_points)
        overlaps = aligned_box_iou(boxes_xyxy.detach().float().reshape(-1, 4), target_boxes.reshape(-1, 4))
        quality_targets = torch.where(positive, overlaps.reshape(positive.shape).clamp(min=0.0), 0.0)
        qfl = quality_focal_loss(
            flat_logits.reshape(-1, self.config.num_labels),
            cls_targets.reshape(-1),
            quality_targets.reshape(-1),
            beta=self.config.qfl_beta,
        )
        # Ignored anchors are neither positive nor negative: they weigh 0.
        loss_qfl = (qfl * (~assignments.ignored).float().reshape(-1)).sum() / _mean_over_processes(
            positive.sum().float()
        )

        # Box losses weigh each positive by the detached predicted quality (as the paper's code does, so poorly
        # classified positives do not dominate). The zero weight of the negatives keeps the box branch in the
        # graph when a batch has no positives: multi-process training sees a gradient for every parameter.
        quality_weights = torch.where(positive, flat_logits.detach().float().sigmoid().max(dim=2).values, 0.0)
        box_normaliser = _mean_over_processes(quality_weights.sum())
        anchor_giou = giou_loss(boxes_xyxy.reshape(-1, 4), target_boxes.reshape(-1, 4))  # (B A,)
        loss_giou = (anchor_giou * quality_weights.reshape(-1)).sum()
        anchor_dfl = self._anchor_dfl(flat_distributions, target_boxes, anchor_points, anchor_strides)
        loss_dfl = (anchor_dfl * quality_weights[..., None].expand(-1, -1, 4).reshape(-1)).sum() / 4.0
        losses = {
            "loss_qfl": self.config.loss_qfl_weight * loss_qfl,
            "loss_dfl": self.config.loss_dfl_weight * loss_dfl / box_normaliser,
            "loss_giou": self.config.loss_giou_weight * loss_giou / box_normaliser,
        }
        output = GFLLossOutput(losses=losses, positive_mask=positive)
        if output_instance_terms:
            output.instance_losses, output.instance_quality = self._instance_terms(
                anchor_losses=(qfl, anchor_giou, anchor_dfl),
                flat_logits=flat_logits,
                cls_targets=cls_targets,
                quality_targets=quality_targets,
                positive=positive,
                flat_index=flat_index,
                num_instances=sum(len(boxes) for _, boxes, _ in targets),
            )
        return output

    def _anchor_dfl(
        self,
        flat_distributions: torch.Tensor,
        target_boxes: torch.Tensor,
        anchor_points: torch.Tensor,
        anchor_strides: torch.Tensor,
    ) -> torch.Tensor:
        """(B A 4,) the DFL of every anchor's four box edges against its target box's (in stride units, clamped
        to the distributions' range)."""
        reg_max = self.config.reg_max
        target_distances = (
            torch.cat([anchor_points - target_boxes[..., :2], target_boxes[..., 2:] - anchor_points], dim=2)
            / anchor_strides[:, None]
        )
        target_distances = target_distances.clamp(min=0.0, max=reg_max - 0.01)  # (B, A, 4)
        return distribution_focal_loss(flat_distributions.reshape(-1, reg_max + 1), target_distances.reshape(-1))

    def _anchor_targets(
        self,
        assignments: AnchorAssignment,
        targets: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]],
        anchor_points: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Every anchor's target, computed densely and weighted by 0 off the positives: selecting the positives
        (`nonzero`) made the host wait for the device once a step.

        Returns:
            `flat_index` (B, A): each positive's instance in the batch's concatenated instance list (its image's
            offset plus its index), N (the number of instances) elsewhere; `cls_targets` (B, A): its class,
            `num_classes` (background) off the positives; `target_boxes` (B, A, 4) xyxy input pixels: its box,
            and off the positives a 2-pixel square on the anchor point, never degenerate, so the GIoU and its
            gradient stay finite there before the zero weight removes them.
        """
        gt_index = assignments.gt_index
        positive = gt_index >= 0
        counts = [len(boxes) for _, boxes, _ in targets]
        offsets = host_tensor(
            [sum(counts[:image]) for image in range(len(counts))], dtype=torch.long, device=gt_index.device
        )
        flat_index = torch.where(positive, offsets[:, None] + gt_index, sum(counts))  # (B, A)
        # The negatives read a last, dummy row.
        all_boxes = torch.cat([boxes for _, boxes, _ in targets] + [anchor_points.new_zeros((1, 4))])
        all_classes = torch.cat(
            [classes for classes, _, _ in targets] + [gt_index.new_full((1,), self.config.num_labels)]
        )
        cls_targets = all_classes[flat_index]
        unit_boxes = torch.cat([anchor_points - 1.0, anchor_points + 1.0], dim=1)  # (A, 4)
        target_boxes = torch.where(positive[..., None], all_boxes[flat_index], unit_boxes)
        return flat_index, cls_targets, target_boxes

    @torch.no_grad()
    def _instance_terms(
        self,
        *,
        anchor_losses: tuple[torch.Tensor, torch.Tensor, torch.Tensor],
        flat_logits: torch.Tensor,
        cls_targets: torch.Tensor,
        quality_targets: torch.Tensor,
        positive: torch.Tensor,
        flat_index: torch.Tensor,
        num_instances: int,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Each instance's (N,) loss and quality. `anchor_losses`: every anchor's QFL summed over classes (B A,),
        GIoU (B A,) and DFL per edge (B A 4,), unweighted by quality; the others as in `__call__`, (B, A) each,
        `flat_index` holding the instance of each positive anchor and N elsewhere."""
        qfl, anchor_giou, anchor_dfl = anchor_losses
        anchor_loss = (
            self.config.loss_qfl_weight * qfl
            + self.config.loss_giou_weight * anchor_giou
            + self.config.loss_dfl_weight * anchor_dfl.view(-1, 4).mean(dim=1)
        )
        num_classes = self.config.num_labels
        anchor_loss = anchor_loss.detach()
        is_positive = positive.reshape(-1).float()
        index = flat_index.reshape(-1)
        # Slot N collects the negatives and is dropped.
        sums = anchor_loss.new_zeros(num_instances + 1).index_add_(0, index, anchor_loss * is_positive)
        anchors = anchor_loss.new_zeros(num_instances + 1).index_add_(0, index, is_positive)
        losses = sums[:num_instances] / anchors[:num_instances].clamp(min=1)
        assigned = anchors[:num_instances] > 0
        highest = torch.where(assigned, losses, 0.0).amax() if num_instances else losses.new_zeros(())
        losses = torch.where(assigned, losses, highest)
        class_scores = flat_logits.detach().float().sigmoid().reshape(-1, num_classes)
        columns = cls_targets.reshape(-1, 1).clamp(max=num_classes - 1)
        anchor_quality = class_scores.gather(1, columns).squeeze(1) * quality_targets.reshape(-1) * is_positive
        quality = anchor_loss.new_zeros(num_instances + 1).scatter_reduce_(
            0, index, anchor_quality, reduce="amax", include_self=True
        )
        return losses, quality[:num_instances]


__all__ = [
    "ATSSAssigner",
    "AnchorAssignment",
    "GFLLoss",
    "GFLLossOutput",
    "aligned_box_iou",
    "box_cxcywh_to_xyxy",
    "box_xyxy_to_cxcywh",
    "distribution_focal_loss",
    "giou_loss",
    "group_of_each",
    "host_scalar",
    "host_tensor",
    "pairwise_box_iou",
    "quality_focal_loss",
]
