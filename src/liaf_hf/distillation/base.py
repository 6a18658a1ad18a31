"""The one interface every distillation method implements, and the registry `--method` reads.

A method is an `nn.Module` (it may own trainable parts: align convs, selectors) that takes the
student's and the teacher's detector outputs and the batch's instances, and returns named losses (added
to the student's loss) and named statistics (logged only). The trainer asks the registry for a method
by name and knows none of them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import nn

from ..models.gfl.configuration_gfl import GFLConfig
from ..models.gfl.modeling_gfl import GFLObjectDetectionOutput


@dataclass
class DistillationBatch:
    """What a distiller knows about the batch besides the two models' outputs.

    Attributes:
        boxes: per image, (n_i, 4) ground-truth boxes, xyxy in pixels of the padded input.
        class_labels: per image, (n_i,) class indices.
        ignore_boxes: per image, (k_i, 4) regions to ignore, same units as `boxes`.
        input_size: (height, width) of the padded input.
        valid_sizes: (B, 2) unpadded (height, width) of each image.
        strides: stride of each FPN level, finest first.
        progress: training progress in [0, 1] (step / total steps).
    """

    boxes: list[torch.Tensor]
    class_labels: list[torch.Tensor]
    ignore_boxes: list[torch.Tensor]
    input_size: tuple[int, int]
    valid_sizes: torch.Tensor
    strides: list[int]
    progress: float = 0.0


@dataclass
class DistillationResult:
    """`losses` are already weighted and are summed into the training loss; `stats` are detached
    scalars for logging."""

    losses: dict[str, torch.Tensor] = field(default_factory=dict)
    stats: dict[str, torch.Tensor] = field(default_factory=dict)


class Distiller(nn.Module):
    """Base class of distillation methods."""

    #: False for methods that never look at the teacher, so the trainer can skip its forward pass.
    needs_teacher: bool = True

    def forward(
        self, *, student: GFLObjectDetectionOutput, teacher: GFLObjectDetectionOutput, batch: DistillationBatch
    ) -> DistillationResult:
        raise NotImplementedError


DistillerFactory = Callable[..., Distiller]
_REGISTRY: dict[str, DistillerFactory] = {}


def register_distiller(name: str) -> Callable[[DistillerFactory], DistillerFactory]:
    """Class decorator: make a method available as `--method <name>`. The factory is called as
    `factory(student_config=..., teacher_config=..., **options)`."""

    def decorate(factory: DistillerFactory) -> DistillerFactory:
        if name in _REGISTRY:
            raise ValueError(f"A distillation method named {name!r} is already registered.")
        _REGISTRY[name] = factory
        return factory

    return decorate


def available_methods() -> list[str]:
    return sorted(_REGISTRY)


def build_distiller(name: str, *, student_config: GFLConfig, teacher_config: GFLConfig, **options) -> Distiller:
    """The distiller registered under `name`, built for this student/teacher pair."""
    if name not in _REGISTRY:
        raise ValueError(f"Unknown distillation method {name!r}; available: {available_methods()}.")
    return _REGISTRY[name](student_config=student_config, teacher_config=teacher_config, **options)


@register_distiller("none")
class NoDistillation(Distiller):
    """The student trains alone; the teacher is not even run."""

    needs_teacher = False

    def __init__(self, *, student_config: GFLConfig, teacher_config: GFLConfig | None = None) -> None:
        super().__init__()

    def forward(self, *, student, teacher, batch) -> DistillationResult:
        return DistillationResult()
