"""liaf-hf: detector distillation (LIAF-KD) for GFL detectors in the Hugging Face ecosystem.

Importing the package registers the GFL detector with transformers' Auto classes, so
`AutoModelForObjectDetection.from_pretrained(<saved dir>)` and `pipeline("object-detection", model=<dir>)`
work; saved directories also carry the model code for `trust_remote_code=True` users.
"""

from transformers import AutoConfig, AutoImageProcessor, AutoModelForObjectDetection

from .errors import DataError, LiafError
from .models.gfl import (
    GFLConfig,
    GFLForObjectDetection,
    GFLImageProcessor,
    GFLObjectDetectionOutput,
    GFLPreTrainedModel,
    GFLTargets,
)

__version__ = "0.1.0"

AutoConfig.register(GFLConfig.model_type, GFLConfig, exist_ok=True)
AutoModelForObjectDetection.register(GFLConfig, GFLForObjectDetection, exist_ok=True)
AutoImageProcessor.register(GFLConfig, image_processor_classes={"torchvision": GFLImageProcessor}, exist_ok=True)
# Saved directories name these classes in their auto_map, so a process without liaf_hf can load them
# with trust_remote_code=True.
GFLConfig.register_for_auto_class()
GFLForObjectDetection.register_for_auto_class("AutoModelForObjectDetection")
GFLImageProcessor.register_for_auto_class("AutoImageProcessor")

__all__ = [
    "DataError",
    "GFLConfig",
    "GFLForObjectDetection",
    "GFLImageProcessor",
    "GFLObjectDetectionOutput",
    "GFLPreTrainedModel",
    "GFLTargets",
    "LiafError",
    "__version__",
]
