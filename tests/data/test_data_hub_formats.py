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

    from liaf_hf.cli import DataArguments, prepare_datasets

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


def one_row(objects, **fields) -> dict[str, list[dict]]:
    return {"train": [{"file_name": "a.png", "objects": objects, **fields}]}


@pytest.mark.parametrize(
    ("iscrowd", "expected"),
    [
        (["0", "1"], [False, True]),
        (["false", "True"], [False, True]),
        ([0, 1], [False, True]),
        ([False, True], [False, True]),
    ],
)
def test_iscrowd_strings_numbers_and_bools_are_parsed(tmp_path, iscrowd, expected):
    objects = {"bbox": [[1, 1, 5, 5], [2, 2, 5, 5]], "category": ["car", "car"], "iscrowd": iscrowd}
    root = write_imagefolder(tmp_path / "folder", one_row(objects))
    dataset = load_hub_detection(root, "train")
    assert dataset[0]["objects"]["iscrowd"] == expected
    # What the Trainer's transform hands the processor: only the crowd becomes an ignore region.
    from liaf_hf.data.collate import coco_annotation

    assert [obj["iscrowd"] for obj in coco_annotation(0, dataset[0]["objects"])["annotations"]] == [0, 1]


def test_iscrowd_that_is_no_flag_is_refused_naming_the_row(tmp_path):
    objects = {"bbox": [[1, 1, 5, 5]], "category": ["car"], "iscrowd": ["maybe"]}
    root = write_imagefolder(tmp_path / "folder", one_row(objects))
    with pytest.raises(DataError, match=r"row 0 \(image_id 0\) object 0 has 'iscrowd' = 'maybe', expected 0 or 1"):
        load_hub_detection(root, "train")
    from liaf_hf.data.collate import coco_annotation

    with pytest.raises(DataError, match=r"image id 7 object 0 has 'iscrowd' = '2'"):
        coco_annotation(7, {"bbox": [[1, 1, 2, 2]], "category": [0], "iscrowd": ["2"]})


def test_boxes_follow_the_coco_rules(tmp_path, caplog):
    """Partly outside: clipped; zero width or height: dropped; both counted in one warning (images 40 x 30)."""
    objects = {"bbox": [[-2, 3, 10, 5], [35, 25, 10, 10], [5, 5, 0, 3], [40, 5, 3, 3], [1, 1, 2, 2]]}
    objects["category"] = ["car"] * 5
    root = write_imagefolder(tmp_path / "folder", one_row(objects))
    with caplog.at_level("WARNING", logger="liaf_hf.data"):
        row = load_hub_detection(root, "train")[0]
    assert row["objects"]["bbox"] == [[0.0, 3.0, 8.0, 5.0], [35.0, 25.0, 5.0, 5.0], [1.0, 1.0, 2.0, 2.0]]
    assert row["objects"]["area"] == [40.0, 25.0, 4.0]
    assert row["objects"]["id"] == [1, 2, 3]
    assert "[train]: clipped 2 boxes partly outside their image, dropped 2 zero-area boxes" in caplog.text
    outside = {"bbox": [[41, 2, 3, 3]], "category": ["car"]}
    write_imagefolder(tmp_path / "outside", one_row(outside))
    with pytest.raises(
        DataError, match=r"row 0 \(image_id 0\) object 0 has box \[41.0, 2.0, 3.0, 3.0\] entirely outside"
    ):
        load_hub_detection(tmp_path / "outside", "train")


def test_a_malformed_metadata_line_names_the_file_and_the_line(tmp_path):
    root = write_imagefolder(tmp_path / "folder", IMAGEFOLDER_ROWS)
    metadata = root / "train" / "metadata.jsonl"
    metadata.write_text(metadata.read_text() + '{"file_name": "a.png", "objects": \n')
    with pytest.raises(DataError, match=r"train/metadata.jsonl, line 3: not valid JSON"):
        load_hub_detection(root, "train")


