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

Rows follow the rules of the COCO loader (:mod:`liaf_hf.data.checks`): sizes are those of the upright image
(EXIF orientation applied, as ``datasets`` decodes it) and a ``width``/``height`` that differs from it is
refused; boxes partly outside their image are clipped, boxes of zero width or height dropped (both counted
in one warning), a box entirely outside refused; ``iscrowd`` is 0/1, a bool or ``"0"``/``"1"``/``"true"``/
``"false"``. Every row needs ``objects`` (empty lists for an image without objects), and a set with no rows
or no categories is refused. An imagefolder's ``metadata.jsonl`` is checked line by line before ``datasets``
reads it, so a bad line is reported with its file and line number.

Example::

    >>> train = load_hub_detection("data/my_folder", "train")  # imagefolder with metadata.jsonl  # doctest: +SKIP
    >>> val = load_hub_detection("cppe-5", "test")  # from the Hub  # doctest: +SKIP
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from dataclasses import field as dataclass_field
from pathlib import Path
from typing import Any

import datasets
import pyarrow

from liaf_hf.data.checks import BoxFitter, area_value, integer_value, is_number, is_outside, parse_iscrowd
from liaf_hf.data.coco import coco_detection_features, objects_as_rows
from liaf_hf.data.images import ImageHeader, read_header, source_name
from liaf_hf.data.kitti import kitti_detection_features
from liaf_hf.errors import DataError

__all__ = ["BBOX_FORMATS", "is_saved_or_imagefolder", "load_hub_detection", "normalise_detection_dataset"]

logger = logging.getLogger(__name__)

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
    check_image_sizes: bool = True,
) -> datasets.Dataset:
    """One split of a Hub-format detection set, in the library's schema (module docstring).

    Args:
        name_or_path: A folder saved by ``DatasetDict.save_to_disk``, an imagefolder with ``metadata.jsonl``,
            or a Hub dataset id.
        split: The split to return.
        bbox_format: How the set writes its boxes: ``"xywh"`` (COCO, the default) or ``"xyxy"``.
        class_names: Names of integer categories that carry none (an imagefolder with numeric categories).
        check_image_sizes: Read the header of every image whose row gives ``width`` and ``height`` and
            require them to be its upright size (rows without them always take the size from the header).

    Raises:
        DataError: The folder is neither format, the split does not exist, a single saved ``Dataset`` is
            given where splits are needed, a ``metadata.jsonl`` line is malformed (the message names the
            file and the line), the split has no rows or the set no categories, or a row does not fit the
            schema (the message names the field, the row and the object).
    """
    splits = _load_splits(name_or_path)
    if split not in splits:
        raise DataError(f"{name_or_path}: no split {split!r}; the splits are {sorted(splits)}")
    names = list(class_names) if class_names is not None else _category_names(splits, source=str(name_or_path))
    return normalise_detection_dataset(
        splits[split],
        source=f"{name_or_path} [{split}]",
        bbox_format=bbox_format,
        class_names=names,
        check_image_sizes=check_image_sizes,
    )


def normalise_detection_dataset(
    dataset: datasets.Dataset,
    *,
    source: str = "dataset",
    bbox_format: str = "xywh",
    class_names: Sequence[str] | None = None,
    check_image_sizes: bool = True,
) -> datasets.Dataset:
    """``dataset`` (Hub detection schema, possibly with fields missing) in the library's schema.

    Args:
        dataset: Has an ``image`` column and ``objects`` with ``bbox`` and ``category`` per object.
        source: How error messages name the dataset.
        bbox_format: ``"xywh"`` or ``"xyxy"``, absolute pixels.
        class_names: Label names; required when ``category`` is not a ClassLabel.
        check_image_sizes: Require a row's ``width`` and ``height`` to be its image's upright size.

    Raises:
        DataError: The dataset has no rows or no categories, or a required column or field is missing or
            malformed; the message names it, the row and the object.
    """
    if bbox_format not in BBOX_FORMATS:
        raise ValueError(f"bbox_format must be one of {BBOX_FORMATS}, got {bbox_format!r}")
    object_fields, names = _checked_schema(dataset, source=source, class_names=class_names)
    keep_kitti = all(field in object_fields for field in _KITTI_FIELDS)
    features = kitti_detection_features(names) if keep_kitti else coco_detection_features(names)
    # Images pass through undecoded; only their headers are read, and only where width or height is missing.
    dataset = dataset.cast_column("image", datasets.Image(decode=False))
    normalise = _RowNormaliser(
        source=source,
        bbox_format=bbox_format,
        label_of={name: label for label, name in enumerate(names)},
        num_classes=len(names),
        keep_kitti=keep_kitti,
        check_image_sizes=check_image_sizes,
    )
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
    normalise.fitter.warn(source)
    return normalised


