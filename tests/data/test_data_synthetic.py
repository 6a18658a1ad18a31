"""Tests of the generated shapes set: determinism, valid COCO, tight boxes, presets, reuse."""

from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from pycocotools.coco import COCO

from liaf_hf.data.coco import category_names, coco_category_ids, load_coco_detection
from liaf_hf.data.synthetic import (
    DIFFICULTIES,
    SceneObject,
    SyntheticSpec,
    generate_coco_dataset,
    generate_scene,
    main,
    read_instance_facts,
)

# Palette colours stay above this spread between their largest and smallest channel even after
# jitter, and the near-grey backgrounds stay well below it, whatever their noise and gradient.
_FOREGROUND_SATURATION = 80


def _foreground(image: Image.Image) -> np.ndarray:
    """(height, width) bool mask of object pixels, for scenes drawn without clutter."""
    pixels = np.asarray(image, dtype=np.int16)
    return (pixels.max(axis=2) - pixels.min(axis=2)) > _FOREGROUND_SATURATION


def _box_slices(scene_object: SceneObject) -> tuple[slice, slice]:
    x1, y1, x2, y2 = (int(value) for value in scene_object.box_xyxy)
    return slice(y1, y2), slice(x1, x2)


def _files(root: Path) -> dict[str, bytes]:
    return {str(path.relative_to(root)): path.read_bytes() for path in sorted(root.rglob("*")) if path.is_file()}


