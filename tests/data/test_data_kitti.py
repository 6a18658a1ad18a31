"""The KITTI loader: schema, classes and ignore regions, splits, the generated KITTI-layout set, bad input."""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from liaf_hf import GFLConfig, GFLForObjectDetection, GFLImageProcessor
from liaf_hf.data.coco import category_names
from liaf_hf.data.collate import DetectionCollator, DetectionTransform
from liaf_hf.data.kitti import is_kitti_root, load_kitti, write_kitti_split
from liaf_hf.data.synthetic import generate_kitti_dataset
from liaf_hf.errors import DataError
from tiny import load_example, tiny_detector_flags

NO_3D = "-1 -1 -1 -1000 -1000 -1000 -10"
LABELS = {
    "000000": [
        f"Car 0.00 0 -10 10.00 5.00 40.00 30.00 {NO_3D}",
        f"Van 0.10 1 -10 60.00 4.00 90.00 28.00 {NO_3D}",
        f"DontCare -1 -1 -10 100.00 2.00 118.00 12.00 {NO_3D}",
    ],
    "000001": [
        f"Pedestrian 0.20 2 -10 5.00 2.00 15.00 30.00 {NO_3D}",
        f"Cyclist 0.00 0 -10 30.00 4.00 50.00 31.00 {NO_3D}",
    ],
    "000002": [],
    "000003": [f"Truck 0.50 0 -10 0.00 0.00 128.00 32.00 {NO_3D}"],
    "000004": [f"Car 0.00 0 -10 1.00 1.00 20.00 20.00 {NO_3D}"],
}


def write_kitti(root: Path, labels: dict[str, list[str]] = LABELS, *, splits: dict[str, list[str]] | None = None):
    image_dir, label_dir = root / "training" / "image_2", root / "training" / "label_2"
    image_dir.mkdir(parents=True)
    label_dir.mkdir(parents=True)
    for name, lines in labels.items():
        Image.new("RGB", (128, 32), (90, 90, 90)).save(image_dir / f"{name}.png")
        (label_dir / f"{name}.txt").write_text("".join(line + "\n" for line in lines))
    if splits is not None:
        (root / "ImageSets").mkdir()
        for split, names in splits.items():
            (root / "ImageSets" / f"{split}.txt").write_text("".join(name + "\n" for name in names))
    return root


@pytest.fixture
def kitti(tmp_path):
    return write_kitti(
        tmp_path / "kitti", splits={"train": ["000000", "000001", "000002", "000003"], "val": ["000004"]}
    )


def test_rows_have_the_hub_schema_with_kitti_fields(kitti):
    train = load_kitti(kitti, "train")
    assert is_kitti_root(kitti)
    assert category_names(train) == ["Car", "Pedestrian", "Cyclist"]
    assert train["image_id"] == [0, 1, 2, 3]
    first = train[0]
    assert (first["width"], first["height"]) == (128, 32)
    assert first["image"].size == (128, 32)
    objects = first["objects"]
    assert objects["type"] == ["Car", "Van", "DontCare"]
    assert objects["bbox"] == [[10.0, 5.0, 30.0, 25.0], [60.0, 4.0, 30.0, 24.0], [100.0, 2.0, 18.0, 10.0]]
    # Car is a class; Van and DontCare are ignore regions (ClassLabel's -1, iscrowd).
    assert objects["category"] == [0, -1, -1]
    assert objects["iscrowd"] == [False, True, True]
    assert objects["truncated"] == pytest.approx([0.0, 0.1, -1.0])
    assert objects["occluded"] == [0, 1, -1]
    assert train[1]["objects"]["category"] == [1, 2]
    assert train[2]["objects"]["id"] == []
    ids = [object_id for row in train for object_id in row["objects"]["id"]]
    assert len(ids) == len(set(ids)) == 6
    assert load_kitti(kitti, "val")["image_id"] == [4]


