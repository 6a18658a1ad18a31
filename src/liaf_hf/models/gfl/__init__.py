from .configuration_gfl import GFLConfig
from .image_processing_gfl import GFLImageProcessor
from .modeling_gfl import (
    GFLForObjectDetection,
    GFLModel,
    GFLModelOutput,
    GFLObjectDetectionOutput,
    GFLPreTrainedModel,
    GFLTargets,
)

__all__ = [
    "GFLConfig",
    "GFLForObjectDetection",
    "GFLImageProcessor",
    "GFLModel",
    "GFLModelOutput",
    "GFLObjectDetectionOutput",
    "GFLPreTrainedModel",
    "GFLTargets",
]
