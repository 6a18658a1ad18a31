"""Detection data: COCO-layout, KITTI-layout and Hub-format loaders into ``datasets.Dataset`` (one schema),
and a generated set of shapes."""

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
from liaf_hf.data.hub_formats import load_hub_detection, normalise_detection_dataset
from liaf_hf.data.kitti import KITTI_CLASSES, is_kitti_root, kitti_detection_features, load_kitti

__all__ = [
    "DIFFICULTIES",
    "KITTI_CLASSES",
    "SHAPES",
    "SceneObject",
    "SyntheticSpec",
    "category_names",
    "coco_category_ids",
    "coco_detection_features",
    "generate_coco_dataset",
    "generate_kitti_dataset",
    "generate_scene",
    "is_kitti_root",
    "kitti_detection_features",
    "label_maps",
    "load_coco_detection",
    "load_hub_detection",
    "load_kitti",
    "normalise_detection_dataset",
    "read_instance_facts",
]

_SYNTHETIC_NAMES = {
    "DIFFICULTIES",
    "SHAPES",
    "SceneObject",
    "SyntheticSpec",
    "generate_coco_dataset",
    "generate_kitti_dataset",
    "generate_scene",
    "read_instance_facts",
}


def __getattr__(name: str) -> Any:
    # Imported on first use: if this package imported the synthetic module eagerly,
    # `python -m liaf_hf.data.synthetic` would find it already loaded and runpy would warn.
    if name in _SYNTHETIC_NAMES:
        return getattr(importlib.import_module("liaf_hf.data.synthetic"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
