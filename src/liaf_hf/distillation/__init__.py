"""Detector distillation: the method interface and registry, the methods, and the trainer."""

from .aid import AIDDistiller, InstanceImitation
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
from .oracle import OracleDistiller
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
    "InstanceImitation",
    "InstanceSelector",
    "LDDistiller",
    "LIAFDistiller",
    "LIAFDistillationTrainer",
    "MimicDistiller",
    "NoDistillation",
    "OracleDistiller",
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
