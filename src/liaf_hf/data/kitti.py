"""Load the KITTI 2D object set (standard layout) into a ``datasets.Dataset`` with the Hub detection schema.

Layout read::

    root/training/image_2/000000.png ...   images
    root/training/label_2/000000.txt ...   one line per object, 15 space-separated fields
    root/ImageSets/train.txt, val.txt      optional split files, one image name (no extension) per line

A label line is ``type truncated occluded alpha x1 y1 x2 y2 h w l x y z rotation_y``: the object type
(``Car``, ``Van``, ``Truck``, ``Pedestrian``, ``Person_sitting``, ``Cyclist``, ``Tram``, ``Misc`` or
``DontCare``), the truncation in 0..1, the occlusion state (0 fully visible, 1 partly occluded, 2 largely
occluded, 3 unknown), and the 2D box in pixel coordinates of the upright image. ``DontCare`` regions may also
carry -1 for both, as KITTI writes them; any other value outside those ranges is refused. The 3D fields are
checked to be numbers and otherwise not kept. Boxes are fitted to their image by the rules of
:mod:`liaf_hf.data.checks` (clipped, zero-area ones dropped, counted in one warning).

Rows have the schema of :func:`liaf_hf.data.coco.load_coco_detection` (``image``, ``image_id``, ``width``,
``height``, ``objects`` with ``id``, ``bbox`` xywh absolute pixels, ``category`` ClassLabel, ``area``,
``iscrowd``) and three more fields per object, which the KITTI difficulty levels need:

    type       the KITTI type as written in the label file (``"Van"``, ``"DontCare"``, ...)
    truncated  float32, 0..1
    occluded   int32, 0..3

The box height the difficulty levels use is ``bbox[3]``. An object whose type maps to a class gets that
class as ``category``; every other object (by default Van, Truck, Tram, Misc, Person_sitting, DontCare) is
an ignore region: ``iscrowd=True`` and ``category=-1`` (ClassLabel's "no label"). The image processor turns
ignore regions into ``ignore_boxes``, where the ATSS assigner picks neither positives nor negatives, and
:mod:`liaf_hf.metrics.kitti` counts a detection on one as neither a true nor a false positive.

Example::

    >>> train = load_kitti("data/kitti", "train")  # doctest: +SKIP
    >>> train = load_kitti("data/kitti", "train", type_map={"Van": "Car"})  # Vans count as cars  # doctest: +SKIP
"""

from __future__ import annotations

import logging
import math
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import datasets

from liaf_hf.data.checks import BoxFitter, listing
from liaf_hf.data.coco import coco_detection_features
from liaf_hf.data.images import read_header
from liaf_hf.errors import DataError

__all__ = [
    "KITTI_CLASSES",
    "KITTI_TYPES",
    "is_kitti_root",
    "kitti_detection_features",
    "load_kitti",
    "write_kitti_split",
]

logger = logging.getLogger(__name__)

KITTI_CLASSES: tuple[str, ...] = ("Car", "Pedestrian", "Cyclist")
"""The classes of the KITTI 2D benchmark, the default classes of :func:`load_kitti`."""
KITTI_TYPES: tuple[str, ...] = (
    "Car",
    "Van",
    "Truck",
    "Pedestrian",
    "Person_sitting",
    "Cyclist",
    "Tram",
    "Misc",
    "DontCare",
)
"""Every object type the KITTI label files use."""

_NUM_FIELDS = 15
_IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
_SPLIT_DIR = "ImageSets"
_OCCLUSION_STATES = (0, 1, 2, 3)
# What KITTI writes for the truncation and occlusion of a DontCare region.
_DONTCARE_UNSET = -1.0


def kitti_detection_features(names: Sequence[str]) -> datasets.Features:
    """The Hub detection schema (:func:`~liaf_hf.data.coco.coco_detection_features`) plus the KITTI
    per-object fields ``type``, ``truncated`` and ``occluded``."""
    features = coco_detection_features(list(names))
    # datasets 5 stores Sequence({...}) as a dict of List features, one per object field.
    objects = dict(features["objects"])
    objects["type"] = datasets.List(datasets.Value("string"))
    objects["truncated"] = datasets.List(datasets.Value("float32"))
    objects["occluded"] = datasets.List(datasets.Value("int32"))
    features["objects"] = objects
    return features


def is_kitti_root(root: str | Path) -> bool:
    """Whether ``root`` has the KITTI layout (``training/image_2`` and ``training/label_2``)."""
    root = Path(root)
    return (root / "training" / "image_2").is_dir() and (root / "training" / "label_2").is_dir()


