"""Load a COCO-layout detection set (one ``instances_<split>.json`` plus an image folder) into a
``datasets.Dataset`` with the schema of the Hub detection sets (``detection-datasets/coco``,
``cppe-5``).

Every row holds::

    image     datasets.Image(), stored as the file path so it decodes only when read
    image_id  int64, the COCO image id
    width     int32, pixels
    height    int32, pixels
    objects   {"id": [...], "bbox": [...], "category": [...], "area": [...], "iscrowd": [...]}

``objects`` is declared as ``Sequence({...})``, which datasets 5 stores as a dict of lists (one
entry per object in each list). ``bbox`` is COCO xywh in absolute pixels; ``category`` is a
contiguous label (0 .. num_classes - 1) following the ascending order of the original COCO category
ids. Use :func:`category_names` for the label names and :func:`coco_category_ids` to map labels back
to the file's own category ids, which pycocotools needs when scoring.

Example::

    >>> dataset = load_coco_detection("data/shapes", split="val")  # doctest: +SKIP
    >>> names = category_names(dataset)  # doctest: +SKIP
    >>> coco_ids = coco_category_ids("data/shapes/annotations/instances_val.json")  # doctest: +SKIP
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import datasets

from liaf_hf.data.checks import BoxFitter, area_value, integer_value, is_number, is_outside, listing, parse_iscrowd
from liaf_hf.data.images import read_header
from liaf_hf.errors import DataError

__all__ = [
    "category_names",
    "coco_category_ids",
    "coco_detection_features",
    "label_maps",
    "load_coco_detection",
]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class _CocoImage:
    image_id: int
    file_name: str
    width: int
    height: int


@dataclass(frozen=True)
class _CocoObject:
    """One kept annotation; ``bbox_xywh`` is in absolute pixels, already clipped to its image."""

    annotation_id: int
    image_id: int
    label: int
    bbox_xywh: tuple[float, float, float, float]
    area: float
    iscrowd: bool


def coco_detection_features(names: list[str]) -> datasets.Features:
    """The Hub detection schema for a set whose contiguous labels are named ``names``."""
    return datasets.Features(
        {
            "image": datasets.Image(),
            "image_id": datasets.Value("int64"),
            "width": datasets.Value("int32"),
            "height": datasets.Value("int32"),
            "objects": datasets.Sequence(
                {
                    "id": datasets.Value("int64"),
                    "bbox": datasets.Sequence(datasets.Value("float32"), length=4),
                    "category": datasets.ClassLabel(names=names),
                    "area": datasets.Value("float32"),
                    "iscrowd": datasets.Value("bool"),
                }
            ),
        }
    )


def category_names(dataset: datasets.Dataset) -> list[str]:
    """Names of the contiguous labels of a dataset built by :func:`load_coco_detection`.

    Equivalent to ``dataset.features["objects"]["category"].feature.names``: in datasets 5 a
    ``Sequence`` of a dict becomes a dict of lists, so each field is a ``List`` around its own
    feature.
    """
    return list(dataset.features["objects"]["category"].feature.names)


def label_maps(dataset: datasets.Dataset) -> tuple[dict[int, str], dict[str, int]]:
    """``(id2label, label2id)`` for a detector config, from the dataset's contiguous labels."""
    names = category_names(dataset)
    return dict(enumerate(names)), {name: label for label, name in enumerate(names)}