@dataclass
class _RowNormaliser:
    """The `datasets.map` function of `normalise_detection_dataset`: a batch of rows in the library's schema.
    Objects without an id are numbered on from batch to batch, so the rows must be mapped in order, in one
    process."""

    source: str
    bbox_format: str
    label_of: dict[str, int]
    num_classes: int
    keep_kitti: bool
    check_image_sizes: bool
    counter: dict[str, int] = dataclass_field(default_factory=lambda: {"next_object_id": 1})
    fitter: BoxFitter = dataclass_field(default_factory=BoxFitter)

    def __call__(self, batch: dict[str, list[Any]], indices: list[int]) -> dict[str, list[Any]]:
        source = self.source
        columns: dict[str, list[Any]] = {
            "image": batch["image"],
            "image_id": [],
            "width": [],
            "height": [],
            "objects": [],
        }
        for position, index in enumerate(indices):
            image_id = index
            if "image_id" in batch:
                image_id = integer_value(batch["image_id"][position], field="image_id", where=f"{source}: row {index}")
            where = f"{source}: row {index} (image_id {image_id})"
            width, height = _row_size(
                batch["image"][position],
                batch["width"][position] if "width" in batch else None,
                batch["height"][position] if "height" in batch else None,
                where=where,
                check=self.check_image_sizes,
            )
            columns["image_id"].append(image_id)
            columns["width"].append(width)
            columns["height"].append(height)
            columns["objects"].append(
                _normalise_objects(
                    batch["objects"][position],
                    where=where,
                    bbox_format=self.bbox_format,
                    label_of=self.label_of,
                    num_classes=self.num_classes,
                    keep_kitti=self.keep_kitti,
                    counter=self.counter,
                    fitter=self.fitter,
                    width=width,
                    height=height,
                )
            )
        return columns


def _checked_schema(
    dataset: datasets.Dataset, *, source: str, class_names: Sequence[str] | None
) -> tuple[dict[str, Any], list[str]]:
    """The `objects` fields of `dataset` and its class names, after checking that it has rows, the `image` and
    `objects` columns, `bbox` and `category` fields, and categories.

    Raises:
        DataError: naming `source` and what is missing.
    """
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
    if not names:
        raise DataError(f"{source}: no categories (no object names one, and no class_names were given)")
    if len(dataset) == 0:
        raise DataError(f"{source}: no rows; a detection set needs at least one image")
    return object_fields, names


def _load_splits(name_or_path: str | Path) -> dict[str, datasets.Dataset]:
    path = Path(name_or_path)
    if path.is_dir():
        if (path / "dataset_dict.json").is_file():
            return _load_saved(path)
        if (path / "state.json").is_file():
            raise DataError(
                f"{path}: holds one saved Dataset, not splits; save a DatasetDict (e.g. "
                "DatasetDict({'train': ..., 'validation': ...}).save_to_disk(path))"
            )
        if _has_metadata(path):
            return _load_imagefolder(path)
        raise DataError(
            f"{path}: neither a saved DatasetDict (dataset_dict.json) nor an imagefolder with metadata.jsonl"
        )
    if path.exists():
        raise DataError(f"{path}: not a folder")
    try:
        return dict(datasets.load_dataset(str(name_or_path)))
    except (FileNotFoundError, ConnectionError, ValueError) as error:
        raise DataError(f"{name_or_path}: not a local folder, and loading it from the Hub failed: {error}") from error


