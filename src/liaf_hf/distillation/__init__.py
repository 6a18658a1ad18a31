"""Detector distillation methods: the interface every method implements, the registry, and the methods.

The trainer that runs them is `liaf_hf.trainer.LIAFDistillationTrainer`; it knows none of them by name."""

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
from .pkd import PKDDistiller

__all__ = [
    "AIDDistiller",
    "CompositeDistiller",
    "DistillationBatch",
    "DistillationResult",
    "Distiller",
    "FGDDistiller",
    "GlobalContextBlock",
    "InstanceImitation",
    "InstanceSelector",
    "LDDistiller",
    "LIAFDistiller",
    "MimicDistiller",
    "NoDistillation",
    "OracleDistiller",
    "PKDDistiller",
    "available_methods",
    "build_distiller",
    "method_parts",
    "method_settings",
    "parse_method_spec",
    "register_distiller",
]
