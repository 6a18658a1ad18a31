"""Detector distillation methods: the interface every method implements, the registry, and the methods.

The trainer that runs them is `liaf_hf.trainer.LIAFDistillationTrainer`; it knows none of them by name."""

from .aid import AIDConfig, AIDDistiller, InstanceImitation, InstanceImitationConfig
from .base import (
    CompositeDistiller,
    DistillationBatch,
    DistillationResult,
    Distiller,
    MethodConfig,
    NoDistillation,
    available_methods,
    build_distiller,
    method_class,
    method_config,
    method_parts,
    method_settings,
    parse_method_spec,
    register_distiller,
)
from .fgd import FGDConfig, FGDDistiller, GlobalContextBlock
from .ld import LDConfig, LDDistiller
from .liaf import InstanceSelector, LIAFConfig, LIAFDistiller
from .mimic import MimicConfig, MimicDistiller
from .oracle import OracleConfig, OracleDistiller
from .pkd import PKDConfig, PKDDistiller

__all__ = [
    "AIDConfig",
    "AIDDistiller",
    "CompositeDistiller",
    "DistillationBatch",
    "DistillationResult",
    "Distiller",
    "FGDConfig",
    "FGDDistiller",
    "GlobalContextBlock",
    "InstanceImitation",
    "InstanceImitationConfig",
    "InstanceSelector",
    "LDConfig",
    "LDDistiller",
    "LIAFConfig",
    "LIAFDistiller",
    "MethodConfig",
    "MimicConfig",
    "MimicDistiller",
    "NoDistillation",
    "OracleConfig",
    "OracleDistiller",
    "PKDConfig",
    "PKDDistiller",
    "available_methods",
    "build_distiller",
    "method_class",
    "method_config",
    "method_parts",
    "method_settings",
    "parse_method_spec",
    "register_distiller",
]