def _load_saved(path: Path) -> dict[str, datasets.Dataset]:
    try:
        return dict(datasets.load_from_disk(str(path)))
    except IndexError as error:
        # datasets saves a split of no rows without a data file, and then fails to read it back.
        empty = sorted(
            folder.name
            for folder in path.iterdir()
            if (folder / "state.json").is_file() and not any(folder.glob("*.arrow"))
        )
        if not empty:
            raise
        raise DataError(f"{path}: the splits {empty} have no rows; a detection set needs at least one image") from error


def _has_metadata(path: Path) -> bool:
    return (path / "metadata.jsonl").is_file() or any(path.glob("*/metadata.jsonl"))


def _load_imagefolder(path: Path) -> dict[str, datasets.Dataset]:
    """The splits of an imagefolder, after checking each ``metadata.jsonl`` line by line."""
    metadata_files = [
        metadata
        for metadata in sorted(path.rglob("metadata.jsonl"))
        # datasets skips hidden and dunder folders, so their files are not the set's.
        if not any(part.startswith((".", "__")) for part in metadata.relative_to(path).parts[:-1])
    ]
    for metadata in metadata_files:
        _check_metadata_file(metadata)
    try:
        return dict(datasets.load_dataset("imagefolder", data_dir=str(path)))
    except (datasets.exceptions.DatasetGenerationError, pyarrow.ArrowException) as error:
        # What the line checks cannot see, such as a field that is a string on one line and a number on
        # another; pyarrow's "row" counts within a block of lines, not within the file.
        cause = error.__cause__ or error
        files = ", ".join(str(metadata) for metadata in metadata_files)
        raise DataError(f"{files}: datasets cannot read the metadata: {type(cause).__name__}: {cause}") from error


def _check_metadata_file(path: Path) -> None:
    """Refuse a ``metadata.jsonl`` line that is not a JSON object with a ``file_name`` of an image inside the
    file's folder and an ``objects`` field, naming the file and the line."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError as error:
        raise DataError(f"{path}: not UTF-8 text ({error})") from error
    rows = 0
    for line_number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        where = f"{path}, line {line_number}"
        try:
            record = json.loads(line, parse_constant=_refuse_constant)
        except json.JSONDecodeError as error:
            raise DataError(f"{where}: not valid JSON: {error.msg} (column {error.colno})") from error
        except ValueError as error:
            raise DataError(f"{where}: {error}") from error
        if not isinstance(record, dict):
            raise DataError(f"{where}: expected a JSON object, got {line.strip()[:80]!r}")
        file_name = record.get("file_name")
        if not isinstance(file_name, str) or not file_name:
            raise DataError(f"{where}: 'file_name' = {file_name!r}, expected the path of an image in {path.parent}")
        if is_outside(file_name):
            raise DataError(
                f"{where}: 'file_name' = {file_name!r} is outside {path.parent}; an imagefolder reads only images "
                "inside the folder of its metadata.jsonl: move the image there"
            )
        if not (path.parent / file_name).is_file():
            raise DataError(f"{where}: 'file_name' = {file_name!r}, but there is no such file in {path.parent}")
        if record.get("objects") is None:
            raise DataError(
                f"{where}: no 'objects'; give every image one, with empty lists for an image without objects "
                '({"bbox": [], "category": []})'
            )
        rows += 1
    if not rows:
        raise DataError(f"{path}: no rows; an imagefolder needs one line per image")


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a number datasets can read; write a finite number")


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
    values = [
        obj.get("category")
        for split, dataset in splits.items()
        for index, objects in enumerate(dataset.with_format(None)["objects"])
        for obj in _object_rows(objects, where=f"{source} [{split}]: row {index}")
    ]
    if all(isinstance(value, str) for value in values):
        return sorted(set(values))
    if all(isinstance(value, int) and not isinstance(value, bool) and value >= 0 for value in values):
        return [str(label) for label in range(max(values, default=-1) + 1)]
    raise DataError(
        f"{source}: 'objects.category' mixes names and numbers or holds other values: "
        f"{sorted({repr(value) for value in values})[:5]}"
    )


def _object_rows(objects: Any, *, where: str) -> list[dict[str, Any]]:
    """A row's ``objects`` (dict of lists or list of dicts) as one dict per object; a field that is None
    (absent from this row where other rows have it) is left out."""
    if objects is None:
        raise DataError(f"{where}: no 'objects'; give every image one, with empty lists for an image without objects")
    if isinstance(objects, Mapping):
        fields = {key: values for key, values in objects.items() if values is not None}
        for key, values in fields.items():
            if not isinstance(values, (list, tuple)):
                raise DataError(f"{where}: 'objects.{key}' = {values!r}, expected a list with one value per object")
        lengths = {key: len(values) for key, values in fields.items()}
        if len(set(lengths.values())) > 1:
            raise DataError(f"{where}: the 'objects' fields have different lengths {lengths}")
        return objects_as_rows(fields)
    if isinstance(objects, (list, tuple)) and all(isinstance(obj, Mapping) for obj in objects):
        return [{key: value for key, value in obj.items() if value is not None} for obj in objects]
    raise DataError(f"{where}: 'objects' = {objects!r}, expected per-object fields (bbox, category)")


def _row_size(image: Any, width: Any, height: Any, *, where: str, check: bool) -> tuple[int, int]:
    """The row's (width, height): as given, checked against the image's upright size when `check`, or the
    image's upright size when the row gives none."""
    given = width is not None and height is not None
    if given:
        width = integer_value(width, field="width", where=where, bits=32)
        height = integer_value(height, field="height", where=where, bits=32)
        if width <= 0 or height <= 0:
            raise DataError(f"{where} has non-positive size {width}x{height}")
        if not check:
            return width, height
    header = _image_header(image, where)
    if not given:
        return header.size
    mismatch = header.size_mismatch(width, height)
    if mismatch is not None:
        raise DataError(f"{where}: the image {source_name(image)} {mismatch}")
    return width, height


