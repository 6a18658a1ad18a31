"""What the feature-imitation methods share: align convs from the student's FPN width to the teacher's, and
the squared error per cell, optionally relative to the teacher's energy on the level.

Example:

```python
>>> import torch
>>> from liaf_hf.distillation._features import FeatureAligner, squared_error_per_cell
>>> aligner = FeatureAligner(student_channels=4, teacher_channels=8, num_levels=1)
>>> teacher, student = torch.randn(2, 8, 6, 6), torch.randn(2, 4, 6, 6)
>>> teacher_map, student_map = aligner.align(student_map=student, teacher_map=teacher, level=0)
>>> squared_error_per_cell(teacher_map, student_map, feature_scale="none").shape
torch.Size([2, 6, 6])
```
"""

from __future__ import annotations

import typing
from typing import ClassVar, Literal

import torch
from torch import nn

from ..models.gfl.configuration_gfl import GFLConfig
from ..models.gfl.loss_gfl import host_scalar
from ..models.gfl.modeling_gfl import GFLObjectDetectionOutput
from .base import Distiller, MethodConfig, check_pair

__all__ = [
    "FEATURE_SCALES",
    "FeatureScale",
    "FeatureAligner",
    "check_feature_scale",
    "flat_class_logits",
    "level_mean_squares",
    "squared_error_per_cell",
    "teacher_mean_square",
]

#: "teacher": squared errors relative to the teacher's mean squared activation on the level; "none": plain.
FeatureScale = Literal["teacher", "none"]
FEATURE_SCALES = typing.get_args(FeatureScale)


def check_feature_scale(feature_scale: str) -> None:
    if feature_scale not in FEATURE_SCALES:
        raise ValueError(f"feature_scale must be one of {FEATURE_SCALES}, got {feature_scale!r}.")


class FeatureAligner(nn.Module):
    """One 1x1 conv per FPN level that maps the student's FPN width to the teacher's (the identity when the
    widths are equal). It trains with the student and is dropped after training, so the student keeps its
    architecture."""

    def __init__(self, *, student_channels: int, teacher_channels: int, num_levels: int) -> None:
        super().__init__()
        self.convs = nn.ModuleList(
            nn.Identity() if student_channels == teacher_channels else nn.Conv2d(student_channels, teacher_channels, 1)
            for _ in range(num_levels)
        )

    @classmethod
    def for_configs(cls, student_config: GFLConfig, teacher_config: GFLConfig) -> FeatureAligner:
        return cls(
            student_channels=student_config.fpn_channels,
            teacher_channels=teacher_config.fpn_channels,
            num_levels=student_config.num_fpn_levels,
        )

    @property
    def num_levels(self) -> int:
        return len(self.convs)

    def align(
        self, *, student_map: torch.Tensor, teacher_map: torch.Tensor, level: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, C_S, H, W) student and (B, C_T, H, W) teacher map of one level -> the detached float32 teacher
        map and the aligned float32 student map, both (B, C_T, H, W)."""
        teacher_map = teacher_map.detach().float()
        student_map = self.convs[level](student_map.float())
        if teacher_map.shape != student_map.shape:
            raise ValueError(
                f"FPN level {level}: the aligned student map has shape {tuple(student_map.shape)} but the "
                f"teacher's has {tuple(teacher_map.shape)}; both detectors must see the same input and strides."
            )
        return teacher_map, student_map

    def align_direction(self, direction: torch.Tensor, *, level: int) -> torch.Tensor:
        """(B, C_S, H, W) a change of the student's map on `level` -> (B, C_T, H, W) the change it makes to the
        aligned map: the align conv's linear part (no bias), as float32."""
        conv = self.convs[level]
        direction = direction.float()
        return direction if isinstance(conv, nn.Identity) else nn.functional.conv2d(direction, conv.weight)

    def levels(
        self, student: GFLObjectDetectionOutput, teacher: GFLObjectDetectionOutput
    ) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Every level's (teacher map, aligned student map), finest first, as `align` gives them."""
        if len(student.fpn_features) != self.num_levels or len(teacher.fpn_features) != self.num_levels:
            raise ValueError(
                f"Expected {self.num_levels} FPN levels; got {len(student.fpn_features)} student maps and "
                f"{len(teacher.fpn_features)} teacher maps."
            )
        return [
            self.align(student_map=student_map, teacher_map=teacher_map, level=level)
            for level, (student_map, teacher_map) in enumerate(zip(student.fpn_features, teacher.fpn_features))
        ]


