"""Detector distillation: the method interface and registry, the methods, and the trainer."""

from .aid import AIDDistiller
from .base import (
    CompositeDistiller,
    DistillationBatch,
    DistillationResult,
    Distiller,
    NoDistillation,
    available_methods,
    build_distiller,
    method_parts,
    method_settings,
    parse_method_spec,
    register_distiller,
)
from .fgd import FGDDistiller, GlobalContextBlock
from .ld import LDDistiller
from .liaf import InstanceSelector, LIAFDistiller
from .mimic import MimicDistiller
from .pictures import SelectorWeightsCallback, add_selector_pictures
from .pkd import PKDDistiller
from .trainer import DistillationModel, DistillationOutput, LIAFDistillationTrainer, inherit_from_teacher, load_teacher

__all__ = [
    "AIDDistiller",
    "CompositeDistiller",
    "DistillationBatch",
    "DistillationModel",
    "DistillationOutput",
    "DistillationResult",
    "Distiller",
    "FGDDistiller",
    "GlobalContextBlock",
    "InstanceSelector",
    "LDDistiller",
    "LIAFDistiller",
    "LIAFDistillationTrainer",
    "MimicDistiller",
    "NoDistillation",
    "PKDDistiller",
    "SelectorWeightsCallback",
    "add_selector_pictures",
    "available_methods",
    "build_distiller",
    "inherit_from_teacher",
    "load_teacher",
    "method_parts",
    "method_settings",
    "parse_method_spec",
    "register_distiller",
]
