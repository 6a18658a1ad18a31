"""Hub-format detection sets: a saved DatasetDict with the Hub schema and an imagefolder with metadata.jsonl."""

from __future__ import annotations

import json
from pathlib import Path

import datasets
import pytest
from PIL import Image

from liaf_hf.data.coco import category_names
from liaf_hf.data.hub_formats import is_saved_or_imagefolder, load_hub_detection, normalise_detection_dataset
from liaf_hf.data.kitti import load_kitti
from liaf_hf.data.synthetic import generate_kitti_dataset
from liaf_hf.errors import DataError


def write_imagefolder(root: Path, rows: dict[str, list[dict]]) -> Path:
    """``rows[split]``: metadata lines; an image of 40 x 30 is written for each ``file_name``."""
    for split, lines in rows.items():
        folder = root / split
        folder.mkdir(parents=True)
        for line in lines:
            Image.new("RGB", (40, 30), (120, 60, 30)).save(folder / line["file_name"])
        (folder / "metadata.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    return root


IMAGEFOLDER_ROWS = {
    "train": [
        {"file_name": "a.png", "objects": {"bbox": [[1, 2, 10, 5], [0, 0, 4, 4]], "category": ["person", "car"]}},
        {"file_name": "b.png", "objects": {"bbox": [], "category": []}},
    ],
    "validation": [{"file_name": "c.png", "objects": {"bbox": [[5, 5, 20, 20]], "category": ["bus"]}}],
}


def test_imagefolder_with_metadata_is_normalised(tmp_path):
    root = write_imagefolder(tmp_path / "folder", IMAGEFOLDER_ROWS)
    assert is_saved_or_imagefolder(root)
    train = load_hub_detection(root, "train")
    # Names are gathered over both splits, sorted, so train and validation share one label set.
    assert category_names(train) == ["bus", "car", "person"]
    assert train.column_names == ["image", "image_id", "width", "height", "objects"]
    first = train[0]
    assert (first["width"], first["height"]) == (40, 30) and first["image"].size == (40, 30)
    assert first["objects"]["category"] == [2, 1]
    assert first["objects"]["bbox"] == [[1.0, 2.0, 10.0, 5.0], [0.0, 0.0, 4.0, 4.0]]
    assert first["objects"]["area"] == [50.0, 16.0] and first["objects"]["iscrowd"] == [False, False]
    assert train["image_id"] == [0, 1] and train[1]["objects"]["id"] == []
    validation = load_hub_detection(root, "validation")
    assert category_names(validation) == category_names(train) and validation[0]["objects"]["category"] == [0]
    with pytest.raises(DataError, match=r"no split 'val'; the splits are \['train', 'validation'\]"):
        load_hub_detection(root, "val")


def test_imagefolder_with_corner_boxes(tmp_path):
    rows = {"train": [{"file_name": "a.png", "objects": {"bbox": [[1, 2, 11, 7]], "category": ["car"]}}]}
    root = write_imagefolder(tmp_path / "folder", rows)
    assert load_hub_detection(root, "train", bbox_format="xyxy")[0]["objects"]["bbox"] == [[1.0, 2.0, 10.0, 5.0]]
    with pytest.raises(DataError, match=r"row 0 \(image_id 0\) object 0: 'bbox' = \[11.0, 7.0, 1.0, 2.0\]"):
        normalise_detection_dataset(
            datasets.Dataset.from_dict(
                {
                    "image": [str(root / "train" / "a.png")],
                    "objects": [{"bbox": [[11.0, 7.0, 1.0, 2.0]], "category": [0]}],
                },
                features=datasets.Features(
                    {
                        "image": datasets.Image(),
                        "objects": {
                            "bbox": datasets.List(datasets.List(datasets.Value("float32"))),
                            "category": datasets.List(datasets.ClassLabel(names=["car"])),
                        },
                    }
                ),
            ),
            bbox_format="xyxy",
        )


def hub_schema_dict(tmp_path: Path) -> datasets.DatasetDict:
    """A small set with exactly the columns of cppe-5 (image_id, image, width, height, objects with id, area,
    bbox, category)."""
    features = datasets.Features(
        {
            "image_id": datasets.Value("int64"),
            "image": datasets.Image(),
            "width": datasets.Value("int32"),
            "height": datasets.Value("int32"),
            "objects": datasets.Sequence(
                {
                    "id": datasets.Value("int64"),
                    "area": datasets.Value("int64"),
                    "bbox": datasets.Sequence(datasets.Value("float32"), length=4),
                    "category": datasets.ClassLabel(names=["Coverall", "Face_Shield", "Gloves", "Goggles", "Mask"]),
                }
            ),
        }
    )
    image = tmp_path / "image.png"
    Image.new("RGB", (64, 48)).save(image)
    split = {
        "image_id": [15, 16],
        "image": [str(image), str(image)],
        "width": [64, 64],
        "height": [48, 48],
        "objects": [
            {"id": [114, 115], "area": [100, 40], "bbox": [[1, 1, 10, 10], [20, 20, 8, 5]], "category": [4, 2]},
            {"id": [], "area": [], "bbox": [], "category": []},
        ],
    }
    return datasets.DatasetDict(
        {
            "train": datasets.Dataset.from_dict(split, features=features),
            "test": datasets.Dataset.from_dict(split, features=features),
        }
    )


def test_saved_dataset_dict_with_the_hub_schema(tmp_path):
    hub_schema_dict(tmp_path).save_to_disk(tmp_path / "saved")
    assert is_saved_or_imagefolder(tmp_path / "saved")
    train = load_hub_detection(tmp_path / "saved", "train")
    assert category_names(train) == ["Coverall", "Face_Shield", "Gloves", "Goggles", "Mask"]
    assert train["image_id"] == [15, 16]
    objects = train[0]["objects"]
    assert objects["id"] == [114, 115] and objects["category"] == [4, 2]
    assert objects["area"] == [100.0, 40.0] and objects["iscrowd"] == [False, False]
    assert train[0]["image"].size == (64, 48)
    # A single saved Dataset has no splits to choose from.
    hub_schema_dict(tmp_path)["train"].save_to_disk(tmp_path / "single")
    with pytest.raises(DataError, match="one saved Dataset, not splits"):
        load_hub_detection(tmp_path / "single", "train")


def test_kitti_rows_saved_to_disk_keep_their_fields(tmp_path):
    root = generate_kitti_dataset(tmp_path / "kitti", num_train=3, num_val=1, seed=0)
    datasets.DatasetDict({"train": load_kitti(root, "train"), "val": load_kitti(root, "val")}).save_to_disk(
        tmp_path / "saved"
    )
    reloaded = load_hub_detection(tmp_path / "saved", "train")
    original = load_kitti(root, "train")
    assert reloaded.features == original.features
    assert reloaded[1]["objects"] == original[1]["objects"]


@pytest.mark.parametrize(
    ("rows", "message"),
    [
        ({"train": [{"file_name": "a.png", "labels": [1]}]}, r"train/metadata.jsonl, line 1: no 'objects'"),
        (
            {"train": [{"file_name": "a.png", "objects": {"boxes": [[1, 1, 2, 2]], "category": ["car"]}}]},
            "'objects' has no 'bbox' field",
        ),
        (
            {"train": [{"file_name": "a.png", "objects": {"bbox": [[1, 1, 2]], "category": ["car"]}}]},
            r"row 0 \(image_id 0\) object 0: 'bbox' = \[1, 1, 2\], expected 4 finite numbers",
        ),
        (
            {"train": [{"file_name": "a.png", "objects": {"bbox": [[1, 1, -2, 2]], "category": ["car"]}}]},
            "negative width or height",
        ),
        (
            {"train": [{"file_name": "a.png", "objects": {"bbox": [[1, 1, 2, 2]], "category": ["car", "bus"]}}]},
            "different lengths",
        ),
    ],
)
def test_bad_rows_name_the_field(tmp_path, rows, message):
    root = write_imagefolder(tmp_path / "folder", rows)
    with pytest.raises(DataError, match=message):
        load_hub_detection(root, "train")


def test_unknown_category_and_folders_that_are_no_dataset(tmp_path):
    rows = {"train": [{"file_name": "a.png", "objects": {"bbox": [[1, 1, 2, 2]], "category": ["car"]}}]}
    root = write_imagefolder(tmp_path / "folder", rows)
    with pytest.raises(DataError, match=r"object 0: 'category' = 'car' is not one of \['bus'\]"):
        load_hub_detection(root, "train", class_names=["bus"])
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="neither a saved DatasetDict"):
        load_hub_detection(tmp_path / "empty", "train")