def _image_header(image: Any, where: str) -> ImageHeader:
    if not isinstance(image, (dict, str, bytes)):
        raise DataError(f"{where}: 'image' = {image!r}, expected an image (path or bytes)")
    return read_header(image, name=f"{where}: image {source_name(image)}")


def _normalise_objects(
    objects: Any,
    *,
    where: str,
    bbox_format: str,
    label_of: dict[str, int],
    num_classes: int,
    keep_kitti: bool,
    counter: dict[str, int],
    fitter: BoxFitter,
    width: int,
    height: int,
) -> dict[str, list[Any]]:
    fields = ["id", "bbox", "category", "area", "iscrowd", *(_KITTI_FIELDS if keep_kitti else ())]
    column: dict[str, list[Any]] = {field: [] for field in fields}
    for index, obj in enumerate(_object_rows(objects, where=where)):
        at = f"{where} object {index}"
        label = _label(obj.get("category"), label_of, num_classes, at)
        iscrowd = parse_iscrowd(obj.get("iscrowd"), where=at)
        box = fitter.fit(_xywh(obj.get("bbox"), bbox_format, at), width=width, height=height, where=at)
        # Every field is checked, also those of a box that is dropped.
        area = area_value(obj.get("area"), box or (0.0, 0.0, 0.0, 0.0), where=at)
        object_id = _object_id(obj, at)
        if box is None:
            continue
        column["id"].append(object_id if object_id is not None else _next_object_id(counter))
        column["bbox"].append(list(box))
        column["category"].append(label)
        column["area"].append(area)
        column["iscrowd"].append(iscrowd)
        if keep_kitti:
            for field in _KITTI_FIELDS:
                column[field].append(obj.get(field))
    return column


def _object_id(obj: dict[str, Any], at: str) -> int | None:
    for key in ("id", "bbox_id"):
        if obj.get(key) is not None:
            return integer_value(obj[key], field=key, where=at)
    return None


def _next_object_id(counter: dict[str, int]) -> int:
    counter["next_object_id"] += 1
    return counter["next_object_id"] - 1


def _xywh(bbox: Any, bbox_format: str, at: str) -> list[float]:
    if not isinstance(bbox, (list, tuple)) or len(bbox) != 4 or not all(map(is_number, bbox)):
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