@dataclass(frozen=True)
class _KittiObject:
    type: str
    truncated: float
    occluded: int
    box_xyxy: tuple[float, float, float, float]
    line_number: int


def load_kitti(
    root: str | Path,
    split: str = "train",
    *,
    classes: Sequence[str] = KITTI_CLASSES,
    type_map: Mapping[str, str] | None = None,
    extra_types: Sequence[str] = (),
    val_fraction: float = 0.2,
    seed: int = 0,
    skip_invalid: bool = False,
) -> datasets.Dataset:
    """Read one split of a KITTI-layout folder into a ``datasets.Dataset`` (schema in the module docstring).

    Args:
        root: Folder holding ``training/image_2``, ``training/label_2`` and optionally ``ImageSets/``.
        split: Name of the split: the image names are read from ``ImageSets/<split>.txt``. When
            ``ImageSets/`` holds neither ``train.txt`` nor ``val.txt``, a seeded split of all training
            images is made and written there (see :func:`write_kitti_split`) so later runs reuse it.
        classes: Class names, in label order. A type of the same name belongs to its class.
        type_map: Further types counted as a class, e.g. ``{"Van": "Car"}``. Types neither in ``classes``
            nor mapped are ignore regions.
        extra_types: Types beyond :data:`KITTI_TYPES` that label files may hold (kept as ignore regions
            unless mapped); any other unknown type is bad input.
        val_fraction: Share of images in ``val`` when the split is generated.
        seed: Seed of a generated split.
        skip_invalid: Instead of raising, leave out bad label lines, objects of unknown types, images
            without a label file, label files without an image and split-file names without either, and log
            how many of each.

    Raises:
        DataError: A folder or split file is missing, or the split has no images; a label line has the
            wrong number of fields, a non-number, a truncation outside 0..1, an occlusion other than 0-3, or
            a box with x2 < x1 or y2 < y1 or entirely outside its image; a type is unknown; an image has no
            label file or a label file no image (unless ``skip_invalid``). The message names the file and
            the line.
    """
    root = Path(root)
    label_of = _label_map(classes, type_map)
    known_types = set(KITTI_TYPES) | set(extra_types) | set(label_of)
    image_dir, label_dir = root / "training" / "image_2", root / "training" / "label_2"
    for folder in (image_dir, label_dir):
        if not folder.is_dir():
            raise DataError(f"{folder}: KITTI folder not found (expected {root}/training/image_2 and label_2)")
    images, labels = _paired_files(image_dir, label_dir, skip_invalid=skip_invalid)
    names = _split_names(root, split, sorted(images), val_fraction=val_fraction, seed=seed)
    missing = [name for name in names if name not in images]
    if missing:
        message = (
            f"{root / _SPLIT_DIR / (split + '.txt')}: {len(missing)} names have no image with a label file "
            f"in {image_dir}, first: {listing(missing)}"
        )
        if not skip_invalid:
            raise DataError(message)
        logger.warning("skipping %s", message)
        names = [name for name in names if name in images]
    if not names:
        raise DataError(f"{root / _SPLIT_DIR / (split + '.txt')}: split {split!r} has no images (from {image_dir})")
    columns = _read_split(
        names,
        images,
        labels,
        label_dir=label_dir,
        label_of=label_of,
        known_types=known_types,
        skip_invalid=skip_invalid,
    )
    logger.info(
        "%s: split %r has %d images and %d objects",
        root,
        split,
        len(names),
        sum(len(objects["id"]) for objects in columns["objects"]),
    )
    return datasets.Dataset.from_dict(columns, features=kitti_detection_features(classes))


def _read_split(
    names: Sequence[str],
    images: Mapping[str, Path],
    labels: Mapping[str, Path],
    *,
    label_dir: Path,
    label_of: Mapping[str, int],
    known_types: set[str],
    skip_invalid: bool,
) -> dict[str, list[Any]]:
    """The dataset's columns for the images `names`: each image's size from its header, its objects from its
    label file (object ids counted from 1 over the split). Warns once for what was skipped or clipped."""
    image_ids = _image_ids(sorted(images))
    skipped: dict[str, int] = {"bad lines": 0, "unknown types": 0}
    fitter = BoxFitter()
    columns: dict[str, list[Any]] = {"image": [], "image_id": [], "width": [], "height": [], "objects": []}
    next_object_id = 1
    for name in names:
        width, height = read_header(images[name]).size
        objects = _read_label_file(labels[name], known_types, skip_invalid=skip_invalid, skipped=skipped)
        column = _objects_column(
            objects,
            label_of,
            first_id=next_object_id,
            width=width,
            height=height,
            fitter=fitter,
            path=labels[name],
            skip_invalid=skip_invalid,
            skipped=skipped,
        )
        next_object_id += len(column["id"])
        columns["image"].append(str(images[name].absolute()))
        columns["image_id"].append(image_ids[name])
        columns["width"].append(width)
        columns["height"].append(height)
        columns["objects"].append(column)
    if any(skipped.values()):
        logger.warning("%s: skipped %d bad label lines and %d objects of unknown types", label_dir, *skipped.values())
    fitter.warn(str(label_dir))
    return columns


