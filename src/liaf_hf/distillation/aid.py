"""AID-style distillation: instance feature imitation weighted by the teacher's own loss (hand-set, teacher
driven), and the instance-imitation base it shares with the oracle weightings.

After Lan and Tian, "Adaptive Instance Distillation for Object Detection in Autonomous Driving", arXiv
2201.11097, 2022: the teacher's prediction loss on a training instance sets how much the student imitates
the teacher there, through a fixed decreasing function, so the teacher teaches where it is itself right.
This is the kind of filter LIAF-KD claims to beat, and the feature term is LIAF's with fixed instance
weights, so the two differ only in the weighting. For FPN level l, teacher map T_l, aligned student map S_l
and the Gaussian mask G_lj of instance j (`masks.gaussian_instance_masks`, sums to 1; all levels at once in
`instances.InstanceDiscrepancy`, as LIAF-KD computes them):

    d_lj = sum_p G_lj(p) |T_l(:, p) - S_l(:, p)|^2 / (C E_l)           (masked instance MSE)
    w_j = exp(-decay * L_T,j)                                           (L_T,j: the teacher's loss on j)
    loss_aid = weight * mean_l mean_{images with instances} mean_j w_j d_lj

with E_l the teacher's mean squared activation on the level (`feature_scale="teacher"`) or 1 (`"none"`).
L_T,j is the teacher's own GFL loss on instance j (`GFLObjectDetectionOutput.instance_losses`: QFL + DFL +
GIoU over the anchors assigned to it), as AID weighs each instance; `weighting="batch"` gives every instance
of the batch one factor from the teacher's loss on the whole batch instead.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch

from ..models.gfl.configuration_gfl import GFLConfig
from ..models.gfl.modeling_gfl import GFLObjectDetectionOutput
from ._features import FeatureDistiller, FeatureScale
from ._instances import InstanceDiscrepancy, InstanceLayout, per_instance_output, take_part_in_level_scales
from .base import (
    DistillationBatch,
    DistillationResult,
    MethodConfig,
    check_batch,
    non_negative,
    register_distiller,
    zero_with_graph,
)

__all__ = ["AIDConfig", "AIDDistiller", "InstanceImitation", "InstanceImitationConfig", "normalise_over_batch"]


def normalise_over_batch(weights: torch.Tensor, layout: InstanceLayout) -> torch.Tensor:
    """(B, n_max) instance weights (0 in padding) scaled so that the mean over the images with instances of
    each image's mean weight is 1: the loss then has the strength of uniform weights, and images, not only
    the instances of one image, compete for it. All-zero weights fall back to uniform ones."""
    image_means = weights.sum(dim=1) / layout.counts.clamp(min=1)  # (B,)
    scale = image_means[layout.images_with_instances].mean()
    uniform = layout.instance_mask.to(weights.dtype)
    return torch.where(scale > 0, weights / scale.clamp(min=1e-12), uniform)


@dataclass(frozen=True)
class InstanceImitationConfig(MethodConfig):
    """The options every instance-imitation method has (`aid`, `oracle`)."""

    weight: float = 10.0
    """Weight of the loss. The default is LIAF's `alpha` for the same feature term, so the two compare at equal
    strength."""
    feature_scale: FeatureScale = "teacher"
    """`"teacher"`: divide each level's squared errors by the teacher's mean squared activation on it; `"none"`:
    plain squared error per channel."""

    def __post_init__(self) -> None:
        super().__post_init__()
        non_negative(self, "weight")


class InstanceImitation(FeatureDistiller):
    """Masked instance feature MSE with fixed (not learned) instance weights: `loss_<name>` is
    weight * mean_l mean_images mean_j w_j d_lj, with w_j from `instance_weights` (uniform here).

    Subclasses override `instance_weights` (and the flags saying what it reads).

    Args:
        student_config, teacher_config: the two detectors' configs; same number of FPN levels and same label
            set. A 1x1 align conv per level maps the student's FPN width to the teacher's when they differ.
        config: the options (`InstanceImitationConfig` or a subclass's); the defaults when None.
    """

    config_class = InstanceImitationConfig
    compiled_part = "_level_errors"
    #: The loss's and the statistics' name: `loss_<name>`, `<name>/...`.
    loss_name = "imitation"
    method_name = "instance imitation"

    def instance_weights(
        self,
        *,
        student: GFLObjectDetectionOutput,
        teacher: GFLObjectDetectionOutput,
        batch: DistillationBatch,
        layout: InstanceLayout,
        result: DistillationResult,
    ) -> torch.Tensor | None:
        """(N,) each instance's weight, without gradient, in the layout's flat order; None for weight 1 each.
        May add statistics to `result`."""
        return None

    def forward(
        self, *, student: GFLObjectDetectionOutput, teacher: GFLObjectDetectionOutput, batch: DistillationBatch
    ) -> DistillationResult:
        check_batch(student, batch, num_levels=self.aligner.num_levels)
        result = DistillationResult()
        loss_key = f"loss_{self.loss_name}"
        with torch.autocast(device_type=student.fpn_features[0].device.type, enabled=False):
            layout = InstanceLayout.from_boxes(batch.boxes, device=teacher.fpn_features[0].device)
            if layout.max_count == 0:
                levels = self.aligner.levels(student, teacher)
                # No instance to imitate; a zero that still reaches the align convs (DDP needs their gradients).
                result.losses[loss_key] = zero_with_graph(*(student_map for _, student_map in levels))
                take_part_in_level_scales(levels, feature_scale=self.config.feature_scale)
                return result
            flat_weights = self.instance_weights(
                student=student, teacher=teacher, batch=batch, layout=layout, result=result
            )
            weights = None if flat_weights is None else layout.pad(flat_weights.detach().float())
            level_errors = self._level_errors(
                student=student, teacher=teacher, strides=list(batch.strides), layout=layout, weights=weights
            )
        result.losses[loss_key] = self.config.weight * level_errors.mean()
        for level, error in enumerate(level_errors.detach().unbind()):
            result.stats[f"{self.loss_name}/discrepancy_l{level}"] = error
        return result

    def _level_errors(
        self,
        *,
        student: GFLObjectDetectionOutput,
        teacher: GFLObjectDetectionOutput,
        strides: list[int],
        layout: InstanceLayout,
        weights: torch.Tensor | None,
    ) -> torch.Tensor:
        """(L,) each level's weighted instance error averaged over instances and images, from (B, n_max)
        `weights` (None: 1 each): the step's tensor work after the host builds the layout, what
        `compile_losses` compiles."""
        levels = self.aligner.levels(student, teacher)
        instances = InstanceDiscrepancy.of(
            levels, layout=layout, strides=strides, feature_scale=self.config.feature_scale
        )
        return instances.image_means(layout, weights).mean(dim=1)


@dataclass(frozen=True)
class AIDConfig(InstanceImitationConfig):
    """The options of `aid` (`AIDDistiller`), the keys of `--method_options` for `--method aid`."""

    decay: float = 0.1
    """The 0.1 in exp(-0.1 L_T) (docs/method.md). 0 weighs every instance 1: the same instance loss with uniform
    weights at the full `weight`, the control that isolates what LIAF-KD's selectors add (the teacher's head is
    then not run)."""
    weighting: Literal["instance", "batch"] = "instance"
    """`"instance"` (as AID is published): each instance's factor from the teacher's own loss on it
    (`GFLObjectDetectionOutput.instance_losses`). `"batch"`: one factor for the whole batch from the teacher's
    loss on it: a trained teacher's loss varies little from batch to batch, so this acts as a near-constant cut of
    the weight (docs/benchmarks.md, "What the selectors add")."""

    def __post_init__(self) -> None:
        super().__post_init__()
        non_negative(self, "decay")


@register_distiller("aid")
class AIDDistiller(InstanceImitation):
    """Masked instance feature MSE, each instance scaled by exp(-decay * the teacher's loss on it).

    Args:
        student_config, teacher_config: as for `InstanceImitation` (`loss_aid`).
        config: the options (`AIDConfig`); the defaults when None.
    """

    config_class = AIDConfig
    description = "instance feature distillation, each instance weighted by exp(-decay x the teacher's loss on it)"
    reference = "AID, Lan and Tian, arXiv 2201.11097, 2022"
    loss_name = "aid"
    method_name = "AID"

    def __init__(
        self, *, student_config: GFLConfig, teacher_config: GFLConfig, config: AIDConfig | None = None
    ) -> None:
        super().__init__(student_config=student_config, teacher_config=teacher_config, config=config)
        decay, weighting = self.config.decay, self.config.weighting
        self.needs_teacher_loss = decay > 0 and weighting == "batch"
        self.needs_teacher_instance_losses = decay > 0 and weighting == "instance"

    def instance_weights(
        self,
        *,
        student: GFLObjectDetectionOutput,
        teacher: GFLObjectDetectionOutput,
        batch: DistillationBatch,
        layout: InstanceLayout,
        result: DistillationResult,
    ) -> torch.Tensor | None:
        if self.config.decay == 0:
            return None
        if self.config.weighting == "batch":
            if teacher.loss is None:
                raise ValueError(
                    'AID with weighting="batch" needs the teacher\'s loss on the batch '
                    "(GFLObjectDetectionOutput.loss): run the teacher with the batch's labels (the trainer does for "
                    "methods with needs_teacher_loss)."
                )
            teacher_loss = teacher.loss.detach().float()
            result.stats["aid/teacher_loss"] = teacher_loss
            teaching_weight = torch.exp(-self.config.decay * teacher_loss)
            result.stats["aid/teaching_weight"] = teaching_weight
            return teaching_weight.expand(layout.num_instances)
        instance_losses = per_instance_output(
            teacher, "instance_losses", model="teacher", needed_by="AID", layout=layout
        )
        weights = torch.exp(-self.config.decay * instance_losses)
        result.stats["aid/teacher_loss"] = instance_losses.mean()
        result.stats["aid/teaching_weight"] = weights.mean()
        result.stats["aid/teaching_weight_min"] = weights.amin()
        return weights