def test_type_map_turns_an_ignore_region_into_a_class(kitti):
    train = load_kitti(kitti, "train", type_map={"Van": "Car", "Truck": "Car"})
    assert train[0]["objects"]["category"] == [0, 0, -1]
    assert train[0]["objects"]["iscrowd"] == [False, False, True]
    assert train[3]["objects"]["type"] == ["Truck"] and train[3]["objects"]["category"] == [0]
    with pytest.raises(ValueError, match="not one of"):
        load_kitti(kitti, "train", type_map={"Van": "Bus"})
    with pytest.raises(ValueError, match="DontCare"):
        load_kitti(kitti, "train", type_map={"DontCare": "Car"})
    only_cars = load_kitti(kitti, "train", classes=["Car"])
    assert only_cars[1]["objects"]["category"] == [-1, -1]


def test_seeded_split_is_written_and_reused(tmp_path, caplog):
    root = write_kitti(tmp_path / "kitti")
    with caplog.at_level(logging.INFO, logger="liaf_hf.data"):
        train = load_kitti(root, "train", seed=3)
    assert "wrote a seeded split" in caplog.text
    train_names = (root / "ImageSets" / "train.txt").read_text().split()
    val_names = (root / "ImageSets" / "val.txt").read_text().split()
    assert len(train_names) == 4 and len(val_names) == 1 and not set(train_names) & set(val_names)
    assert sorted(train_names + val_names) == sorted(LABELS)
    assert train["image_id"] == [int(name) for name in train_names]
    # The same seed gives the same split; the files are what later runs read.
    assert write_kitti_split(tmp_path / "again", list(LABELS), seed=3) == (train_names, val_names)
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="liaf_hf.data"):
        assert load_kitti(root, "val", seed=99)["image_id"] == [int(name) for name in val_names]
    assert "wrote a seeded split" not in caplog.text
    with pytest.raises(DataError, match="test.txt: split file not found"):
        load_kitti(root, "test")


def test_split_file_naming_a_missing_image(tmp_path):
    root = write_kitti(tmp_path / "kitti", splits={"train": ["000000", "000042"], "val": []})
    with pytest.raises(DataError, match=r"train.txt: 1 names have no image.*000042"):
        load_kitti(root, "train")
    assert load_kitti(root, "train", skip_invalid=True)["image_id"] == [0]


@pytest.mark.parametrize(
    ("line", "message"),
    [
        (f"Car 0.00 0 -10 10.00 5.00 40.00 30.00 {NO_3D} 0.9", "expected 15 fields, got 16"),
        ("Car 0.00 0 -10 10.00 5.00 40.00 30.00", "expected 15 fields, got 8"),
        (f"Car 0.00 zero -10 10.00 5.00 40.00 30.00 {NO_3D}", "field 3 is 'zero', not a number"),
        (f"Car 0.00 0 -10 10.00 5.00 40.00 nan {NO_3D}", "field 8 is 'nan', not a finite number"),
        (f"Car 0.00 0.5 -10 10.00 5.00 40.00 30.00 {NO_3D}", "occlusion"),
        (
            f"Car 1.50 0 -10 10.00 5.00 40.00 30.00 {NO_3D}",
            r"truncation \(field 2\) is '1.50', expected a number in 0..1",
        ),
        (f"Car -0.10 0 -10 10.00 5.00 40.00 30.00 {NO_3D}", "truncation"),
        (f"Car -1 0 -10 10.00 5.00 40.00 30.00 {NO_3D}", r"truncation .* expected a number in 0..1 in"),
        (f"Car 0.00 4 -10 10.00 5.00 40.00 30.00 {NO_3D}", r"occlusion \(field 3\) is '4', expected an integer 0-3"),
        (f"Car 0.00 -1 -10 10.00 5.00 40.00 30.00 {NO_3D}", "occlusion"),
        (f"DontCare -1 -2 -10 10.00 5.00 40.00 30.00 {NO_3D}", r"expected an integer 0-3 \(or -1 for DontCare\)"),
        (f"Car 0.00 0 -10 130.00 5.00 140.00 30.00 {NO_3D}", r"has box \[130.0, 5.0, 10.0, 25.0\] entirely outside"),
        (f"Car 0.00 0 -10 40.00 5.00 10.00 30.00 {NO_3D}", "x2 < x1"),
        (f"Bus 0.00 0 -10 10.00 5.00 40.00 30.00 {NO_3D}", "type 'Bus' is not a KITTI type"),
    ],
)
def test_bad_label_line_names_file_and_line(tmp_path, line, message):
    labels = dict(LABELS, **{"000001": [LABELS["000001"][0], line]})
    root = write_kitti(tmp_path / "kitti", labels, splits={"train": list(labels), "val": []})
    with pytest.raises(DataError, match=message) as error:
        load_kitti(root, "train")
    assert "label_2/000001.txt, line 2" in str(error.value)