def write_kitti_split(
    root: str | Path, image_names: Sequence[str], *, val_fraction: float = 0.2, seed: int = 0
) -> tuple[list[str], list[str]]:
    """Split ``image_names`` at random (seeded) into train and val, write ``ImageSets/train.txt`` and
    ``val.txt`` under ``root``, and return ``(train, val)`` names, each sorted.

    The split depends only on the sorted names, ``val_fraction`` and ``seed``.
    """
    if not 0 < val_fraction < 1:
        raise ValueError(f"val_fraction must be in (0, 1), got {val_fraction}")
    ordered = sorted(image_names)
    shuffled = list(ordered)
    random.Random(seed).shuffle(shuffled)
    num_val = max(1, round(val_fraction * len(ordered))) if len(ordered) > 1 else 0
    val = sorted(shuffled[:num_val])
    train = sorted(shuffled[num_val:])
    split_dir = Path(root) / _SPLIT_DIR
    split_dir.mkdir(parents=True, exist_ok=True)
    for split, names in (("train", train), ("val", val)):
        (split_dir / f"{split}.txt").write_text("".join(f"{name}\n" for name in names), encoding="utf-8")
    return train, val


def _label_map(classes: Sequence[str], type_map: Mapping[str, str] | None) -> dict[str, int]:
    """Label of every type that belongs to a class."""
    if not classes:
        raise ValueError("classes must not be empty")
    if len(set(classes)) != len(classes):
        raise ValueError(f"classes has duplicates: {list(classes)}")
    label_of = {name: label for label, name in enumerate(classes)}
    for kitti_type, class_name in (type_map or {}).items():
        if class_name not in label_of:
            raise ValueError(f"type_map maps {kitti_type!r} to {class_name!r}, which is not one of {list(classes)}")
        if kitti_type == "DontCare":
            raise ValueError("DontCare regions are unlabelled and cannot be mapped to a class")
        label_of[kitti_type] = label_of[class_name]
    return label_of


def _paired_files(image_dir: Path, label_dir: Path, *, skip_invalid: bool) -> tuple[dict[str, Path], dict[str, Path]]:
    """Images and label files by name (stem), each image with its label file."""
    images = {path.stem: path for path in image_dir.iterdir() if path.suffix.lower() in _IMAGE_SUFFIXES}
    labels = {path.stem: path for path in label_dir.iterdir() if path.suffix == ".txt"}
    without_label = sorted(set(images) - set(labels))
    without_image = sorted(set(labels) - set(images))
    if without_label or without_image:
        problems = []
        if without_label:
            problems.append(
                f"{len(without_label)} images have no label file in {label_dir}, first: "
                f"{listing([str(images[name]) for name in without_label])}"
            )
        if without_image:
            problems.append(
                f"{len(without_image)} label files have no image in {image_dir}, first: "
                f"{listing([str(labels[name]) for name in without_image])}"
            )
        if not skip_invalid:
            raise DataError("; ".join(problems) + " (pass skip_invalid=True to leave them out)")
        logger.warning("skipping unpaired KITTI files: %s", "; ".join(problems))
    paired = sorted(set(images) & set(labels))
    return {name: images[name] for name in paired}, {name: labels[name] for name in paired}


def _split_names(root: Path, split: str, all_names: list[str], *, val_fraction: float, seed: int) -> list[str]:
    split_dir = root / _SPLIT_DIR
    split_file = split_dir / f"{split}.txt"
    if not split_file.is_file():
        has_split_files = any((split_dir / f"{name}.txt").is_file() for name in ("train", "val"))
        if has_split_files or split not in ("train", "val"):
            raise DataError(f"{split_file}: split file not found")
        train, val = write_kitti_split(root, all_names, val_fraction=val_fraction, seed=seed)
        logger.info(
            "%s: no split files; wrote a seeded split (seed %d) of %d train and %d val images",
            split_dir,
            seed,
            len(train),
            len(val),
        )
    names = []
    for line_number, line in enumerate(split_file.read_text(encoding="utf-8").splitlines(), start=1):
        name = line.strip()
        if not name:
            continue
        if " " in name:
            raise DataError(f"{split_file}, line {line_number}: expected one image name, got {line!r}")
        names.append(name)
    duplicated = sorted({name for name in names if names.count(name) > 1})
    if duplicated:
        raise DataError(f"{split_file}: names listed more than once: {listing(duplicated)}")
    return names