@pytest.fixture(scope="module")
def small_set(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return generate_coco_dataset(tmp_path_factory.mktemp("shapes"), num_train=12, num_val=6)


def test_same_seed_gives_identical_bytes_and_other_seed_differs(tmp_path: Path) -> None:
    first = _files(generate_coco_dataset(tmp_path / "a", num_train=5, num_val=3, seed=7))
    second = _files(generate_coco_dataset(tmp_path / "b", num_train=5, num_val=3, seed=7))
    other = _files(generate_coco_dataset(tmp_path / "c", num_train=5, num_val=3, seed=8))
    assert len(first) == 5 + 3 + 3 + 2  # images, two annotation files, the manifest, two instance facts files
    assert first == second
    for name in ("annotations/instances_train.json", "train/000000.png", "val/000000.png"):
        assert first[name] != other[name]


def test_train_and_val_differ(small_set: Path) -> None:
    train = (small_set / "train" / "000000.png").read_bytes()
    assert train != (small_set / "val" / "000000.png").read_bytes()


def test_written_json_is_valid_coco(small_set: Path) -> None:
    coco = COCO(str(small_set / "annotations" / "instances_train.json"))
    assert len(coco.getImgIds()) == 12
    assert coco.getCatIds() == list(range(1, len(SyntheticSpec().class_names) + 1))
    assert [category["name"] for category in coco.loadCats(coco.getCatIds())] == list(SyntheticSpec().class_names)
    annotations = coco.loadAnns(coco.getAnnIds())
    assert annotations
    assert all(annotation["iscrowd"] == 0 for annotation in annotations)


def test_loads_without_warnings(small_set: Path, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="liaf_hf.data"):
        train = load_coco_detection(small_set, "train")
        val = load_coco_detection(small_set, "val")
    assert caplog.records == []
    assert (train.num_rows, val.num_rows) == (12, 6)
    assert category_names(train) == list(SyntheticSpec().class_names)
    annotation_file = small_set / "annotations" / "instances_train.json"
    assert coco_category_ids(annotation_file) == list(range(1, len(SyntheticSpec().class_names) + 1))
    written = json.loads(annotation_file.read_text())["annotations"]
    assert sum(len(row["objects"]["id"]) for row in train) == len(written)


def test_separated_boxes_are_tight_around_each_object(tmp_path: Path) -> None:
    # Without clutter and occlusion, objects stand apart, so a box's pixels can be checked exactly.
    spec = dataclasses.replace(SyntheticSpec(), clutter=0, max_occlusion=0.0)
    root = generate_coco_dataset(tmp_path, spec=spec, num_train=12, num_val=2)
    content = json.loads((root / "annotations" / "instances_train.json").read_text())
    for image_record in content["images"]:
        foreground = _foreground(Image.open(root / "train" / image_record["file_name"]))
        objects = [a for a in content["annotations"] if a["image_id"] == image_record["id"]]
        covered = np.zeros_like(foreground)
        for annotation in objects:
            x, y, w, h = (int(value) for value in annotation["bbox"])
            assert 0 <= x < x + w <= spec.image_width
            assert 0 <= y < y + h <= spec.image_height
            # Unoccluded objects are at least 2 px apart, so a 1-px margin around a box holds only it.
            top, left = max(y - 1, 0), max(x - 1, 0)
            rows, columns = np.nonzero(foreground[top : y + h + 1, left : x + w + 1])
            assert (left + columns.min(), top + rows.min()) == (x, y)
            assert (left + columns.max() + 1, top + rows.max() + 1) == (x + w, y + h)
            assert annotation["area"] == foreground[y : y + h, x : x + w].sum()
            covered[y : y + h, x : x + w] = True
        assert not (foreground & ~covered).any()


@pytest.mark.parametrize("difficulty", ["easy", "medium", "hard"])
def test_occluded_boxes_are_tight_around_visible_pixels(difficulty: str) -> None:
    # Without clutter the only saturated pixels are those of labelled objects.
    spec = dataclasses.replace(SyntheticSpec.preset(difficulty), clutter=0)
    occluded = 0
    for seed in range(10):
        image, objects = generate_scene(np.random.default_rng(seed), spec)
        foreground = _foreground(image)
        covered = np.zeros_like(foreground)
        for scene_object in objects:
            rows, columns = _box_slices(scene_object)
            inside = foreground[rows, columns]
            # Tight: every edge of the box touches a visible object pixel.
            assert inside[0].any() and inside[-1].any()
            assert inside[:, 0].any() and inside[:, -1].any()
            assert scene_object.area <= inside.size
            assert scene_object.visible_fraction >= 1 - spec.max_occlusion
            occluded += scene_object.visible_fraction < 1
            covered[rows, columns] = True
        assert not (foreground & ~covered).any()
        # Visible pixels of different objects are disjoint and holes show background.
        assert sum(scene_object.area for scene_object in objects) == foreground.sum()
    assert occluded > 0  # the seeds above do exercise occlusion


@pytest.mark.parametrize(
    ("difficulty", "size", "num_classes"), [("easy", 128, 6), ("medium", 256, 8), ("hard", 384, 12)]
)
def test_presets(difficulty: str, size: int, num_classes: int) -> None:
    spec = SyntheticSpec.preset(difficulty)
    assert len(spec.class_names) == num_classes
    image, objects = generate_scene(np.random.default_rng(0), spec)
    assert image.size == (size, size)
    assert image.mode == "RGB"
    assert 1 <= len(objects) <= spec.max_objects
    assert all(0 <= scene_object.category < num_classes for scene_object in objects)


def test_default_spec_is_easy_and_presets_are_listed() -> None:
    assert SyntheticSpec() == SyntheticSpec.preset("easy")
    assert DIFFICULTIES == (
        "easy", "medium", "hard", "varied", "varied-harsh", "varied-coarse", "varied-partial", "varied-misnamed"
    )  # fmt: skip
    with pytest.raises(ValueError, match="unknown difficulty"):
        SyntheticSpec.preset("extreme")


def test_spec_rejects_bad_settings() -> None:
    with pytest.raises(ValueError, match="unknown shapes"):
        SyntheticSpec(class_names=("circle", "blob"))
    with pytest.raises(ValueError, match="max_occlusion"):
        SyntheticSpec(max_occlusion=1.0)
    with pytest.raises(ValueError, match="min_size"):
        SyntheticSpec(min_size=50, max_size=40)


def test_same_generator_state_gives_same_scene() -> None:
    spec = SyntheticSpec.preset("medium")
    first_image, first_objects = generate_scene(np.random.default_rng(3), spec)
    second_image, second_objects = generate_scene(np.random.default_rng(3), spec)
    assert first_objects == second_objects
    assert first_image.tobytes() == second_image.tobytes()


def test_identical_settings_reuse_the_folder(tmp_path: Path) -> None:
    root = generate_coco_dataset(tmp_path / "set", num_train=3, num_val=2)
    image = root / "train" / "000000.png"
    image.write_bytes(b"marker")  # a regenerated set would replace this
    assert generate_coco_dataset(root, num_train=3, num_val=2) == root
    assert generate_coco_dataset(root, num_train=3, num_val=2, overwrite=True) == root
    assert image.read_bytes() == b"marker"


def test_different_settings_need_overwrite(tmp_path: Path) -> None:
    root = generate_coco_dataset(tmp_path / "set", num_train=3, num_val=2)
    (root / "notes.txt").write_text("keep me")
    with pytest.raises(FileExistsError, match="seed"):
        generate_coco_dataset(root, num_train=3, num_val=2, seed=1)
    generate_coco_dataset(root, num_train=2, num_val=2, seed=1, overwrite=True)
    assert sorted(path.name for path in (root / "train").iterdir()) == ["000000.png", "000001.png"]
    assert json.loads((root / "synthetic_spec.json").read_text())["seed"] == 1
    assert (root / "notes.txt").read_text() == "keep me"


def test_foreign_folder_is_not_overwritten(tmp_path: Path) -> None:
    (tmp_path / "data.txt").write_text("not a synthetic set")
    with pytest.raises(FileExistsError, match="overwrite=True"):
        generate_coco_dataset(tmp_path, num_train=1, num_val=1)


def test_command_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    output = tmp_path / "cli"
    arguments = ["--output", str(output), "--difficulty", "medium", "--num-train", "2"]
    assert main([*arguments, "--num-val", "1", "--seed", "4"]) == 0
    assert capsys.readouterr().out.strip() == str(output)
    manifest = json.loads((output / "synthetic_spec.json").read_text())
    assert (manifest["num_train"], manifest["num_val"], manifest["seed"]) == (2, 1, 4)
    assert manifest["spec"]["image_width"] == 256
    with Image.open(output / "val" / "000000.png") as image:
        assert image.size == (256, 256)


# ------------------------------------------------------------------------------------- the varied preset


@pytest.fixture(scope="module")
def varied_set(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return generate_coco_dataset(tmp_path_factory.mktemp("varied"), difficulty="varied", num_train=300, num_val=40)


def _annotations(root: Path, split: str) -> list[dict]:
    return json.loads((root / "annotations" / f"instances_{split}.json").read_text())["annotations"]


def test_varied_instances_differ_as_the_docstring_says(varied_set: Path) -> None:
    spec = SyntheticSpec.preset("varied")
    annotations = _annotations(varied_set, "train")
    facts = [record for records in read_instance_facts(varied_set, "train").values() for record in records]
    assert [record["annotation_id"] for record in facts] == [annotation["id"] for annotation in annotations]
    # Long tail: the commonest class (the first) at least 10 times as frequent as the rarest (the last).
    counts = np.bincount([record["clean_category_id"] for record in facts], minlength=7)[1:]
    assert counts[0] >= 10 * counts[-1] > 0 and counts.argmax() == 0
    sizes = [record["size"] for record in facts]
    assert max(sizes) >= 10 * min(sizes)
    per_image = np.bincount([annotation["image_id"] for annotation in annotations])[1:]
    assert (per_image > spec.max_objects).mean() > 0.1 and (per_image <= 2).mean() > 0.1  # crowds beside sparse
    assert np.mean([record["truncation"] > 0 for record in facts]) > 0.1
    assert np.mean([record["visible_fraction"] < 0.9 for record in facts]) > 0.03
    faint = [record["contrast"] for record in facts if record["contrast"] < 1]
    assert 0.15 < len(faint) / len(facts) < 0.35
    assert all(spec.faint_contrast[0] <= contrast <= spec.faint_contrast[1] for contrast in faint)
    # About 10% wrong annotations, both kinds, recorded against what was drawn; the validation split is clean.
    kinds = [record["noise"] for record in facts]
    assert 0.07 < (len(kinds) - kinds.count("none")) / len(kinds) < 0.13
    assert kinds.count("box") > 0 and kinds.count("class") > 0
    for annotation, record in zip(annotations, facts):
        moved = not np.allclose(annotation["bbox"], record["clean_bbox"])
        relabelled = annotation["category_id"] != record["clean_category_id"]
        assert (moved, relabelled) == (record["noise"] == "box", record["noise"] == "class")
    val_facts = [record for records in read_instance_facts(varied_set, "val").values() for record in records]
    assert {record["noise"] for record in val_facts} == {"none"}


def test_the_harsh_variant_has_more_crowds_fainter_objects_and_more_wrong_annotations(tmp_path: Path) -> None:
    harsh = generate_coco_dataset(tmp_path / "harsh", difficulty="varied-harsh", num_train=200, num_val=5)
    facts = [record for records in read_instance_facts(harsh, "train").values() for record in records]
    wrong = sum(record["noise"] != "none" for record in facts) / len(facts)
    assert 0.25 < wrong < 0.35
    faint = [record["contrast"] for record in facts if record["contrast"] < 1]
    assert 0.4 < len(faint) / len(facts) < 0.6 and max(faint) <= 0.3


def test_annotation_noise_changes_labels_only(tmp_path: Path) -> None:
    spec = SyntheticSpec.preset("varied")
    noisy = generate_coco_dataset(tmp_path / "noisy", spec=spec, num_train=20, num_val=5)
    clean = generate_coco_dataset(
        tmp_path / "clean", spec=dataclasses.replace(spec, annotation_noise=0.0), num_train=20, num_val=5
    )
    assert {k: v for k, v in _files(noisy).items() if k.endswith(".png")} == {
        k: v for k, v in _files(clean).items() if k.endswith(".png")
    }
    assert _annotations(noisy, "val") == _annotations(clean, "val")
    clean_boxes = [annotation["bbox"] for annotation in _annotations(clean, "train")]
    facts = [record for records in read_instance_facts(noisy, "train").values() for record in records]
    assert [record["clean_bbox"] for record in facts] == clean_boxes


def _varied_beside(tmp_path: Path, difficulty: str) -> tuple[Path, Path]:
    """`varied` and another preset of its scenes, generated side by side; asserts that the two hold the same
    images and the same validation split (scored on every class)."""
    fine = generate_coco_dataset(tmp_path / "fine", difficulty="varied", num_train=30, num_val=5)
    other = generate_coco_dataset(tmp_path / difficulty, difficulty=difficulty, num_train=30, num_val=5)
    assert {k: v for k, v in _files(fine).items() if k.endswith(".png")} == {
        k: v for k, v in _files(other).items() if k.endswith(".png")
    }
    assert _annotations(fine, "val") == _annotations(other, "val")
    return fine, other


@pytest.mark.parametrize(
    ("difficulty", "renamed"),
    [
        ("varied-coarse", {("ring", "circle"), ("square_hole", "square"), ("triangle_down", "triangle_up")}),
        ("varied-misnamed", {("ring", "square"), ("square_hole", "triangle_up"), ("triangle_down", "circle")}),
    ],
)
def test_the_renaming_variants_relabel_the_rare_classes_of_the_same_scenes(
    tmp_path: Path, difficulty: str, renamed: set[tuple[str, str]]
) -> None:
    fine, relabelled = _varied_beside(tmp_path, difficulty)
    names = SyntheticSpec.preset("varied").class_names
    written = {
        (names[a["category_id"] - 1], names[b["category_id"] - 1])
        for a, b in zip(_annotations(fine, "train"), _annotations(relabelled, "train"), strict=True)
        if a != b
    }
    assert written == renamed
    facts = [record for records in read_instance_facts(relabelled, "train").values() for record in records]
    merged = [record["merged"] for record in facts]
    assert merged == [names[a["category_id"] - 1] in ("ring", "square_hole", "triangle_down")
                      for a in _annotations(fine, "train")]  # fmt: skip


def test_the_partial_variant_leaves_the_rare_classes_unannotated_in_the_same_scenes(tmp_path: Path) -> None:
    fine, partial = _varied_beside(tmp_path, "varied-partial")
    names = SyntheticSpec.preset("varied").class_names
    rare = {names.index(name) + 1 for name in ("ring", "square_hole", "triangle_down")}
    fine_records = [record for records in read_instance_facts(fine, "train").values() for record in records]
    # varied's annotations of the common classes, noise and all, kept as they were; none of a rare object or
    # labelled with a rare class.
    expected = [
        {key: value for key, value in annotation.items() if key != "id"}
        for annotation, record in zip(_annotations(fine, "train"), fine_records, strict=True)
        if annotation["category_id"] not in rare and record["clean_category_id"] not in rare
    ]
    written = [{key: value for key, value in a.items() if key != "id"} for a in _annotations(partial, "train")]
    assert written == expected
    assert 0 < len(written) < len(fine_records)
    assert {a["category_id"] for a in written} == set(range(1, len(names) + 1)) - rare
    partial_records = [record for records in read_instance_facts(partial, "train").values() for record in records]
    assert len(partial_records) == len(written)


def test_unlabelled_classes_must_be_known_distinct_leave_a_class_and_not_be_merged() -> None:
    varied = SyntheticSpec.preset("varied")
    with pytest.raises(ValueError, match=r"unlabelled_classes: \['cat'\] not among class_names"):
        dataclasses.replace(varied, unlabelled_classes=("cat",))
    with pytest.raises(ValueError, match="unlabelled_classes has duplicates"):
        dataclasses.replace(varied, unlabelled_classes=("ring", "ring"))
    with pytest.raises(ValueError, match="would leave no class annotated"):
        dataclasses.replace(varied, unlabelled_classes=varied.class_names)
    with pytest.raises(ValueError, match=r"\['ring'\] is both in merged_classes and in unlabelled_classes"):
        dataclasses.replace(varied, merged_classes=(("ring", "circle"),), unlabelled_classes=("ring",))


def test_the_loaders_do_not_read_the_instance_facts(varied_set: Path) -> None:
    loaded = load_coco_detection(varied_set, "train")
    annotations = _annotations(varied_set, "train")
    assert sum(len(objects["bbox"]) for objects in loaded["objects"]) == len(annotations)
    assert "noise" not in str(loaded.features)


@pytest.mark.parametrize(
    ("knob", "value"),
    [
        ("annotation_noise", 1.5),
        ("annotation_noise", -0.1),
        ("class_frequency_ratio", 0.5),
        ("crowded_fraction", 2.0),
        ("max_truncation", 1.0),
        ("faint_fraction", -1.0),
        ("faint_contrast", (0.5, 0.2)),
        ("noise_box_shift", 3.0),
    ],
)
def test_varied_knobs_reject_bad_values_by_name(knob: str, value: object) -> None:
    with pytest.raises(ValueError, match=knob):
        dataclasses.replace(SyntheticSpec.preset("varied"), **{knob: value})


def test_merged_classes_must_name_two_of_the_classes() -> None:
    varied = SyntheticSpec.preset("varied")
    with pytest.raises(ValueError, match=r"merged_classes: \['cat'\] not among class_names"):
        dataclasses.replace(varied, merged_classes=(("cat", "circle"),))
    with pytest.raises(ValueError, match="merged_classes: each entry must be a"):
        dataclasses.replace(varied, merged_classes=(("circle", "circle"),))


def test_sizes_that_do_not_fit_the_image_and_crowds_smaller_than_sparse_images_are_refused() -> None:
    with pytest.raises(ValueError, match="max_size"):
        dataclasses.replace(SyntheticSpec.preset("varied"), max_size=200)
    with pytest.raises(ValueError, match="crowded_max_objects"):
        dataclasses.replace(SyntheticSpec.preset("varied"), crowded_max_objects=3)