def test_dontcare_regions_may_carry_real_truncation_and_occlusion(tmp_path):
    labels = {"000000": [f"DontCare 0.30 2 -10 10.00 5.00 40.00 30.00 {NO_3D}"]}
    root = write_kitti(tmp_path / "kitti", labels, splits={"train": ["000000"], "val": []})
    objects = load_kitti(root, "train")[0]["objects"]
    assert objects["truncated"] == pytest.approx([0.3]) and objects["occluded"] == [2]


def test_skip_invalid_leaves_a_box_outside_its_image_out(tmp_path, caplog):
    labels = {"000000": [LABELS["000000"][0], f"Car 0.00 0 -10 10.00 40.00 20.00 50.00 {NO_3D}"]}
    root = write_kitti(tmp_path / "kitti", labels, splits={"train": ["000000"], "val": []})
    with caplog.at_level(logging.WARNING, logger="liaf_hf.data"):
        train = load_kitti(root, "train", skip_invalid=True)
    assert train[0]["objects"]["bbox"] == [[10.0, 5.0, 30.0, 25.0]]
    assert "skipped 1 bad label lines" in caplog.text


@pytest.mark.parametrize("names", [[], ["000000"]])
def test_a_split_without_images_is_refused(tmp_path, names):
    root = write_kitti(tmp_path / "kitti", splits={"train": [], "val": names})
    if names:  # every image named is missing: nothing is left once skip_invalid leaves them out
        (root / "training" / "image_2" / "000000.png").unlink()
        (root / "training" / "label_2" / "000000.txt").unlink()
    with pytest.raises(DataError, match=r"ImageSets/(train|val).txt: split '(train|val)' has no images"):
        load_kitti(root, "val" if names else "train", skip_invalid=True)


def test_skip_invalid_leaves_bad_lines_out_and_counts_them(tmp_path, caplog):
    labels = dict(
        LABELS,
        **{"000001": [LABELS["000001"][0], "Car 1 2 3", f"Bus 0.00 0 -10 1 1 5 5 {NO_3D}", LABELS["000001"][1]]},
    )
    root = write_kitti(tmp_path / "kitti", labels, splits={"train": list(labels), "val": []})
    with caplog.at_level(logging.WARNING, logger="liaf_hf.data"):
        train = load_kitti(root, "train", skip_invalid=True)
    assert train[1]["objects"]["type"] == ["Pedestrian", "Cyclist"]
    assert "skipped 1 bad label lines and 1 objects of unknown types" in caplog.text
    # A type allowed explicitly is kept as an ignore region.
    allowed = load_kitti(root, "train", skip_invalid=True, extra_types=["Bus"])
    assert allowed[1]["objects"]["type"] == ["Pedestrian", "Bus", "Cyclist"]
    assert allowed[1]["objects"]["iscrowd"] == [False, True, False]


def test_image_without_label_and_label_without_image(tmp_path, caplog):
    root = write_kitti(tmp_path / "kitti", splits={"train": ["000000", "000001"], "val": ["000004"]})
    (root / "training" / "label_2" / "000002.txt").unlink()
    (root / "training" / "image_2" / "000003.png").unlink()
    with pytest.raises(DataError) as error:
        load_kitti(root, "train")
    message = str(error.value)
    assert "1 images have no label file" in message and "image_2/000002.png" in message
    assert "1 label files have no image" in message and "label_2/000003.txt" in message
    with caplog.at_level(logging.WARNING, logger="liaf_hf.data"):
        train = load_kitti(root, "train", skip_invalid=True)
    assert train["image_id"] == [0, 1]
    assert "skipping unpaired KITTI files" in caplog.text and "000002.png" in caplog.text


