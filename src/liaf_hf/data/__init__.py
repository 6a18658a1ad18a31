"""Detection data: a COCO-layout loader into ``datasets.Dataset`` and a generated set of shapes."""

from __future__ import annotations

import importlib
from typing import Any

from liaf_hf.data.coco import (
    category_names,
    coco_category_ids,
    coco_detection_features,
    label_maps,
    load_coco_detection,
)

__all__ = [
    "DIFFICULTIES",
    "SHAPES",
    "SceneObject",
    "SyntheticSpec",
    "category_names",
    "coco_category_ids",
    "coco_detection_features",
    "generate_coco_dataset",
    "generate_scene",
    "label_maps",
    "load_coco_detection",
]

_SYNTHETIC_NAMES = {
    "DIFFICULTIES",
    "SHAPES",
    "SceneObject",
    "SyntheticSpec",
    "generate_coco_dataset",
    "generate_scene",
}


def __getattr__(name: str) -> Any:
    # Imported on first use: if this package imported the synthetic module eagerly,
    # `python -m liaf_hf.data.synthetic` would find it already loaded and runpy would warn.
    if name in _SYNTHETIC_NAMES:
        return getattr(importlib.import_module("liaf_hf.data.synthetic"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
