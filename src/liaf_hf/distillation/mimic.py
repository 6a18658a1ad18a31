"""Mimic (FitNet-style hint learning) on every FPN level: the plainest feature distillation baseline.

Romero et al., "FitNets: Hints for Thin Deep Nets", ICLR 2015, applied to a detector's FPN outputs as in
Li et al., "Mimicking Very Efficient Network for Object Detection", CVPR 2017. For FPN level l with teacher
map T_l and aligned student map S_l = align_l(student_l) (a 1x1 conv when the FPN widths differ):

    loss_mimic = weight * mean_l [ mean_{b, c, p} (T_l - S_l)^2 / E_l ]

with E_l the teacher's mean squared activation on the level (`feature_scale="teacher"`) or 1 (`"none"`,
the plain FitNet mean squared error). Every cell counts, object or background.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..models.gfl.modeling_gfl import GFLObjectDetectionOutput
from ._features import FeatureDistiller, FeatureScale, squared_error_per_cell
from .base import (
    DistillationBatch,
    DistillationResult,
    MethodConfig,
    non_negative,
    register_distiller,
)

__all__ = ["MimicConfig", "MimicDistiller"]


@dataclass(frozen=True)
class MimicConfig(MethodConfig):
    """The options of `mimic` (`MimicDistiller`), the keys of `--method_options` for `--method mimic`."""

    weight: float = 10.0
    """Weight of `loss_mimic`. No published value exists for GFL. With `feature_scale="teacher"` the relative
    squared error of an unrelated student is about 1, so the term starts near `weight`. The default is LIAF-KD's
    `alpha` and AID's weight, so the three compare at equal strength (docs/benchmarks.md, "Why the default weight
    is 10")."""
    feature_scale: FeatureScale = "teacher"
    """`"teacher"`: divide each level's error by the teacher's mean squared activation on it, so coarse levels
    with large activations do not dominate; `"none"`: the plain FitNet error (set `weight` from the teacher's
    activations then)."""

    def __post_init__(self) -> None:
        super().__post_init__()
        non_negative(self, "weight")


@register_distiller("mimic")
class MimicDistiller(FeatureDistiller):
    """Mean squared error between the aligned student's and the teacher's FPN maps, all levels.

    Args:
        student_config, teacher_config: the two detectors' configs; same number of FPN levels and same label
            set. A 1x1 align conv per level maps the student's FPN width to the teacher's when they differ.
        config: the options (`MimicConfig`); the defaults when None.

    Example:

    ```python
    >>> import torch
    >>> from liaf_hf import GFLConfig
    >>> from liaf_hf.distillation import DistillationBatch, build_distiller
    >>> from liaf_hf.models.gfl.modeling_gfl import GFLObjectDetectionOutput
    >>> config = GFLConfig(backbone="resnet18", fpn_channels=8, num_fpn_levels=3, id2label={0: "a"})
    >>> distiller = build_distiller("mimic", student_config=config, teacher_config=config, feature_scale="none")
    >>> teacher = GFLObjectDetectionOutput(fpn_features=tuple(torch.ones(1, 8, s, s) for s in (8, 4, 2)))
    >>> student = GFLObjectDetectionOutput(fpn_features=tuple(torch.zeros(1, 8, s, s) for s in (8, 4, 2)))
    >>> batch = DistillationBatch(
    ...     boxes=[torch.zeros(0, 4)], class_labels=[torch.zeros(0, dtype=torch.long)],
    ...     ignore_boxes=[torch.zeros(0, 4)], input_size=(64, 64), valid_sizes=torch.tensor([[64.0, 64.0]]),
    ...     strides=[8, 16, 32])
    >>> float(distiller(student=student, teacher=teacher, batch=batch).losses["loss_mimic"])
    1.0
    ```
    """

    config_class = MimicConfig
    description = "mean squared error between the aligned student's and the teacher's FPN features"
    reference = "FitNets, Romero et al., ICLR 2015"
    method_name = "Mimic"

    def forward(
        self, *, student: GFLObjectDetectionOutput, teacher: GFLObjectDetectionOutput, batch: DistillationBatch
    ) -> DistillationResult:
        result = DistillationResult()
        with torch.autocast(device_type=student.fpn_features[0].device.type, enabled=False):
            level_errors = [
                squared_error_per_cell(teacher_map, student_map, feature_scale=self.config.feature_scale).mean()
                for teacher_map, student_map in self.aligner.levels(student, teacher)
            ]
        result.losses["loss_mimic"] = self.config.weight * torch.stack(level_errors).mean()
        for level, error in enumerate(level_errors):
            result.stats[f"mimic/error_l{level}"] = error.detach()
        return result
