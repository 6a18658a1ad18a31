"""liaf-hf: detector distillation (LIAF-KD) for GFL detectors in the Hugging Face ecosystem.

Importing the package registers the GFL detector with transformers' Auto classes, so
`AutoModelForObjectDetection.from_pretrained(<saved dir>)` and `pipeline("object-detection", model=<dir>)`
work; saved directories also carry the model code for `trust_remote_code=True` users.
"""

import importlib
from typing import Any

from transformers import AutoConfig, AutoImageProcessor, AutoModel, AutoModelForObjectDetection

from .errors import DataError, LiafError
from .models.gfl import (
    GFLConfig,
    GFLForObjectDetection,
    GFLImageProcessor,
    GFLModel,
    GFLObjectDetectionOutput,
    GFLPreTrainedModel,
    GFLTargets,
)

__version__ = "0.1.0"

AutoConfig.register(GFLConfig.model_type, GFLConfig, exist_ok=True)
AutoModel.register(GFLConfig, GFLModel, exist_ok=True)
AutoModelForObjectDetection.register(GFLConfig, GFLForObjectDetection, exist_ok=True)
AutoImageProcessor.register(GFLConfig, image_processor_classes={"torchvision": GFLImageProcessor}, exist_ok=True)
# Saved directories name these classes in their auto_map, so a process without liaf_hf can load them
# with trust_remote_code=True.
GFLConfig.register_for_auto_class()
GFLModel.register_for_auto_class("AutoModel")
GFLForObjectDetection.register_for_auto_class("AutoModelForObjectDetection")
GFLImageProcessor.register_for_auto_class("AutoImageProcessor")

# The library's main names, importable from the top level as transformers' and TRL's are, each loaded from
# its module on first use: `import liaf_hf` stays as light as the detector alone (the trainers, data
# loaders and metrics pull in datasets, pycocotools and accelerate).
_LAZY = {
    # training and distillation
    "DetectionTrainer": "liaf_hf.trainer",
    "FaultArguments": "liaf_hf.cli",
    "LIAFDistillationTrainer": "liaf_hf.trainer",
    "DistillationArguments": "liaf_hf.cli",
    "Distiller": "liaf_hf.distillation",
    "DistillationBatch": "liaf_hf.distillation",
    "DistillationResult": "liaf_hf.distillation",
    "available_methods": "liaf_hf.distillation",
    "build_distiller": "liaf_hf.distillation",
    "register_distiller": "liaf_hf.distillation",
    "load_teacher": "liaf_hf.trainer",
    # data
    "DetectionCollator": "liaf_hf.data.collate",
    "DetectionTransform": "liaf_hf.data.collate",
    "load_coco_detection": "liaf_hf.data",
    "load_kitti": "liaf_hf.data",
    "load_hub_detection": "liaf_hf.data",
    "generate_coco_dataset": "liaf_hf.data",
    "generate_kitti_dataset": "liaf_hf.data",
    # metrics
    "CocoDetectionEvaluator": "liaf_hf.metrics",
    "KittiDetectionEvaluator": "liaf_hf.metrics",
    "make_coco_compute_metrics": "liaf_hf.metrics",
    "make_kitti_compute_metrics": "liaf_hf.metrics",
    # using and sharing a trained detector
    "load_detector": "liaf_hf.inference",
    "detect": "liaf_hf.inference",
    "export_detector": "liaf_hf.export",
    "push_student": "liaf_hf.hub",
    "write_model_card": "liaf_hf.hub",
}

__all__ = [
    "DataError",
    "GFLConfig",
    "GFLForObjectDetection",
    "GFLImageProcessor",
    "GFLModel",
    "GFLObjectDetectionOutput",
    "GFLPreTrainedModel",
    "GFLTargets",
    "LiafError",
    "__version__",
    *sorted(_LAZY),
]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value  # later lookups skip this function
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