def objects_as_rows(objects: Mapping[str, list[Any]] | list[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """A row's ``objects`` as one dict per object, whether datasets stored it as a dict of lists
    (``Sequence({...})``, as this loader and the Hub detection datasets do) or as a list of dicts."""
    if isinstance(objects, Mapping):
        return [dict(zip(objects, values)) for values in zip(*objects.values())]
    return [dict(obj) for obj in objects]


def coco_category_ids(annotation_file: str | Path) -> list[int]:
    """The original COCO category ids of a file, indexed by contiguous label.

    ``coco_category_ids(path)[label]`` is the ``category_id`` to write when scoring predictions of
    ``label`` against ``path`` with pycocotools.
    """
    path = Path(annotation_file)
    return [category_id for category_id, _ in _parse_categories(_read_annotation_file(path), path)]


def load_coco_detection(
    root: str | Path | None = None,
    split: str = "train",
    *,
    annotation_file: str | Path | None = None,
    image_dir: str | Path | None = None,
    check_image_sizes: bool = True,
    allow_outside_paths: bool = False,
) -> datasets.Dataset:
    """Read a COCO instances file and its images into a ``datasets.Dataset``.

    The schema is described in the module docstring.

    Args:
        root: Folder laid out as ``root/annotations/instances_<split>.json`` and ``root/<split>/``.
        split: Split name used with ``root``.
        annotation_file: Explicit instances JSON, given with ``image_dir`` instead of ``root``.
        image_dir: Folder that ``file_name`` in the JSON is relative to.
        check_image_sizes: Read each image header and require the JSON ``width`` and ``height`` to be
            the upright size (after the EXIF orientation, as every liaf-hf path reads images).
        allow_outside_paths: Accept a ``file_name`` that is absolute or climbs out of the image folder
            with ``..``; by default such a record is refused, so that a JSON file cannot make the loader
            read files elsewhere on the machine.

    Images without annotations are kept with empty ``objects``. Boxes are fitted to their image by the
    rules of :mod:`liaf_hf.data.checks`: partly outside, clipped; of zero width or height, dropped;
    both counted in one warning per file on the ``liaf_hf.data`` logger. Crowd annotations are kept
    with ``iscrowd=True``; leaving them out of the training loss is the trainer's concern.

    Raises:
        DataError: The file or an image is missing or unreadable, the file has no images or no
            categories, or a record is malformed or inconsistent; the message names the file and the
            record.
    """
    annotation_path, image_root = _resolve_paths(root, split, annotation_file, image_dir)
    content = _read_annotation_file(annotation_path)
    categories = _parse_categories(content, annotation_path)
    label_of = {category_id: label for label, (category_id, _) in enumerate(categories)}
    images = _parse_images(content, annotation_path)
    objects = _parse_annotations(content, annotation_path, images=images, label_of=label_of)
    if not allow_outside_paths:
        _check_inside(images, image_root, annotation_path)
    image_paths = _check_image_files(images, image_root, annotation_path, check_sizes=check_image_sizes)

    objects_by_image: dict[int, list[_CocoObject]] = {image_id: [] for image_id in images}
    for coco_object in objects:
        objects_by_image[coco_object.image_id].append(coco_object)
    empty = sum(1 for image_objects in objects_by_image.values() if not image_objects)
    logger.info(
        "%s: loaded %d images (%d without annotations) and %d annotations",
        annotation_path.name,
        len(images),
        empty,
        len(objects),
    )
    columns: dict[str, list[Any]] = {
        "image": [str(image_paths[image_id]) for image_id in images],
        "image_id": list(images),
        "width": [image.width for image in images.values()],
        "height": [image.height for image in images.values()],
        "objects": [_objects_column(objects_by_image[image_id]) for image_id in images],
    }
    names = [name for _, name in categories]
    return datasets.Dataset.from_dict(columns, features=coco_detection_features(names))


def _objects_column(objects: list[_CocoObject]) -> dict[str, list[Any]]:
    return {
        "id": [coco_object.annotation_id for coco_object in objects],
        "bbox": [list(coco_object.bbox_xywh) for coco_object in objects],
        "category": [coco_object.label for coco_object in objects],
        "area": [coco_object.area for coco_object in objects],
        "iscrowd": [coco_object.iscrowd for coco_object in objects],
    }


def _resolve_paths(
    root: str | Path | None,
    split: str,
    annotation_file: str | Path | None,
    image_dir: str | Path | None,
) -> tuple[Path, Path]:
    if root is not None:
        if annotation_file is not None or image_dir is not None:
            raise ValueError("give either root (and split) or annotation_file and image_dir, not both")
        root = Path(root)
        return root / "annotations" / f"instances_{split}.json", root / split
    if annotation_file is None or image_dir is None:
        raise ValueError("without root, both annotation_file and image_dir are required")
    return Path(annotation_file), Path(image_dir)


def _read_annotation_file(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise DataError(f"{path}: annotation file not found")
    try:
        with path.open(encoding="utf-8") as handle:
            content = json.load(handle)
    except json.JSONDecodeError as error:
        raise DataError(f"{path}: invalid JSON at line {error.lineno}, column {error.colno}: {error.msg}") from error
    except UnicodeDecodeError as error:
        raise DataError(f"{path}: not UTF-8 text ({error})") from error
    if not isinstance(content, dict):
        raise DataError(f"{path}: top level must be a JSON object, got {type(content).__name__}")
    for key in ("images", "annotations", "categories"):
        if key not in content:
            raise DataError(f"{path}: missing top-level '{key}'")
        if not isinstance(content[key], list):
            raise DataError(f"{path}: top-level '{key}' must be a list")
    return content


def _records(content: dict[str, Any], key: str, path: Path) -> list[dict[str, Any]]:
    records = content[key]
    for index, record in enumerate(records):
        if not isinstance(record, dict):
            raise DataError(f"{path}: {key}[{index}] must be a JSON object, got {record!r}")
    return records


def _require(record: dict[str, Any], key: str, *, where: str, path: Path) -> Any:
    if key not in record:
        raise DataError(f"{path}: {where} has no '{key}'")
    return record[key]


def _integer(record: dict[str, Any], key: str, *, where: str, path: Path, bits: int = 64) -> int:
    """`record[key]` as an integer that fits a signed integer of `bits` bits (the column it is stored in)."""
    value = _require(record, key, where=where, path=path)
    return integer_value(value, field=key, where=f"{path}: {where}", bits=bits)


def _parse_categories(content: dict[str, Any], path: Path) -> list[tuple[int, str]]:
    """``(coco_category_id, name)`` pairs in ascending id order: the order of contiguous labels."""
    categories: dict[int, str] = {}
    for index, record in enumerate(_records(content, "categories", path)):
        category_id = _integer(record, "id", where=f"categories[{index}]", path=path)
        where = f"category id {category_id}"
        name = _require(record, "name", where=where, path=path)
        if not isinstance(name, str) or not name:
            raise DataError(f"{path}: {where} has 'name' = {name!r}, expected a non-empty string")
        if category_id in categories:
            raise DataError(f"{path}: duplicate category id {category_id}")
        categories[category_id] = name
    names = list(categories.values())
    duplicated = sorted({name for name in names if names.count(name) > 1})
    if duplicated:
        raise DataError(f"{path}: duplicate category names {duplicated}")
    if not categories:
        raise DataError(f"{path}: 'categories' is empty; a detection set needs at least one category")
    return sorted(categories.items())


def _parse_images(content: dict[str, Any], path: Path) -> dict[int, _CocoImage]:
    """Images by id, in file order."""
    images: dict[int, _CocoImage] = {}
    for index, record in enumerate(_records(content, "images", path)):
        image_id = _integer(record, "id", where=f"images[{index}]", path=path)
        where = f"image id {image_id}"
        file_name = _require(record, "file_name", where=where, path=path)
        if not isinstance(file_name, str) or not file_name:
            raise DataError(f"{path}: {where} has 'file_name' = {file_name!r}, expected a file name")
        width = _integer(record, "width", where=where, path=path, bits=32)
        height = _integer(record, "height", where=where, path=path, bits=32)
        if width <= 0 or height <= 0:
            raise DataError(f"{path}: {where} has non-positive size {width}x{height}")
        if image_id in images:
            raise DataError(f"{path}: duplicate image id {image_id}")
        images[image_id] = _CocoImage(image_id, file_name, width, height)
    if not images:
        raise DataError(f"{path}: 'images' is empty; a detection set needs at least one image")
    return images


def _parse_annotations(
    content: dict[str, Any],
    path: Path,
    *,
    images: dict[int, _CocoImage],
    label_of: dict[int, int],
) -> list[_CocoObject]:
    objects: list[_CocoObject] = []
    seen_ids: set[int] = set()
    fitter = BoxFitter()
    for index, record in enumerate(_records(content, "annotations", path)):
        annotation_id = _integer(record, "id", where=f"annotations[{index}]", path=path)
        where = f"annotation id {annotation_id}"
        # Scoring matches detections to ground truth by annotation id; duplicates would corrupt it.
        if annotation_id in seen_ids:
            raise DataError(f"{path}: duplicate annotation id {annotation_id}")
        seen_ids.add(annotation_id)
        image_id = _integer(record, "image_id", where=where, path=path)
        category_id = _integer(record, "category_id", where=where, path=path)
        bbox = _require(record, "bbox", where=where, path=path)
        if not isinstance(bbox, list) or len(bbox) != 4 or not all(map(is_number, bbox)):
            raise DataError(f"{path}: {where} has 'bbox' = {bbox!r}, expected 4 finite numbers")
        if bbox[2] < 0 or bbox[3] < 0:
            raise DataError(f"{path}: {where} has negative box width or height in {bbox!r}")
        if image_id not in images:
            raise DataError(f"{path}: {where} refers to image id {image_id}, which is not in 'images'")
        if category_id not in label_of:
            raise DataError(
                f"{path}: {where} has category id {category_id}, not among the known category ids {sorted(label_of)}"
            )
        image = images[image_id]
        box = fitter.fit(bbox, width=image.width, height=image.height, where=f"{path}: {where} (image id {image_id})")
        if box is None:
            continue
        objects.append(
            _CocoObject(
                annotation_id=annotation_id,
                image_id=image_id,
                label=label_of[category_id],
                bbox_xywh=box,
                area=area_value(record.get("area"), box, where=f"{path}: {where}"),
                iscrowd=parse_iscrowd(record.get("iscrowd", 0), where=f"{path}: {where}"),
            )
        )
    fitter.warn(path.name)
    return objects


def _check_inside(images: dict[int, _CocoImage], image_dir: Path, path: Path) -> None:
    """Refuse a ``file_name`` that is absolute or climbs out of `image_dir` with ``..``."""
    for image_id, image in images.items():
        if is_outside(image.file_name):
            raise DataError(
                f"{path}: image id {image_id} has 'file_name' = {image.file_name!r}, which is outside the image "
                f"folder {image_dir}; move the image into that folder, or pass allow_outside_paths=True "
                "(--allow_outside_paths true to the example scripts) to read files from anywhere"
            )


def _check_image_files(
    images: dict[int, _CocoImage], image_dir: Path, path: Path, *, check_sizes: bool
) -> dict[int, Path]:
    """Absolute path of every image, after checking that all exist (and match their JSON size)."""
    image_paths = {image_id: (image_dir / image.file_name).absolute() for image_id, image in images.items()}
    missing = [
        f"{image_paths[image_id]} (image id {image_id})" for image_id in images if not _is_file(image_paths[image_id])
    ]
    if missing:
        raise DataError(f"{path}: {len(missing)} of {len(images)} image files are missing, first: {listing(missing)}")
    if not check_sizes:
        return image_paths
    wrong_sizes = []
    for image_id, image in images.items():
        name = f"{image_paths[image_id]} (image id {image_id})"
        try:
            # Only the header is read, so this stays cheap even for large sets.
            header = read_header(image_paths[image_id], name=name)
        except DataError as error:
            raise DataError(f"{path}: {error}") from error
        mismatch = header.size_mismatch(image.width, image.height)
        if mismatch is not None:
            wrong_sizes.append(f"{name} {mismatch}")
    if wrong_sizes:
        raise DataError(
            f"{path}: {len(wrong_sizes)} images differ in size from their JSON record, first: {listing(wrong_sizes)}"
        )
    return image_paths


def _is_file(path: Path) -> bool:
    try:
        return path.is_file()
    except (OSError, ValueError):  # a name too long for the file system, or holding a NUL byte
        return False