def test_missing_folders_and_unreadable_images(tmp_path):
    with pytest.raises(DataError, match="training/image_2: KITTI folder not found"):
        load_kitti(tmp_path, "train")
    root = write_kitti(tmp_path / "kitti", splits={"train": ["000000"], "val": []})
    (root / "training" / "image_2" / "000000.png").write_bytes(b"not a png")
    with pytest.raises(DataError, match="000000.png: not a readable image"):
        load_kitti(root, "train")


def test_generated_kitti_set_is_deterministic_and_loadable(tmp_path):
    first = generate_kitti_dataset(tmp_path / "a", num_train=6, num_val=2, seed=5)
    second = generate_kitti_dataset(tmp_path / "b", num_train=6, num_val=2, seed=5)
    for relative in ("training/image_2/000003.png", "training/label_2/000007.txt", "ImageSets/val.txt"):
        assert (first / relative).read_bytes() == (second / relative).read_bytes()
    # Identical settings reuse the folder; other settings refuse to overwrite it.
    assert generate_kitti_dataset(first, num_train=6, num_val=2, seed=5) == first
    with pytest.raises(FileExistsError):
        generate_kitti_dataset(first, num_train=6, num_val=2, seed=6)
    train, val = load_kitti(first, "train"), load_kitti(first, "val")
    assert (len(train), len(val)) == (6, 2)
    assert {(row["width"], row["height"]) for row in train} == {(384, 128)}
    lines = [
        line.split() for path in (first / "training" / "label_2").iterdir() for line in path.read_text().splitlines()
    ]
    assert all(len(fields) == 15 for fields in lines)
    types = {fields[0] for fields in lines}
    assert {"Car", "Pedestrian", "Cyclist", "Van"} <= types
    assert any(float(fields[1]) > 0 for fields in lines), "objects cut by the frame edge are truncated"


def test_ignore_regions_reach_the_assigner_as_neither_positive_nor_negative(kitti):
    """A Van becomes an `ignore_boxes` entry of the processed labels, and the ATSS assigner marks the
    anchors on it ignored (no positives there, and no negatives)."""
    train = load_kitti(kitti, "train", classes=["Car"])
    config = GFLConfig(
        backbone="resnet18", fpn_channels=32, head_channels=32, head_stacked_convs=1, head_norm_groups=8,
        num_fpn_levels=3, id2label={0: "Car"},
    )  # fmt: skip
    model = GFLForObjectDetection(config)
    processor = GFLImageProcessor.for_model_config(config, size={"shortest_edge": 32, "longest_edge": 128})
    example = train.with_transform(DetectionTransform(processor, train=False))[0]
    labels = example["labels"]
    assert labels["class_labels"].tolist() == [0]
    # Van (60, 4)-(90, 28) and DontCare (100, 2)-(118, 12), normalised cxcywh of the 128 x 32 image.
    expected = torch.tensor([[75 / 128, 16 / 32, 30 / 128, 24 / 32], [109 / 128, 7 / 32, 18 / 128, 10 / 32]])
    assert torch.allclose(labels["ignore_boxes"], expected)

    batch = DetectionCollator(processor)([example])
    sizes = torch.tensor([[32, 128]])
    ((_, gt_boxes, ignore_boxes),) = model.labels_in_pixels(batch["labels"], sizes)
    # Two levels: 16-px anchors every 4 px and 32-px anchors every 8 px. (One level of equal anchors all
    # inside the car would tie in IoU, where ATSS's mean + std threshold can reject them all.)
    levels = []
    for stride, size in ((4, 16), (8, 32)):
        grid = torch.meshgrid(
            torch.arange(stride / 2, 128, stride), torch.arange(stride / 2, 32, stride), indexing="xy"
        )
        centres = torch.stack(grid, -1).reshape(-1, 2)
        levels.append(torch.cat([centres - size / 2, centres + size / 2], dim=1))
    anchors = torch.cat(levels)
    assignment = model.loss_function.assigner.assign(
        anchors=anchors,
        num_anchors_per_level=[len(level) for level in levels],
        gt_boxes=gt_boxes,
        ignore_boxes=ignore_boxes,
    )

    def within(left, top, right, bottom):
        return (anchors[:, 0] >= left) & (anchors[:, 1] >= top) & (anchors[:, 2] <= right) & (anchors[:, 3] <= bottom)

    on_van = within(60, 4, 90, 28)
    assert on_van.sum() > 0
    assert assignment.ignored[on_van].all() and (assignment.gt_index[on_van] == -1).all()
    on_car = assignment.gt_index == 0
    assert on_car.sum() > 0 and not assignment.ignored[on_car].any()
    # Anchors touching neither region stay negatives.
    off_regions = within(-8, -8, 52, 40) & ~on_car
    assert off_regions.sum() > 0 and not assignment.ignored[off_regions].any()
    # The model trains on such a batch: the loss is finite.
    assert torch.isfinite(model(**batch).loss)