def test_metadata_that_only_pyarrow_refuses_still_names_the_file(tmp_path):
    """A category that is a name on one line and a number on another is valid JSON, refused by pyarrow."""
    rows = {
        "train": [
            {"file_name": "a.png", "objects": {"bbox": [[1, 1, 2, 2]], "category": ["car"]}},
            {"file_name": "b.png", "objects": {"bbox": [[1, 1, 2, 2]], "category": [3]}},
        ]
    }
    root = write_imagefolder(tmp_path / "folder", rows)
    with pytest.raises(DataError, match=r"train/metadata.jsonl: datasets cannot read the metadata: ArrowInvalid"):
        load_hub_detection(root, "train")


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ({"file_name": "../a.png", "objects": {"bbox": [], "category": []}}, r"'file_name' = '../a.png' is outside"),
        ({"file_name": "/etc/hostname", "objects": {"bbox": [], "category": []}}, "is outside"),
        ({"file_name": "gone.png", "objects": {"bbox": [], "category": []}}, "no such file"),
        ({"objects": {"bbox": [], "category": []}}, "'file_name' = None"),
        ({"file_name": "b.png", "objects": None}, "no 'objects'"),
        ({"file_name": "b.png", "objects": {"bbox": [[1, 1, 2, 2]], "category": [float("nan")]}}, "NaN"),
    ],
)
def test_bad_metadata_lines_are_refused_naming_file_and_line(tmp_path, line, message):
    root = write_imagefolder(tmp_path / "folder", IMAGEFOLDER_ROWS)
    metadata = root / "train" / "metadata.jsonl"
    metadata.write_text(metadata.read_text() + json.dumps(line) + "\n")
    with pytest.raises(DataError, match=message) as error:
        load_hub_detection(root, "train")
    assert f"{metadata}, line 3: " in str(error.value)


def saved_rows(tmp_path: Path, objects: list, *, width: int = 40, height: int = 30) -> Path:
    """A saved DatasetDict of one split whose rows hold `objects` (one row each) for a 40 x 30 image."""
    tmp_path.mkdir(exist_ok=True)
    image = tmp_path / "image.png"
    Image.new("RGB", (40, 30)).save(image)
    features = datasets.Features(
        {
            "image": datasets.Image(),
            "width": datasets.Value("int32"),
            "height": datasets.Value("int32"),
            "objects": {
                "bbox": datasets.List(datasets.List(datasets.Value("float32"))),
                "category": datasets.List(datasets.ClassLabel(names=["car"])),
            },
        }
    )
    rows = {"image": [str(image)] * len(objects), "width": [width] * len(objects), "height": [height] * len(objects)}
    split = datasets.Dataset.from_dict({**rows, "objects": objects}, features=features)
    datasets.DatasetDict({"train": split}).save_to_disk(tmp_path / "saved")
    return tmp_path / "saved"


def test_a_row_without_objects_is_refused_naming_the_row(tmp_path):
    saved = saved_rows(tmp_path, [{"bbox": [[1, 1, 2, 2]], "category": [0]}, None])
    with pytest.raises(DataError, match=r"saved \[train\]: row 1 \(image_id 1\): no 'objects'"):
        load_hub_detection(saved, "train")


def test_a_row_size_that_is_not_the_image_size_is_refused(tmp_path):
    saved = saved_rows(tmp_path, [{"bbox": [[1, 1, 2, 2]], "category": [0]}], width=30, height=40)
    with pytest.raises(DataError, match=r"row 0 \(image_id 0\): the image .*image.png is 40x30, the annotation says"):
        load_hub_detection(saved, "train")
    assert len(load_hub_detection(saved, "train", check_image_sizes=False)) == 1


def test_a_row_size_that_is_the_stored_size_of_a_rotated_jpeg_is_refused(tmp_path):
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.new("RGB", (40, 30)).save(tmp_path / "photo.jpg", exif=exif)
    saved = saved_rows(tmp_path, [{"bbox": [[1, 1, 2, 2]], "category": [0]}])
    split = datasets.load_from_disk(str(saved))["train"].cast_column("image", datasets.Image(decode=False))
    split = split.map(lambda row: {"image": {"path": str(tmp_path / "photo.jpg"), "bytes": None}})
    datasets.DatasetDict({"train": split}).save_to_disk(tmp_path / "rotated")
    with pytest.raises(DataError) as error:
        load_hub_detection(tmp_path / "rotated", "train")
    message = str(error.value)
    assert "photo.jpg" in message and "row 0" in message and "Orientation=6" in message and "stored size" in message


def test_a_set_without_rows_or_categories_is_refused(tmp_path):
    root = write_imagefolder(
        tmp_path / "folder", {"train": [{"file_name": "a.png", "objects": {"bbox": [], "category": []}}]}
    )
    with pytest.raises(DataError, match=r"folder \[train\]: no categories"):
        load_hub_detection(root, "train")
    (tmp_path / "empty" / "train").mkdir(parents=True)
    (tmp_path / "empty" / "train" / "metadata.jsonl").write_text("\n")
    with pytest.raises(DataError, match=r"train/metadata.jsonl: no rows"):
        load_hub_detection(tmp_path / "empty", "train")
    saved = saved_rows(tmp_path, [])
    with pytest.raises(DataError, match=r"saved: the splits \['train'\] have no rows"):
        load_hub_detection(saved, "train")
    rows = datasets.load_from_disk(str(saved_rows(tmp_path / "one", [{"bbox": [], "category": []}])))["train"]
    with pytest.raises(DataError, match=r"empty set: no rows"):
        normalise_detection_dataset(rows.select([]), source="empty set")
