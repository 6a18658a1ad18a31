"""Detection sets in the Hugging Face formats, normalised to the library's schema.

Accepted as they are:

* a dataset on the Hub with the detection schema (``cppe-5``, ``detection-datasets/coco``: an ``image``
  column and ``objects`` with ``bbox`` and ``category``), by its id (this needs the network);
* the same saved with ``DatasetDict.save_to_disk`` (a folder with ``dataset_dict.json``), offline;
* an ``imagefolder``: a folder of images (optionally in ``train/``, ``validation/``, ... subfolders) with a
  ``metadata.jsonl`` whose lines hold ``file_name`` and ``objects`` (``bbox`` and ``category``, the
  category as a name or a number), offline.

:func:`load_hub_detection` returns one split with the schema of
:func:`liaf_hf.data.coco.load_coco_detection`: ``image``, ``image_id``, ``width``, ``height`` and
``objects`` with ``id``, ``bbox`` (xywh, absolute pixels), ``category`` (ClassLabel), ``area`` and
``iscrowd``. Missing fields get defaults: ``image_id`` the row index, ``width``/``height`` from the image
header, object ``id`` numbered on (``bbox_id`` where the set has it), ``area`` the box area, ``iscrowd``
False. Category names come from the ``category`` ClassLabel, or, for names or numbers in an imagefolder,
from all of its splits together (sorted names; numbers 0..max), so train and validation agree. KITTI rows
saved to disk keep their ``type``, ``truncated`` and ``occluded`` fields.

Example::

    >>> train = load_hub_detection("data/my_folder", "train")  # imagefolder with metadata.jsonl  # doctest: +SKIP
    >>> val = load_hub_detection("cppe-5", "test")  # from the Hub  # doctest: +SKIP
"""

from __future__ import annotations

import io
import logging
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import datasets
from PIL import Image, UnidentifiedImageError

from liaf_hf.data.coco import coco_detection_features, objects_as_rows
from liaf_hf.data.kitti import kitti_detection_features
from liaf_hf.errors import DataError

__all__ = ["BBOX_FORMATS", "is_saved_or_imagefolder", "load_hub_detection", "normalise_detection_dataset"]

logger = logging.getLogger("liaf_hf.data")

BBOX_FORMATS: tuple[str, ...] = ("xywh", "xyxy")
"""``xywh``: COCO's (x, y, width, height), as ``cppe-5``; ``xyxy``: corners (x1, y1, x2, y2). Absolute pixels."""
_KITTI_FIELDS = ("type", "truncated", "occluded")


def is_saved_or_imagefolder(path: str | Path) -> bool:
    """Whether ``path`` is a folder :func:`load_hub_detection` reads offline (a saved DatasetDict or an
    imagefolder with ``metadata.jsonl``)."""
    path = Path(path)
    return path.is_dir() and ((path / "dataset_dict.json").is_file() or _has_metadata(path))


def load_hub_detection(
    name_or_path: str | Path,
    split: str = "train",
    *,
    bbox_format: str = "xywh",
    class_names: Sequence[str] | None = None,
) -> datasets.Dataset:
    """One split of a Hub-format detection set, in the library's schema (module docstring).

    Args:
        name_or_path: A folder saved by ``DatasetDict.save_to_disk``, an imagefolder with ``metadata.jsonl``,
            or a Hub dataset id.
        split: The split to return.
        bbox_format: How the set writes its boxes: ``"xywh"`` (COCO, the default) or ``"xyxy"``.
        class_names: Names of integer categories that carry none (an imagefolder with numeric categories).

    Raises:
        DataError: The folder is neither format, the split does not exist, a single saved ``Dataset`` is
            given where splits are needed, or a row does not fit the schema (the message names the field,
            the row and the object).
    """
    splits = _load_splits(name_or_path)
    if split not in splits:
        raise DataError(f"{name_or_path}: no split {split!r}; the splits are {sorted(splits)}")
    names = list(class_names) if class_names is not None else _category_names(splits, source=str(name_or_path))
    return normalise_detection_dataset(
        splits[split], source=f"{name_or_path} [{split}]", bbox_format=bbox_format, class_names=names
    )


