from .configuration_gfl import GFLConfig
from .image_processing_gfl import GFLImageProcessor
from .modeling_gfl import GFLForObjectDetection, GFLObjectDetectionOutput, GFLPreTrainedModel, GFLTargets

__all__ = [
    "GFLConfig",
    "GFLForObjectDetection",
    "GFLImageProcessor",
    "GFLObjectDetectionOutput",
    "GFLPreTrainedModel",
    "GFLTargets",
]