def _image_ids(names: list[str]) -> dict[str, int]:
    """KITTI's numeric names as ids (``000123`` -> 123); otherwise the position among the sorted names, so
    that ids stay the same across splits of the same folder."""
    if all(name.isdigit() for name in names):
        return {name: int(name) for name in names}
    return {name: index for index, name in enumerate(names)}


def _read_label_file(
    path: Path, known_types: set[str], *, skip_invalid: bool, skipped: dict[str, int]
) -> list[_KittiObject]:
    objects = []
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError as error:
        raise DataError(f"{path}: not UTF-8 text ({error})") from error
    for line_number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            kitti_object = _parse_line(line, known_types, line_number=line_number)
        except _BadLine as error:
            if not skip_invalid:
                raise DataError(f"{path}, line {line_number}: {error} in {line!r}") from None
            skipped["unknown types" if error.unknown_type else "bad lines"] += 1
            continue
        objects.append(kitti_object)
    return objects


class _BadLine(Exception):
    def __init__(self, message: str, *, unknown_type: bool = False) -> None:
        super().__init__(message)
        self.unknown_type = unknown_type


def _parse_line(line: str, known_types: set[str], *, line_number: int) -> _KittiObject:
    fields = line.split()
    if len(fields) != _NUM_FIELDS:
        raise _BadLine(f"expected {_NUM_FIELDS} fields, got {len(fields)}")
    kitti_type = fields[0]
    values = []
    for position, text in enumerate(fields[1:], start=2):
        try:
            value = float(text)
        except ValueError:
            raise _BadLine(f"field {position} is {text!r}, not a number") from None
        if not math.isfinite(value):
            raise _BadLine(f"field {position} is {text!r}, not a finite number")
        values.append(value)
    if kitti_type not in known_types:
        raise _BadLine(
            f"type {kitti_type!r} is not a KITTI type and not in the class mapping "
            f"(known: {sorted(known_types)}; map it with type_map or allow it with extra_types)",
            unknown_type=True,
        )
    truncated, occluded = values[0], values[1]
    unset_allowed = " (or -1 for DontCare)" if kitti_type == "DontCare" else ""
    unset = kitti_type == "DontCare" and truncated == _DONTCARE_UNSET
    if not (0.0 <= truncated <= 1.0 or unset):
        raise _BadLine(f"truncation (field 2) is {fields[1]!r}, expected a number in 0..1{unset_allowed}")
    unset = kitti_type == "DontCare" and occluded == _DONTCARE_UNSET
    if occluded not in _OCCLUSION_STATES and not unset:
        raise _BadLine(f"occlusion (field 3) is {fields[2]!r}, expected an integer 0-3{unset_allowed}")
    x1, y1, x2, y2 = values[3:7]
    if x2 < x1 or y2 < y1:
        raise _BadLine(f"box ({x1}, {y1}, {x2}, {y2}) has x2 < x1 or y2 < y1")
    return _KittiObject(
        type=kitti_type,
        truncated=truncated,
        occluded=int(occluded),
        box_xyxy=(x1, y1, x2, y2),
        line_number=line_number,
    )


def _objects_column(
    objects: list[_KittiObject],
    label_of: dict[str, int],
    *,
    first_id: int,
    width: int,
    height: int,
    fitter: BoxFitter,
    path: Path,
    skip_invalid: bool,
    skipped: dict[str, int],
) -> dict[str, list[Any]]:
    column: dict[str, list[Any]] = {
        key: [] for key in ("id", "bbox", "category", "area", "iscrowd", "type", "truncated", "occluded")
    }
    for kitti_object in objects:
        x1, y1, x2, y2 = kitti_object.box_xyxy
        try:
            # KITTI boxes may reach a pixel past the border (x2 = width + 0.5 and the like): clipped.
            box = fitter.fit(
                (x1, y1, x2 - x1, y2 - y1), width=width, height=height, where=f"{path}, line {kitti_object.line_number}"
            )
        except DataError:
            if not skip_invalid:
                raise
            skipped["bad lines"] += 1
            continue
        if box is None:
            continue
        label = label_of.get(kitti_object.type)
        column["id"].append(first_id + len(column["id"]))
        column["bbox"].append(list(box))
        column["category"].append(-1 if label is None else label)
        column["area"].append(box[2] * box[3])
        column["iscrowd"].append(label is None)
        column["type"].append(kitti_object.type)
        column["truncated"].append(kitti_object.truncated)
        column["occluded"].append(kitti_object.occluded)
    return column
