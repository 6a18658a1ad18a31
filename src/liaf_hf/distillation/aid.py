"""AID-style distillation: instance feature imitation weighted by the teacher's own loss (hand-set, teacher
driven).

After Lan and Tian, "Adaptive Instance Distillation for Object Detection in Autonomous Driving", arXiv
2201.11097, 2022: the teacher's prediction loss on a training instance sets how much the student imitates
the teacher there, through a fixed decreasing function, so the teacher teaches where it is itself right.
This is the kind of filter LIAF-KD claims to beat, and the feature term is LIAF's with every instance
weighted 1, so the two differ only in the weighting. For FPN level l, teacher map T_l, aligned student map
S_l and the Gaussian mask G_lj of instance j (`masks.gaussian_instance_masks`, sums to 1; all levels at once
in `instances.InstanceDiscrepancy`, as LIAF-KD computes them):

    d_lj = sum_p G_lj(p) |T_l(:, p) - S_l(:, p)|^2 / (C E_l)           (masked instance MSE)
    w = exp(-decay * L_T)                                               (L_T: the teacher's GFL loss)
    loss_aid = weight * w * mean_l mean_{images with instances} mean_j d_lj

with E_l the teacher's mean squared activation on the level (`feature_scale="teacher"`) or 1 (`"none"`). L_T
is the teacher's own GFL loss (QFL + DFL + GIoU, with its config's weights) on the batch's labels, computed
without gradient; AID weighs each image by the teacher's loss on it, here the batch shares one weight (the
two agree at one image per batch).
"""

from __future__ import annotations

import torch

from ..models.gfl.configuration_gfl import GFLConfig
from ..models.gfl.modeling_gfl import GFLObjectDetectionOutput
from .base import DistillationBatch, DistillationResult, Distiller, check_pair, register_distiller, zero_with_graph
from .features import FeatureAligner, check_feature_scale
from .instances import InstanceDiscrepancy, InstanceLayout, take_part_in_level_scales

__all__ = ["AIDDistiller"]


@register_distiller("aid")
class AIDDistiller(Distiller):
    """Masked instance feature MSE scaled by exp(-decay * the teacher's loss on the batch).

    Args:
        student_config, teacher_config: the two detectors' configs; same number of FPN levels and same label
            set. A 1x1 align conv per level maps the student's FPN width to the teacher's when they differ.
        weight: weight of `loss_aid`. The default, 10.0, is LIAF's `alpha` for the same feature term, so the
            two compare at equal strength (no published value exists for this pairing).
        decay: the 0.1 in exp(-0.1 L_T) (docs/method.md). 0 weighs every batch 1: the same instance loss
            with uniform weights at the full `weight`, the control that isolates what LIAF-KD's selectors
            add. A trained teacher's loss barely moves from batch to batch, so the factor acts as a fixed
            cut of the weight: on benchmarks/distill_gain.py's generated sets it stayed within 0.937-0.966
            over training (BENCHMARKS.md, "Uniform instance weights at the same strength").
        feature_scale: `"teacher"`: divide each level's squared errors by the teacher's mean squared
            activation on it; `"none"`: plain squared error per channel.
    """

    needs_teacher_loss = True
    compiled_part = "_level_errors"

    def __init__(
        self,
        *,
        student_config: GFLConfig,
        teacher_config: GFLConfig,
        weight: float = 10.0,
        decay: float = 0.1,
        feature_scale: str = "teacher",
    ) -> None:
        super().__init__()
        check_pair("AID", student_config, teacher_config)
        check_feature_scale(feature_scale)
        if weight < 0 or decay < 0:
            raise ValueError(f"weight and decay must be non-negative, got {weight} and {decay}.")
        self.weight = weight
        self.decay = decay
        self.feature_scale = feature_scale
        self.aligner = FeatureAligner.for_configs(student_config, teacher_config)

    def forward(
        self, *, student: GFLObjectDetectionOutput, teacher: GFLObjectDetectionOutput, batch: DistillationBatch
    ) -> DistillationResult:
        if teacher.loss is None:
            raise ValueError(
                "AID needs the teacher's loss on the batch (GFLObjectDetectionOutput.loss): run the teacher with "
                "the batch's labels (the trainer does for methods with needs_teacher_loss)."
            )
        if len(batch.strides) != self.aligner.num_levels:
            raise ValueError(f"Expected {self.aligner.num_levels} FPN levels; got {len(batch.strides)} strides.")
        if len(batch.boxes) != student.fpn_features[0].shape[0]:
            raise ValueError(
                f"The batch describes {len(batch.boxes)} images but the features hold "
                f"{student.fpn_features[0].shape[0]}."
            )
        teacher_loss = teacher.loss.detach().float()
        teaching_weight = torch.exp(-self.decay * teacher_loss)
        result = DistillationResult(stats={"aid/teacher_loss": teacher_loss, "aid/teaching_weight": teaching_weight})
        with torch.autocast(device_type=student.fpn_features[0].device.type, enabled=False):
            layout = InstanceLayout.from_boxes(batch.boxes, device=teacher.fpn_features[0].device)
            if layout.max_count == 0:
                levels = self.aligner.levels(student, teacher)
                # No instance to imitate; a zero that still reaches the align convs (DDP needs their gradients).
                result.losses["loss_aid"] = zero_with_graph(*(student_map for _, student_map in levels))
                take_part_in_level_scales(levels, feature_scale=self.feature_scale)
                return result
            level_errors = self._level_errors(
                student=student, teacher=teacher, strides=list(batch.strides), layout=layout
            )
        result.losses["loss_aid"] = self.weight * teaching_weight * level_errors.mean()
        for level, error in enumerate(level_errors.detach().unbind()):
            result.stats[f"aid/discrepancy_l{level}"] = error
        return result

    def _level_errors(
        self,
        *,
        student: GFLObjectDetectionOutput,
        teacher: GFLObjectDetectionOutput,
        strides: list[int],
        layout: InstanceLayout,
    ) -> torch.Tensor:
        """(L,) each level's instance error averaged over instances and images: the step's tensor work after
        the host builds the layout, what `compile_losses` compiles."""
        levels = self.aligner.levels(student, teacher)
        instances = InstanceDiscrepancy.of(levels, layout=layout, strides=strides, feature_scale=self.feature_scale)
        return instances.image_means(layout).mean(dim=1)
