"""PKD: feature imitation with the Pearson correlation coefficient, on every FPN level.

Cao et al., "PKD: General Distillation Framework for Object Detectors via Pearson Correlation
Coefficient", NeurIPS 2022. Each channel of a level's map is standardised over the batch and the spatial
cells together (zero mean, unit variance), for the teacher and the aligned student alike; the loss is half
the mean squared error between the standardised maps:

    z(X)_c = (X_c - mean_{b, p} X_c) / (std_{b, p} X_c + eps)
    loss_pkd = weight * sum_l mean_{b, c, p} (z(S_l) - z(T_l))^2 / 2 = weight * sum_l mean_c (1 - r_lc)

where r_lc is the Pearson correlation between the teacher's and the student's channel c over the batch's
cells. The standardisation removes the feature magnitudes that differ between detectors (and between
levels), so neither a large-activation level nor a few strong channels dominate. The std is the population
one (divisor n), which makes the second form exact (up to eps); mmrazor's `PKDLoss` uses n - 1, a relative difference
of 1 / (n - 1), negligible at FPN sizes.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..models.gfl.modeling_gfl import GFLObjectDetectionOutput
from ._features import FeatureDistiller
from .base import (
    DistillationBatch,
    DistillationResult,
    MethodConfig,
    non_negative,
    register_distiller,
)

__all__ = ["PKDConfig", "PKDDistiller", "standardise_channels"]

#: Added to the std before dividing, as in mmrazor's PKDLoss; a constant channel then standardises to 0.
STD_EPSILON = 1e-6


def standardise_channels(features: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) -> (B, C, H, W), each channel shifted and scaled to zero mean and unit (population)
    variance over the batch and the cells together."""
    mean = features.mean(dim=(0, 2, 3), keepdim=True)
    std = features.std(dim=(0, 2, 3), keepdim=True, correction=0)
    return (features - mean) / (std + STD_EPSILON)


@dataclass(frozen=True)
class PKDConfig(MethodConfig):
    """The options of `pkd` (`PKDDistiller`), the keys of `--method_options` for `--method pkd`."""

    weight: float = 10.0
    """Weight of `loss_pkd`, per level. The default is mmrazor's for one-stage dense detectors (its PKD configs for
    RetinaNet, FCOS -> RetinaNet and RepPoints students: `pkd_fpn_retina_x101_retina_r50_2x_coco.py` and the
    configs built on it); its Faster R-CNN config uses 6. mmrazor distils FPN levels 0-3 there; this distils every
    level, like the other methods."""

    def __post_init__(self) -> None:
        super().__post_init__()
        non_negative(self, "weight")


@register_distiller("pkd")
class PKDDistiller(FeatureDistiller):
    """Mean squared error between per-channel standardised student and teacher FPN maps, summed over levels.

    Args:
        student_config, teacher_config: the two detectors' configs; same number of FPN levels and same label
            set. A 1x1 align conv per level maps the student's FPN width to the teacher's when they differ
            (PKD itself distils equal widths).
        config: the options (`PKDConfig`); the defaults when None.
    """

    config_class = PKDConfig
    description = "mean squared error between per-channel standardised FPN features"
    reference = "PKD, Cao et al., NeurIPS 2022"
    method_name = "PKD"

    def forward(
        self, *, student: GFLObjectDetectionOutput, teacher: GFLObjectDetectionOutput, batch: DistillationBatch
    ) -> DistillationResult:
        result = DistillationResult()
        with torch.autocast(device_type=student.fpn_features[0].device.type, enabled=False):
            level_losses = [
                (standardise_channels(student_map) - standardise_channels(teacher_map)).square().mean() / 2
                for teacher_map, student_map in self.aligner.levels(student, teacher)
            ]
        result.losses["loss_pkd"] = self.config.weight * torch.stack(level_losses).sum()
        for level, loss in enumerate(level_losses):
            # 1 - loss is the mean Pearson correlation of the level's channels.
            result.stats[f"pkd/correlation_l{level}"] = 1 - loss.detach()
        return result