def flat_class_logits(output: GFLObjectDetectionOutput) -> torch.Tensor:
    """(B, A, C) classification logits, anchors in the order of `GFLObjectDetectionOutput.logits`: the output's
    own `logits` when it has them (the detector's forward has concatenated the levels already; doing it again
    is a copy of the whole tensor per step), else the per-level `class_logits` maps flattened."""
    if output.logits is not None:
        return output.logits
    if output.class_logits is None:
        raise ValueError("The output has neither logits nor class_logits.")
    return torch.cat([level_map.flatten(2).transpose(1, 2) for level_map in output.class_logits], dim=1)


def squared_error_per_cell(teacher_map: torch.Tensor, student_map: torch.Tensor, *, feature_scale: str) -> torch.Tensor:
    """(B, C, H, W) maps -> (B, H, W) squared error per cell, averaged over channels.

    With `feature_scale="teacher"` it is divided by the teacher's mean squared activation on the level (over
    the batch, all cells and channels, no gradient): trained FPNs grow their coarse levels' activations by an
    order of magnitude, so without it the coarsest maps would dominate a sum over levels and the right loss
    weight would depend on the teacher (see `liaf.py`, which measures it).
    """
    squared_error = (teacher_map - student_map).square().mean(dim=1)
    if feature_scale == "teacher":
        squared_error = squared_error / teacher_mean_square(teacher_map).clamp(min=1e-12)
    return squared_error


def teacher_mean_square(teacher_map: torch.Tensor) -> torch.Tensor:
    """The mean squared activation of a (B, C, H, W) teacher map over the whole batch, all processes included
    (sums and counts are reduced, since processes may pad to different sizes), so that several processes
    scale their losses alike and train like one process on the whole batch."""
    count = host_scalar(float(teacher_map.numel()), device=teacher_map.device)
    return _mean_over_processes(teacher_map.detach().float().square().sum(), count)


def _mean_over_processes(sums: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
    """sums / counts, each summed over all processes first (one reduction for both)."""
    total = torch.stack([sums, counts])
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.all_reduce(total)
    return total[0] / total[1]


def level_mean_squares(teacher_flat: torch.Tensor, level_indicator: torch.Tensor) -> torch.Tensor:
    """`teacher_mean_square` of every level at once, from the levels' cells side by side.

    Args:
        teacher_flat: (B, C, P) every level's teacher map flattened and concatenated along the cells.
        level_indicator: (P, L) float, 1 where cell p belongs to level l.

    Returns:
        (L,) each level's mean squared activation over the batch, its cells and channels, all processes
        included (one reduction for all levels).
    """
    batch_size, channels = teacher_flat.shape[:2]
    # A norm rather than square-then-sum: no (B, C, P) temporary while the step's memory is near its peak.
    sums = torch.linalg.vector_norm(teacher_flat.detach().float(), dim=(0, 1)).square() @ level_indicator  # (L,)
    return _mean_over_processes(sums, level_indicator.sum(dim=0) * (batch_size * channels))


class FeatureDistiller(Distiller):
    """Base of the methods that compare the student's FPN maps with the teacher's level by level: it checks that
    the two detectors pair up (`check_pair`) and builds the align convs (`aligner`) of every level.

    Args:
        student_config, teacher_config: the two detectors' configs.
        config: the method's options (its `config_class`); the defaults when None.
    """

    #: The method's name in the errors it raises.
    method_name: ClassVar[str] = "feature distillation"
    needs_teacher_head = False  # it compares FPN maps only

    def __init__(
        self, *, student_config: GFLConfig, teacher_config: GFLConfig, config: MethodConfig | None = None
    ) -> None:
        super().__init__(config)
        check_pair(self.method_name, student_config, teacher_config)
        self.aligner = FeatureAligner.for_configs(student_config, teacher_config)
