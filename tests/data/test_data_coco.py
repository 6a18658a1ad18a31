"""Tests of the COCO-layout loader: schema, label mapping, clipping, errors on bad input."""

from __future__ import annotations

import copy
import json
import logging
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import datasets
import pytest
from PIL import Image

from liaf_hf.data.coco import (
    category_names,
    coco_category_ids,
    label_maps,
    load_coco_detection,
)
from liaf_hf.errors import DataError

ANNOTATION_NAME = "instances_train.json"


def _valid_content() -> dict[str, Any]:
    """Three images (one without annotations) and non-contiguous, unsorted category ids."""
    return {
        "images": [
            {"id": 10, "file_name": "a.png", "width": 40, "height": 30},
            {"id": 11, "file_name": "b.png", "width": 20, "height": 20},
            {"id": 12, "file_name": "c.png", "width": 32, "height": 16},
        ],
        "annotations": [
            {
                "id": 100,
                "image_id": 10,
                "category_id": 42,
                "bbox": [1, 2, 10, 5],
                "area": 40.5,
                "iscrowd": 0,
            },
            {"id": 101, "image_id": 10, "category_id": 3, "bbox": [5.5, 6, 4, 4]},
            {
                "id": 102,
                "image_id": 11,
                "category_id": 7,
                "bbox": [0, 0, 20, 20],
                "area": 400,
                "iscrowd": 1,
            },
        ],
        "categories": [
            {"id": 42, "name": "truck"},
            {"id": 3, "name": "car"},
            {"id": 7, "name": "person"},
        ],
    }


def _write_set(root: Path, content: dict[str, Any]) -> Path:
    """Write ``content`` as ``root/annotations/instances_train.json`` and blank images for it."""
    (root / "annotations").mkdir(parents=True)
    (root / "train").mkdir()
    for image in content["images"]:
        Image.new("RGB", (image["width"], image["height"])).save(root / "train" / image["file_name"])
    (root / "annotations" / ANNOTATION_NAME).write_text(json.dumps(content), encoding="utf-8")
    return root


def _write_mutated(root: Path, mutate: Callable[[dict[str, Any]], None]) -> Path:
    """Images from the valid set, JSON from the valid set after ``mutate``."""
    _write_set(root, _valid_content())
    content = _valid_content()
    mutate(content)
    (root / "annotations" / ANNOTATION_NAME).write_text(json.dumps(content), encoding="utf-8")
    return root


def _annotation(content: dict[str, Any], annotation_id: int) -> dict[str, Any]:
    return next(record for record in content["annotations"] if record["id"] == annotation_id)


def test_schema_counts_and_category_mapping(tmp_path: Path) -> None:
    root = _write_set(tmp_path / "set", _valid_content())
    dataset = load_coco_detection(root, "train")

    assert dataset.num_rows == 3
    assert dataset.features["image"] == datasets.Image()
    assert dataset.features["image_id"] == datasets.Value("int64")
    assert dataset.features["width"] == datasets.Value("int32")
    objects = dataset.features["objects"]
    assert objects["bbox"].feature == datasets.Sequence(datasets.Value("float32"), length=4)
    assert objects["iscrowd"].feature == datasets.Value("bool")
    # Categories sorted by COCO id: 3 -> 0, 7 -> 1, 42 -> 2.
    assert objects["category"].feature.names == ["car", "person", "truck"]
    assert category_names(dataset) == ["car", "person", "truck"]
    assert label_maps(dataset) == (
        {0: "car", 1: "person", 2: "truck"},
        {"car": 0, "person": 1, "truck": 2},
    )
    coco_ids = coco_category_ids(root / "annotations" / ANNOTATION_NAME)
    assert coco_ids == [3, 7, 42]

    rows = {row["image_id"]: row for row in dataset}
    assert set(rows) == {10, 11, 12}
    first = rows[10]
    assert (first["width"], first["height"]) == (40, 30)
    assert first["image"].size == (40, 30)
    assert first["objects"]["id"] == [100, 101]
    assert first["objects"]["category"] == [2, 0]
    assert [coco_ids[label] for label in first["objects"]["category"]] == [42, 3]
    assert first["objects"]["bbox"] == [[1.0, 2.0, 10.0, 5.0], [5.5, 6.0, 4.0, 4.0]]
    assert first["objects"]["area"] == [40.5, 16.0]  # the second has no area: w * h
    assert first["objects"]["iscrowd"] == [False, False]
    assert rows[11]["objects"]["iscrowd"] == [True]
    assert rows[12]["objects"]["id"] == []
    total_objects = sum(len(row["objects"]["id"]) for row in dataset)
    assert total_objects == len(_valid_content()["annotations"])