def test_box_past_the_image_border_is_clipped_and_empty_boxes_counted(tmp_path, caplog):
    labels = {
        "000000": [
            f"Car 0.00 0 -10 100.00 5.00 128.50 30.00 {NO_3D}",
            f"Car 0.00 0 -10 128.00 5.00 131.00 30.00 {NO_3D}",
        ]
    }
    root = write_kitti(tmp_path / "kitti", labels, splits={"train": ["000000"], "val": []})
    with caplog.at_level(logging.WARNING, logger="liaf_hf.data"):
        train = load_kitti(root, "train")
    assert train[0]["objects"]["bbox"] == [[100.0, 5.0, 28.0, 25.0]]
    assert "label_2: clipped 1 boxes partly outside their image, dropped 1 zero-area boxes" in caplog.text
    assert np.isclose(train[0]["objects"]["area"][0], 28 * 25)


KITTI_SIZES = {"backbone": "resnet18", "num_fpn_levels": 3}


def test_teacher_and_distilled_student_train_and_score_on_the_generated_kitti_set(tmp_path):
    """The examples end to end on the KITTI layout: the generated set, a teacher, a LIAF student, and both
    KITTI metrics (with COCO AP) in what each returns and writes."""
    data_dir, teacher_dir, student_dir = tmp_path / "kitti", tmp_path / "teacher", tmp_path / "student"
    common = [
        "--data_dir", str(data_dir), "--generate_synthetic", "kitti",
        "--synthetic_num_train", "6", "--synthetic_num_val", "3",
        "--shortest_edge", "48", "--longest_edge", "144", "--do_train", "--do_eval",
        "--per_device_train_batch_size", "3", "--per_device_eval_batch_size", "3",
        "--save_strategy", "no", "--report_to", "none", "--disable_tqdm", "true", "--logging_steps", "1",
    ]  # fmt: skip
    teacher_metrics = load_example("train_detector").main(
        common + tiny_detector_flags("", **KITTI_SIZES) + ["--output_dir", str(teacher_dir), "--max_steps", "3"]
    )
    student_metrics = load_example("distill").main(
        common
        + tiny_detector_flags("student_", **KITTI_SIZES)
        + ["--output_dir", str(student_dir), "--max_steps", "2"]
        + ["--teacher_model_name_or_path", str(teacher_dir), "--method", "liaf"]
    )
    assert (data_dir / "ImageSets" / "val.txt").read_text().split() == ["000006", "000007", "000008"]
    for metrics in (teacher_metrics, student_metrics):
        for key in ("VOC_mAP50", "VOC_AP50_Car", "KITTI_AP40_Car_moderate", "KITTI_mAP40_moderate", "AP"):
            assert f"eval_{key}" in metrics, key
        values = [value for key, value in metrics.items() if key.startswith(("eval_VOC", "eval_KITTI"))]
        assert all(math.isnan(value) or 0.0 <= value <= 1.0 for value in values)
    student_summary = json.loads((student_dir / "summary.json").read_text())
    assert "eval_KITTI_AP40_Pedestrian_hard" in student_summary and "teacher_VOC_mAP50" in student_summary
    assert list(GFLForObjectDetection.from_pretrained(student_dir).config.id2label.values()) == [
        "Car",
        "Pedestrian",
        "Cyclist",
    ]
