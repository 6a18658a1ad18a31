"""Pictures: detections drawn on images, and the instance selectors' weights drawn over training."""

from .drawing import draw_detections, draw_instance_weights, image_grid, weight_legend
from .selector_weights import (
    SelectorWeightsCallback,
    TrainingWeightsCallback,
    add_selector_pictures,
    add_training_weights_record,
)

__all__ = [
    "SelectorWeightsCallback",
    "TrainingWeightsCallback",
    "add_selector_pictures",
    "add_training_weights_record",
    "draw_detections",
    "draw_instance_weights",
    "image_grid",
    "weight_legend",
]
