"""Pictures: detections drawn on images, and the instance selectors' weights drawn over training."""

from .drawing import draw_detections, draw_instance_weights, image_grid, weight_legend
from .selector_weights import SelectorWeightsCallback, add_selector_pictures

__all__ = [
    "SelectorWeightsCallback",
    "add_selector_pictures",
    "draw_detections",
    "draw_instance_weights",
    "image_grid",
    "weight_legend",
]