def normalise_detection_dataset(
    dataset: datasets.Dataset,
    *,
    source: str = "dataset",
    bbox_format: str = "xywh",
    class_names: Sequence[str] | None = None,
) -> datasets.Dataset:
    """``dataset`` (Hub detection schema, possibly with fields missing) in the library's schema.

    Args:
        dataset: Has an ``image`` column and ``objects`` with ``bbox`` and ``category`` per object.
        source: How error messages name the dataset.
        bbox_format: ``"xywh"`` or ``"xyxy"``, absolute pixels.
        class_names: Label names; required when ``category`` is not a ClassLabel.

    Raises:
        DataError: A required column or field is missing or malformed; the message names it, the row and
            the object.
    """
    if bbox_format not in BBOX_FORMATS:
        raise ValueError(f"bbox_format must be one of {BBOX_FORMATS}, got {bbox_format!r}")
    for column in ("image", "objects"):
        if column not in dataset.column_names:
            raise DataError(f"{source}: no '{column}' column (columns: {dataset.column_names})")
    object_fields = _object_fields(dataset.features["objects"], source)
    for field in ("bbox", "category"):
        if field not in object_fields:
            raise DataError(f"{source}: 'objects' has no '{field}' field (fields: {sorted(object_fields)})")
    names = list(class_names) if class_names is not None else _class_label_names(object_fields["category"])
    if names is None:
        raise DataError(f"{source}: 'objects.category' is not a ClassLabel; pass class_names")
    keep_kitti = all(field in object_fields for field in _KITTI_FIELDS)
    features = kitti_detection_features(names) if keep_kitti else coco_detection_features(names)
    # Images pass through undecoded; only their headers are read, and only where width or height is missing.
    dataset = dataset.cast_column("image", datasets.Image(decode=False))
    label_of = {name: label for label, name in enumerate(names)}
    counter = {"next_object_id": 1}

    def normalise(batch: dict[str, list[Any]], indices: list[int]) -> dict[str, list[Any]]:
        columns: dict[str, list[Any]] = {
            "image": batch["image"],
            "image_id": [],
            "width": [],
            "height": [],
            "objects": [],
        }
        for position, index in enumerate(indices):
            image_id = int(batch["image_id"][position]) if "image_id" in batch else index
            where = f"{source}: row {index} (image_id {image_id})"
            if "width" in batch and "height" in batch:
                width, height = int(batch["width"][position]), int(batch["height"][position])
            else:
                width, height = _image_size(batch["image"][position], where)
            columns["image_id"].append(image_id)
            columns["width"].append(width)
            columns["height"].append(height)
            columns["objects"].append(
                _normalise_objects(
                    batch["objects"][position],
                    where=where,
                    bbox_format=bbox_format,
                    label_of=label_of,
                    num_classes=len(names),
                    keep_kitti=keep_kitti,
                    counter=counter,
                )
            )
        return columns

    normalised = dataset.map(
        normalise,
        with_indices=True,
        batched=True,
        features=features,
        remove_columns=dataset.column_names,
        # One process, in order: missing object ids are numbered on across batches.
        load_from_cache_file=False,
        desc="normalising detection rows",
    )
    duplicated = len(normalised) - len(set(normalised["image_id"]))
    if duplicated:
        raise DataError(f"{source}: {duplicated} image_id values appear in more than one row")
    return normalised


def _load_splits(name_or_path: str | Path) -> dict[str, datasets.Dataset]:
    path = Path(name_or_path)
    if path.is_dir():
        if (path / "dataset_dict.json").is_file():
            return dict(datasets.load_from_disk(str(path)))
        if (path / "state.json").is_file():
            raise DataError(
                f"{path}: holds one saved Dataset, not splits; save a DatasetDict (e.g. "
                "DatasetDict({'train': ..., 'validation': ...}).save_to_disk(path))"
            )
        if _has_metadata(path):
            return dict(datasets.load_dataset("imagefolder", data_dir=str(path)))
        raise DataError(
            f"{path}: neither a saved DatasetDict (dataset_dict.json) nor an imagefolder with metadata.jsonl"
        )
    if path.exists():
        raise DataError(f"{path}: not a folder")
    try:
        return dict(datasets.load_dataset(str(name_or_path)))
    except (FileNotFoundError, ConnectionError, ValueError) as error:
        raise DataError(f"{name_or_path}: not a local folder, and loading it from the Hub failed: {error}") from error


def _has_metadata(path: Path) -> bool:
    return (path / "metadata.jsonl").is_file() or any(path.glob("*/metadata.jsonl"))


def _object_fields(feature: Any, source: str) -> dict[str, Any]:
    """The per-object features, whichever way ``objects`` is nested (dict of lists or list of dicts)."""
    if isinstance(feature, dict):
        return {key: getattr(value, "feature", value) for key, value in feature.items()}
    inner = getattr(feature, "feature", None)
    if isinstance(inner, dict):
        return dict(inner)
    raise DataError(f"{source}: 'objects' must hold per-object fields (bbox, category), got {feature!r}")