def test_example_arguments_pick_the_format(tmp_path):
    """`--dataset_name` (an imagefolder here) and `--data_dir` (a KITTI root) both flow through
    `prepare_datasets`, which the example scripts call."""
    from transformers import HfArgumentParser, TrainingArguments

    from liaf_hf.training import DataArguments, prepare_datasets

    training_args = TrainingArguments(output_dir=str(tmp_path / "run"), report_to="none")
    parser = HfArgumentParser(DataArguments)
    folder = write_imagefolder(tmp_path / "folder", IMAGEFOLDER_ROWS)
    (hub_args,) = parser.parse_args_into_dataclasses(args=["--dataset_name", str(folder), "--eval_split", "validation"])
    train, validation = prepare_datasets(hub_args, training_args)
    assert hub_args.resolved_format == "hub" and hub_args.display_name == str(folder)
    (folder_args,) = parser.parse_args_into_dataclasses(args=["--data_dir", str(folder)])
    assert folder_args.resolved_format == "hub", "an imagefolder given as --data_dir is recognised"
    assert len(folder_args.load_split("train")) == 2
    assert category_names(train) == category_names(validation) == ["bus", "car", "person"]

    kitti_root = tmp_path / "kitti"
    (kitti_args,) = parser.parse_args_into_dataclasses(
        args=["--data_dir", str(kitti_root), "--generate_synthetic", "kitti", "--synthetic_num_train", "3"]
        + ["--synthetic_num_val", "1", "--kitti_type_map", '{"Van": "Car"}']
    )
    train, validation = prepare_datasets(kitti_args, training_args)
    assert kitti_args.resolved_format == "kitti" and (len(train), len(validation)) == (3, 1)
    vans = [c for row in train for c, t in zip(row["objects"]["category"], row["objects"]["type"]) if t == "Van"]
    assert vans and set(vans) == {0}, "Van counts as Car"

    for bad in (
        [],
        ["--data_dir", "x", "--dataset_name", "y"],
        ["--data_dir", "x", "--dataset_format", "voc"],
        ["--data_dir", "x", "--kitti_type_map", "[1]"],
    ):
        with pytest.raises(ValueError):
            parser.parse_args_into_dataclasses(args=bad)