def test_images_are_stored_as_paths(tmp_path: Path) -> None:
    root = _write_set(tmp_path / "set", _valid_content())
    undecoded = load_coco_detection(root).cast_column("image", datasets.Image(decode=False))
    stored = undecoded[0]["image"]
    assert stored["bytes"] is None
    assert Path(stored["path"]) == (root / "train" / "a.png").absolute()


def test_explicit_files_and_argument_misuse(tmp_path: Path) -> None:
    root = _write_set(tmp_path / "set", _valid_content())
    annotation_file = root / "annotations" / ANNOTATION_NAME
    dataset = load_coco_detection(annotation_file=annotation_file, image_dir=root / "train")
    assert dataset.num_rows == 3
    with pytest.raises(ValueError, match="not both"):
        load_coco_detection(root, annotation_file=annotation_file)
    with pytest.raises(ValueError, match="required"):
        load_coco_detection(annotation_file=annotation_file)


def test_clipping_and_dropping_are_logged_with_counts(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    def mutate(content: dict[str, Any]) -> None:
        # Image 10 is 40x30.
        content["annotations"] += [
            {"id": 200, "image_id": 10, "category_id": 3, "bbox": [-2, 3, 10, 5]},
            {"id": 201, "image_id": 10, "category_id": 3, "bbox": [35, 25, 10, 10], "area": 7},
            {"id": 202, "image_id": 10, "category_id": 3, "bbox": [5, 5, 0, 3]},
            {"id": 203, "image_id": 10, "category_id": 3, "bbox": [40, 5, 3, 3]},
        ]

    root = _write_mutated(tmp_path / "set", mutate)
    with caplog.at_level(logging.INFO, logger="liaf_hf.data"):
        dataset = load_coco_detection(root)

    warnings = [record for record in caplog.records if record.levelno == logging.WARNING]
    assert len(warnings) == 1
    message = warnings[0].getMessage()
    assert ANNOTATION_NAME in message
    assert "clipped 2 boxes" in message
    assert "dropped 2 zero-area boxes" in message
    row = dataset[0]
    boxes = dict(zip(row["objects"]["id"], row["objects"]["bbox"], strict=True))
    areas = dict(zip(row["objects"]["id"], row["objects"]["area"], strict=True))
    assert boxes[200] == [0.0, 3.0, 8.0, 5.0]
    assert boxes[201] == [35.0, 25.0, 5.0, 5.0]
    assert areas[200] == 40.0  # missing area comes from the clipped box
    assert areas[201] == 7.0  # a given area is the mask area and stays
    assert 202 not in boxes and 203 not in boxes
    # Nothing lost silently: the info line counts what was kept.
    assert "loaded 3 images (1 without annotations) and 5 annotations" in caplog.text


def test_clean_file_logs_no_warning(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    root = _write_set(tmp_path / "set", _valid_content())
    with caplog.at_level(logging.WARNING, logger="liaf_hf.data"):
        load_coco_detection(root)
    assert caplog.records == []


def _set_field(section: str, index: int, key: str, value: Any) -> Callable[[dict], None]:
    def mutate(content: dict[str, Any]) -> None:
        content[section][index][key] = value

    return mutate


def _delete_field(section: str, index: int, key: str) -> Callable[[dict], None]:
    def mutate(content: dict[str, Any]) -> None:
        del content[section][index][key]

    return mutate


def _delete_top_level(key: str) -> Callable[[dict], None]:
    def mutate(content: dict[str, Any]) -> None:
        del content[key]

    return mutate


def _append_duplicate(section: str, index: int) -> Callable[[dict], None]:
    def mutate(content: dict[str, Any]) -> None:
        duplicate = copy.deepcopy(content[section][index])
        if section == "categories":
            duplicate["name"] = "other"
        if section == "images":
            duplicate["file_name"] = "c.png"
        content[section].append(duplicate)

    return mutate


BAD_RECORDS = [
    pytest.param(_delete_top_level("images"), ["missing top-level 'images'"], id="no-images"),
    pytest.param(_delete_top_level("annotations"), ["'annotations'"], id="no-annotations"),
    pytest.param(_delete_top_level("categories"), ["'categories'"], id="no-categories"),
    pytest.param(_delete_field("images", 1, "id"), ["images[1]", "'id'"], id="image-no-id"),
    pytest.param(_delete_field("images", 1, "file_name"), ["image id 11", "'file_name'"], id="no-file-name"),
    pytest.param(_delete_field("images", 1, "width"), ["image id 11", "'width'"], id="no-width"),
    pytest.param(_delete_field("images", 1, "height"), ["image id 11", "'height'"], id="no-height"),
    pytest.param(_set_field("images", 1, "width", 0), ["image id 11", "non-positive"], id="zero-width"),
    pytest.param(_set_field("images", 1, "height", -3), ["image id 11", "non-positive"], id="neg-height"),
    pytest.param(_append_duplicate("images", 0), ["duplicate image id 10"], id="dup-image"),
    pytest.param(_append_duplicate("categories", 1), ["duplicate category id 3"], id="dup-cat"),
    pytest.param(_set_field("categories", 0, "name", "car"), ["duplicate category names"], id="dup-name"),
    pytest.param(_append_duplicate("annotations", 1), ["duplicate annotation id 101"], id="dup-annotation"),
    pytest.param(_delete_field("annotations", 1, "id"), ["annotations[1]", "'id'"], id="annotation-no-id"),
    pytest.param(
        _delete_field("annotations", 1, "image_id"),
        ["annotation id 101", "'image_id'"],
        id="no-image-id",
    ),
    pytest.param(
        _delete_field("annotations", 1, "category_id"),
        ["annotation id 101", "'category_id'"],
        id="no-category-id",
    ),
    pytest.param(_delete_field("annotations", 1, "bbox"), ["annotation id 101", "'bbox'"], id="no-bbox"),
    pytest.param(
        _set_field("annotations", 1, "bbox", [1, 2, 3]),
        ["annotation id 101", "4 finite numbers"],
        id="bbox-3-values",
    ),
    pytest.param(
        _set_field("annotations", 1, "bbox", [1, 2, math.nan, 3]),
        ["annotation id 101", "4 finite numbers"],
        id="bbox-nan",
    ),
    pytest.param(
        _set_field("annotations", 1, "bbox", [1, "2", 3, 3]),
        ["annotation id 101", "4 finite numbers"],
        id="bbox-string",
    ),
    pytest.param(
        _set_field("annotations", 1, "bbox", [1, 2, -3, 3]),
        ["annotation id 101", "negative box width or height"],
        id="bbox-negative",
    ),
    pytest.param(
        _set_field("annotations", 1, "image_id", 99),
        ["annotation id 101", "image id 99", "not in 'images'"],
        id="unknown-image",
    ),
    pytest.param(
        _set_field("annotations", 1, "category_id", 5),
        ["annotation id 101", "category id 5", "[3, 7, 42]"],
        id="unknown-category",
    ),
    pytest.param(
        _set_field("annotations", 1, "bbox", [41, 2, 3, 3]),
        ["annotation id 101", "entirely outside", "image id 10"],
        id="box-outside",
    ),
    pytest.param(_set_field("annotations", 1, "iscrowd", 2), ["annotation id 101", "'iscrowd' = 2"], id="crowd"),
    pytest.param(
        _set_field("annotations", 1, "iscrowd", "yes"), ["annotation id 101", "'iscrowd' = 'yes'"], id="crowd-word"
    ),
    pytest.param(_set_field("annotations", 1, "area", -1.0), ["annotation id 101", "'area'"], id="area"),
]


@pytest.mark.parametrize(("mutate", "expected"), BAD_RECORDS)
def test_bad_records_name_file_and_record(tmp_path: Path, mutate: Callable[[dict], None], expected: list[str]) -> None:
    root = _write_mutated(tmp_path / "set", mutate)
    with pytest.raises(DataError) as raised:
        load_coco_detection(root)
    message = str(raised.value)
    assert ANNOTATION_NAME in message
    for fragment in expected:
        assert fragment in message


def test_missing_annotation_file(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=rf"{ANNOTATION_NAME}: annotation file not found"):
        load_coco_detection(tmp_path)


def test_invalid_json_gives_its_position(tmp_path: Path) -> None:
    root = _write_set(tmp_path / "set", _valid_content())
    (root / "annotations" / ANNOTATION_NAME).write_text('{"images": [\n  {"id": 1,,}', "utf-8")
    with pytest.raises(DataError, match=rf"{ANNOTATION_NAME}: invalid JSON at line 2, column 12"):
        load_coco_detection(root)


def test_missing_images_are_listed_with_count(tmp_path: Path) -> None:
    root = _write_set(tmp_path / "set", _valid_content())
    (root / "train" / "b.png").unlink()
    (root / "train" / "c.png").unlink()
    with pytest.raises(DataError) as raised:
        load_coco_detection(root)
    message = str(raised.value)
    assert ANNOTATION_NAME in message
    assert "2 of 3 image files are missing" in message
    assert f"{root / 'train' / 'b.png'} (image id 11)" in message
    assert "(image id 12)" in message


def test_image_size_must_match_json(tmp_path: Path) -> None:
    root = _write_set(tmp_path / "set", _valid_content())
    Image.new("RGB", (41, 30)).save(root / "train" / "a.png")
    with pytest.raises(DataError) as raised:
        load_coco_detection(root)
    message = str(raised.value)
    assert ANNOTATION_NAME in message
    assert "a.png (image id 10) is 41x30, the annotation says 40x30" in message
    assert load_coco_detection(root, check_image_sizes=False).num_rows == 3


def test_unreadable_image(tmp_path: Path) -> None:
    root = _write_set(tmp_path / "set", _valid_content())
    (root / "train" / "a.png").write_bytes(b"not an image")
    with pytest.raises(DataError, match=r"a\.png \(image id 10\): not a readable image"):
        load_coco_detection(root)


@pytest.mark.parametrize("file_name", ["../outside.png", "sub/../../outside.png", "ABSOLUTE"])
def test_file_names_outside_the_image_folder_are_refused_unless_allowed(tmp_path: Path, file_name: str) -> None:
    root = _write_set(tmp_path / "set", _valid_content())
    Image.new("RGB", (20, 20)).save(root / "outside.png")
    (root / "train" / "sub").mkdir()
    if file_name == "ABSOLUTE":
        file_name = str((root / "outside.png").absolute())
    _write_mutated(tmp_path / "mutated", _set_field("images", 1, "file_name", file_name))
    annotation_file = tmp_path / "mutated" / "annotations" / ANNOTATION_NAME
    with pytest.raises(DataError) as raised:
        load_coco_detection(annotation_file=annotation_file, image_dir=root / "train")
    message = str(raised.value)
    assert ANNOTATION_NAME in message and "image id 11" in message and repr(file_name) in message
    assert "outside the image folder" in message and "allow_outside_paths=True" in message
    dataset = load_coco_detection(annotation_file=annotation_file, image_dir=root / "train", allow_outside_paths=True)
    assert Path(dataset.cast_column("image", datasets.Image(decode=False))[1]["image"]["path"]).name == "outside.png"


def test_a_name_with_dots_that_stays_inside_is_accepted(tmp_path: Path) -> None:
    root = _write_set(tmp_path / "set", _valid_content())
    (root / "train" / "sub").mkdir()
    content = _valid_content()
    content["images"][1]["file_name"] = "sub/../b.png"
    (root / "annotations" / ANNOTATION_NAME).write_text(json.dumps(content), encoding="utf-8")
    assert load_coco_detection(root).num_rows == 3


@pytest.mark.parametrize("section", ["images", "categories"])
def test_a_set_without_images_or_categories_is_refused(tmp_path: Path, section: str) -> None:
    def mutate(content: dict[str, Any]) -> None:
        content[section] = []
        content["annotations"] = []

    root = _write_mutated(tmp_path / "set", mutate)
    with pytest.raises(DataError, match=rf"{ANNOTATION_NAME}: '{section}' is empty"):
        load_coco_detection(root)


@pytest.mark.parametrize(
    ("iscrowd", "expected"),
    [(0, False), (1, True), (True, True), (1.0, True), ("0", False), ("true", True)],
    ids=["int-0", "int-1", "bool", "float", "string-0", "string-true"],
)
def test_iscrowd_spellings(tmp_path: Path, iscrowd: Any, expected: bool) -> None:
    root = _write_mutated(tmp_path / "set", _set_field("annotations", 0, "iscrowd", iscrowd))
    assert load_coco_detection(root)[0]["objects"]["iscrowd"][0] is expected