def _class_label_names(feature: Any) -> list[str] | None:
    names = getattr(feature, "names", None)
    return list(names) if names is not None else None


def _category_names(splits: dict[str, datasets.Dataset], *, source: str) -> list[str]:
    """The ClassLabel's names, or names gathered over every split for plain names or numbers."""
    first = next(iter(splits.values()))
    if "objects" not in first.column_names:
        raise DataError(f"{source}: no 'objects' column (columns: {first.column_names})")
    fields = _object_fields(first.features["objects"], source)
    if "category" not in fields:
        raise DataError(f"{source}: 'objects' has no 'category' field (fields: {sorted(fields)})")
    names = _class_label_names(fields["category"])
    if names is not None:
        return names
    values = {
        category
        for dataset in splits.values()
        for objects in dataset.with_format(None)["objects"]
        for category in (obj.get("category") for obj in objects_as_rows(objects))
    }
    if all(isinstance(value, str) for value in values):
        return sorted(values)
    if all(isinstance(value, int) and not isinstance(value, bool) and value >= 0 for value in values):
        return [str(label) for label in range(max(values, default=-1) + 1)]
    raise DataError(
        f"{source}: 'objects.category' mixes names and numbers or holds other values: {sorted(map(repr, values))[:5]}"
    )


def _image_size(image: dict[str, Any], where: str) -> tuple[int, int]:
    source = io.BytesIO(image["bytes"]) if image.get("bytes") else image.get("path")
    try:
        with Image.open(source) as opened:
            return opened.size
    except (UnidentifiedImageError, OSError, TypeError) as error:
        raise DataError(f"{where}: cannot read the image to find its size: {error}") from error


def _normalise_objects(
    objects: Any,
    *,
    where: str,
    bbox_format: str,
    label_of: dict[str, int],
    num_classes: int,
    keep_kitti: bool,
    counter: dict[str, int],
) -> dict[str, list[Any]]:
    if isinstance(objects, dict):
        lengths = {key: len(values) for key, values in objects.items() if isinstance(values, list)}
        if len(set(lengths.values())) > 1:
            raise DataError(f"{where}: the 'objects' fields have different lengths {lengths}")
    fields = ["id", "bbox", "category", "area", "iscrowd", *(_KITTI_FIELDS if keep_kitti else ())]
    column: dict[str, list[Any]] = {field: [] for field in fields}
    for index, obj in enumerate(objects_as_rows(objects or {})):
        at = f"{where} object {index}"
        box = _xywh(obj.get("bbox"), bbox_format, at)
        column["id"].append(_object_id(obj, counter))
        column["bbox"].append(box)
        column["category"].append(_label(obj.get("category"), label_of, num_classes, at))
        area = obj.get("area")
        column["area"].append(float(area) if area is not None else box[2] * box[3])
        column["iscrowd"].append(bool(obj.get("iscrowd") or False))
        if keep_kitti:
            for field in _KITTI_FIELDS:
                column[field].append(obj[field])
    return column


def _object_id(obj: dict[str, Any], counter: dict[str, int]) -> int:
    for key in ("id", "bbox_id"):
        if obj.get(key) is not None:
            return int(obj[key])
    counter["next_object_id"] += 1
    return counter["next_object_id"] - 1


def _xywh(bbox: Any, bbox_format: str, at: str) -> list[float]:
    valid = (
        isinstance(bbox, (list, tuple))
        and len(bbox) == 4
        and all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in bbox)
    )
    if not valid:
        raise DataError(f"{at}: 'bbox' = {bbox!r}, expected 4 finite numbers ({bbox_format}, absolute pixels)")
    x, y, third, fourth = (float(v) for v in bbox)
    width, height = (third - x, fourth - y) if bbox_format == "xyxy" else (third, fourth)
    if width < 0 or height < 0:
        raise DataError(f"{at}: 'bbox' = {list(bbox)!r} has a negative width or height (as {bbox_format})")
    return [x, y, width, height]


def _label(category: Any, label_of: dict[str, int], num_classes: int, at: str) -> int:
    if isinstance(category, str):
        if category not in label_of:
            raise DataError(f"{at}: 'category' = {category!r} is not one of {sorted(label_of)}")
        return label_of[category]
    if isinstance(category, int) and not isinstance(category, bool) and -1 <= category < num_classes:
        return category
    raise DataError(f"{at}: 'category' = {category!r}, expected a class name or a label in 0..{num_classes - 1}")
