"""A batch's ground-truth instances on every FPN level at once, for the instance-level distillers (LIAF-KD, AID).

The levels' cells are laid side by side (P = sum_l H_l W_l, finest level first, each level's cells row by
row), each instance j gets one Gaussian mask G_j over all of them (each level's block sums to 1, see
`_masks.multi_level_gaussian_masks`), and its discrepancy on every level l,

    d_lj = sum_p G_lj(p) |T_l(:, p) - S_l(:, p)|^2 / (C E_l),

comes from one batched product (E_l: the teacher's mean squared activation on the level, or 1). Computed a
level at a time the same costs some hundred tensor operations per level, forward and backward; on a GPU
each is a kernel launch, and at detector sizes launches rather than arithmetic set a distillation step's
time. Instances are held both flat (N = sum_i n_i, image by image) and padded per image (B, n_max); which
slots are real is known from the label lists' lengths, so nothing here makes the host wait for the device.

Example:

```python
>>> import torch
>>> from liaf_hf.distillation._instances import InstanceDiscrepancy, InstanceLayout
>>> layout = InstanceLayout.from_boxes([torch.tensor([[4.0, 4.0, 30.0, 20.0]]), torch.zeros(0, 4)])
>>> levels = [(torch.randn(2, 8, size, size), torch.randn(2, 8, size, size)) for size in (8, 4)]
>>> InstanceDiscrepancy.of(levels, layout=layout, strides=[8, 16], feature_scale="teacher").discrepancy.shape
torch.Size([2, 2, 1])
```
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..models.gfl.loss_gfl import host_tensor
from ._features import level_mean_squares
from ._masks import LevelGrid, multi_level_gaussian_masks

__all__ = ["InstanceDiscrepancy", "InstanceLayout", "LevelGrid", "cell_errors", "take_part_in_level_scales"]


@dataclass
class InstanceLayout:
    """The batch's instances flattened (N = sum_i n_i, image by image), and where each sits in the padded
    (B, n_max) layout."""

    boxes: torch.Tensor  # (N, 4) xyxy input pixels, float32
    class_labels: torch.Tensor | None  # (N,) long, when given
    image_index: torch.Tensor  # (N,) each instance's image
    slot: torch.Tensor  # (N,) its place among its image's instances
    counts: torch.Tensor  # (B,) float, n_i
    images_with_instances: torch.Tensor  # (B',) long, the images with n_i > 0
    max_count: int
    instance_mask: torch.Tensor  # (B, n_max) bool, True for real instances

    @classmethod
    def from_boxes(
        cls,
        boxes: list[torch.Tensor],
        class_labels: list[torch.Tensor] | None = None,
        *,
        device: torch.device | str | None = None,
    ) -> InstanceLayout:
        """From each image's (n_i, 4) xyxy boxes (and (n_i,) classes), on `device` (default: the boxes')."""
        device = torch.device(device) if device is not None else (boxes[0].device if boxes else torch.device("cpu"))
        counts = [int(image_boxes.shape[0]) for image_boxes in boxes]
        # Each instance's image and slot, each image's count and the images with instances, listed in Python
        # and sent in one copy that does not make the host wait.
        image_column = [image for image, count in enumerate(counts) for _ in range(count)]
        slot_column = [slot for count in counts for slot in range(count)]
        with_instances = [image for image, count in enumerate(counts) if count]
        sent = host_tensor(image_column + slot_column + counts + with_instances, dtype=torch.long, device=device)
        image_index, slot, sent_counts, images_with_instances = sent.split(
            [len(image_column), len(slot_column), len(counts), len(with_instances)]
        )
        max_count = max(counts, default=0)
        instance_mask = torch.zeros(len(counts), max_count, dtype=torch.bool, device=device)
        instance_mask[image_index, slot] = True
        return cls(
            boxes=torch.cat([image_boxes.reshape(-1, 4) for image_boxes in boxes]).to(device, torch.float32)
            if boxes
            else torch.zeros(0, 4, device=device),
            class_labels=None
            if class_labels is None
            else torch.cat([labels.reshape(-1) for labels in class_labels]).to(device).long(),
            image_index=image_index,
            slot=slot,
            counts=sent_counts.float(),
            images_with_instances=images_with_instances,
            max_count=max_count,
            instance_mask=instance_mask,
        )

    @property
    def num_instances(self) -> int:
        return int(self.image_index.shape[0])

    def pad(self, values: torch.Tensor, fill: float = 0.0) -> torch.Tensor:
        """(N, ...) -> (B, n_max, ...), `fill` in the padding slots."""
        padded = values.new_full((self.counts.shape[0], self.max_count, *values.shape[1:]), fill)
        padded[self.image_index, self.slot] = values
        return padded

    def real(self, values: torch.Tensor) -> torch.Tensor:
        """(L, B, n_max, ...) -> (L, N, ...): each level's real instances in the flat order. The same as
        `values[:, instance_mask]`, without the wait a boolean mask costs on a GPU."""
        return values[:, self.image_index, self.slot]


def per_instance_output(output, field: str, *, model: str, needed_by: str, layout: InstanceLayout) -> torch.Tensor:
    """(N,) a model output's per-instance `field` (`instance_losses` or `instance_quality` of a
    `GFLObjectDetectionOutput`) without gradient, checked against the batch's instances.

    Args:
        model: "teacher" or "student", for the message.
        needed_by: what needs the field (a method, or a method's option), for the message.

    Raises:
        ValueError: the output has no such field (the model ran without labels or without
            `output_instance_losses=True`), or it counts other instances than the batch.
    """
    values = getattr(output, field, None)
    if values is None:
        raise ValueError(
            f"{needed_by} needs the {model}'s {field} (GFLObjectDetectionOutput.{field}): run the {model} with the "
            "batch's labels and output_instance_losses=True (the trainer does for methods that set "
            f"needs_{model}_instance_losses)."
        )
    if values.shape[0] != layout.num_instances:
        raise ValueError(
            f"{needed_by}: the {model}'s {field} hold {values.shape[0]} instances, the batch {layout.num_instances}."
        )
    return values.detach().float()


def take_part_in_level_scales(levels: list[tuple[torch.Tensor, torch.Tensor]], *, feature_scale: str) -> None:
    """For a step in which this process has no instance: join the other processes' single reduction of the
    levels' teacher scales (`InstanceDiscrepancy.of` makes one for all levels), so none of them waits."""
    if feature_scale == "teacher":
        teacher_maps = [teacher_map for teacher_map, _ in levels]
        level_mean_squares(LevelGrid.side_by_side(teacher_maps), LevelGrid.of(teacher_maps).indicator)


def cell_errors(levels: list[tuple[torch.Tensor, torch.Tensor]], *, feature_scale: str) -> torch.Tensor:
    """(B, P) the squared error of every cell of every level, |T_l(:, p) - S_l(:, p)|^2 / (C E_l), from every
    level's (teacher map, aligned student map), the levels' cells side by side; differentiable with respect to
    the student's maps. E_l as in `InstanceDiscrepancy.of`."""
    teacher_maps, student_maps = [list(maps) for maps in zip(*levels)]
    return _relative_errors(
        LevelGrid.side_by_side(teacher_maps),
        LevelGrid.side_by_side(student_maps),
        grid=LevelGrid.of(teacher_maps),
        feature_scale=feature_scale,
    )


def _relative_errors(
    teacher_cells: torch.Tensor, student_cells: torch.Tensor, *, grid: LevelGrid, feature_scale: str
) -> torch.Tensor:
    """(B, C, P) teacher and student cells side by side -> (B, P) `cell_errors`. Overwrites `student_cells`
    (a copy the caller made) with S - T: one (B, C, P) tensor less while the student's activations are all
    held."""
    squared_error = _ChannelMeanSquare.apply(student_cells.sub_(teacher_cells))  # (B, P)
    if feature_scale == "teacher":
        scale = level_mean_squares(teacher_cells, grid.indicator).clamp(min=1e-12)  # (L,)
        squared_error = squared_error / scale[grid.level_of_cell]
    return squared_error


class _ChannelMeanSquare(torch.autograd.Function):
    """(B, C, P) differences S - T -> (B, P) their mean square over the channels.

    What autograd's own `difference.square().mean(dim=1)` computes, with less memory: its backward pass
    materialises the mean's expanded gradient and the square's, two more (B, C, P) tensors, at the start of
    the student's backward pass, near the step's memory peak. This writes the gradient in one pass."""

    @staticmethod
    def forward(ctx, difference: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(difference)
        return difference.square().mean(dim=1)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        (difference,) = ctx.saved_tensors
        return difference * (grad * (2.0 / difference.shape[1]))[:, None, :]


@dataclass
class InstanceDiscrepancy:
    """Every instance's Gaussian masks and discrepancy d_lj on every level (and, when asked, its mean features).

    The levels' maps side by side, (B, C, P) each, are not kept: held until the distiller's forward pass ends,
    they would sit on top of the student's activations at the step's memory peak.

    Attributes:
        grid: the levels' cells side by side.
        masks: (N, P) each instance's masks, each level's block summing to 1.
        padded_masks: (B, n_max, P) the same per image, zeros in the padding slots.
        discrepancy: (L, B, n_max) d_lj, differentiable with respect to the student's maps; 0 in padding.
        cell_errors: (B, P) |T_l(:, p) - S_l(:, p)|^2 / (C E_l) of every cell, as `cell_errors` gives it.
        feature_means: (L, B, n_max, 2C) with `feature_means=True`, else None: each instance's mask-weighted
            mean of the teacher's map (first C channels) and of the detached student's (last C) on every
            level, without gradient; 0 in padding.
        alignment: (L, B, n_max) with `directions`, else None: sum_p G_lj(p) <(S_l - T_l)(p), D_l(p)> of every
            instance, without gradient; 0 in padding.
    """

    grid: LevelGrid
    masks: torch.Tensor
    padded_masks: torch.Tensor
    discrepancy: torch.Tensor
    cell_errors: torch.Tensor
    feature_means: torch.Tensor | None = None
    alignment: torch.Tensor | None = None

    @classmethod
    def of(
        cls,
        levels: list[tuple[torch.Tensor, torch.Tensor]],
        *,
        layout: InstanceLayout,
        strides: list[int],
        feature_scale: str,
        feature_means: bool = False,
        directions: list[torch.Tensor] | None = None,
    ) -> InstanceDiscrepancy:
        """From every level's (teacher map, aligned student map), (B, C, H_l, W_l) each, finest first, float32
        as `FeatureAligner.levels` gives them.

        `feature_scale`: `"teacher"` divides level l's squared errors by E_l, its teacher's mean squared
        activation over the batch, all processes included (one reduction for all levels); `"none"`: E_l = 1.
        `directions`: (B, C, H_l, W_l) per level, D_l, to take `alignment` against: read from the differences
        S - T this computes anyway.
        """
        teacher_maps, student_maps = [list(maps) for maps in zip(*levels)]
        grid = LevelGrid.of(teacher_maps)
        masks = multi_level_gaussian_masks(layout.boxes, feature_sizes=grid.sizes, strides=strides)  # (N, P)
        padded_masks = layout.pad(masks)  # (B, n_max, P)
        teacher_cells = LevelGrid.side_by_side(teacher_maps)
        student_cells = LevelGrid.side_by_side(student_maps)
        means = None
        if feature_means:
            # Each level's block of the masks (B, L n_max, P) against the cells (B, P, C), both maps in one
            # product each: one launch per map for all levels and instances.
            level_masks = (padded_masks[:, None] * grid.indicator.t()[None, :, None]).flatten(1, 2)
            means = torch.cat(
                [
                    torch.bmm(level_masks, teacher_cells.transpose(1, 2)),
                    torch.bmm(level_masks, student_cells.detach().transpose(1, 2)),
                ],
                dim=2,
            )
            means = means.unflatten(1, (len(grid.sizes), layout.max_count)).transpose(0, 1)
        errors = _relative_errors(teacher_cells, student_cells, grid=grid, feature_scale=feature_scale)
        # Each level's block of the masks against that level's errors: (B, n_max, P) @ (B, P, L).
        discrepancy = torch.bmm(padded_masks, errors[:, :, None] * grid.indicator).permute(2, 0, 1)
        alignment = None
        if directions is not None:
            with torch.no_grad():
                # `student_cells` now holds S - T (`_relative_errors`).
                cell_alignment = (student_cells * LevelGrid.side_by_side(directions)).sum(dim=1)  # (B, P)
                alignment = torch.bmm(padded_masks, cell_alignment[:, :, None] * grid.indicator).permute(2, 0, 1)
        return cls(
            grid=grid,
            masks=masks,
            padded_masks=padded_masks,
            discrepancy=discrepancy,
            cell_errors=errors,
            feature_means=means,
            alignment=alignment,
        )

    def image_means(self, layout: InstanceLayout, weights: torch.Tensor | None = None) -> torch.Tensor:
        """(L, B') each level's mean of d_lj (or of w_lj d_lj, with (L, B, n_max) `weights`) over each image's
        instances, for the images with instances."""
        weighted = self.discrepancy if weights is None else weights * self.discrepancy
        per_image = weighted.sum(dim=2) / layout.counts.clamp(min=1)  # (L, B)
        return per_image[:, layout.images_with_instances]
