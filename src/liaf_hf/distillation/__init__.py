"""Detector distillation: the method interface and registry, the methods, and the trainer."""

from .base import (
    DistillationBatch,
    DistillationResult,
    Distiller,
    NoDistillation,
    available_methods,
    build_distiller,
    register_distiller,
)
from .liaf import InstanceSelector, LIAFDistiller
from .trainer import DistillationModel, DistillationOutput, LIAFDistillationTrainer, inherit_from_teacher, load_teacher

__all__ = [
    "DistillationBatch",
    "DistillationModel",
    "DistillationOutput",
    "DistillationResult",
    "Distiller",
    "InstanceSelector",
    "LIAFDistiller",
    "LIAFDistillationTrainer",
    "NoDistillation",
    "available_methods",
    "build_distiller",
    "inherit_from_teacher",
    "load_teacher",
    "register_distiller",
]
