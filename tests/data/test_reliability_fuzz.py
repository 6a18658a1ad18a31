"""Fuzzing the loaders (COCO, Hub-format imagefolder, KITTI): every input, however malformed, either loads or
raises DataError."""

from __future__ import annotations

import json
from pathlib import Path

import datasets
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from liaf_hf.data.coco import load_coco_detection
from liaf_hf.data.hub_formats import load_hub_detection
from liaf_hf.data.kitti import load_kitti
from liaf_hf.errors import DataError

IMAGE_SIZES = {"a.png": (8, 6), "b.png": (5, 5)}

# Values of every JSON type, with the edge cases exporters produce: huge and fractional numbers, NaN and
# inf (Python's json reads them), empty and odd strings.
scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-3, max_value=12),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([0.5, 6.0, 1e308, -0.0]),
    st.text(max_size=6),
    st.sampled_from(["a.png", "b.png", "missing.png", "", ".", "a.png\x00", "x" * 300, "\ud800"]),
)
json_values = st.recursive(
    scalars,
    lambda children: st.one_of(
        st.lists(children, max_size=4), st.dictionaries(st.text(max_size=4), children, max_size=3)
    ),
    max_leaves=8,
)
small_ids = st.integers(min_value=-1, max_value=4)


def mostly(good: st.SearchStrategy) -> st.SearchStrategy:
    """`good` nine times in ten, any JSON value otherwise, so that most files get past the first checks
    and the deeper ones (boxes, references, image files) are reached."""
    return st.tuples(st.sampled_from(range(10)), good, json_values).map(lambda t: t[2] if t[0] == 9 else t[1])


def record(fields: dict[str, st.SearchStrategy]) -> st.SearchStrategy:
    """A dict of `fields` (each mostly well-typed), sometimes missing one of them or holding a stray key."""
    keys = sorted(fields)

    def build(values: dict, choice: int, extra: int, stray) -> dict:
        # Hypothesis favours the first values of sampled_from: those keep every key.
        dropped = keys[choice - 3 * len(keys)] if choice >= 3 * len(keys) else None
        kept = {key: value for key, value in values.items() if key != dropped}
        return {**kept, "extra": stray} if extra == 9 else kept

    return st.builds(
        build,
        st.fixed_dictionaries({key: mostly(strategy) for key, strategy in fields.items()}),
        st.sampled_from(range(4 * len(keys))),
        st.sampled_from(range(10)),
        json_values,
    )


numbers = st.one_of(st.integers(min_value=-10, max_value=20), st.floats(min_value=-10, max_value=20), scalars)
images = record(
    {
        "id": small_ids,
        "file_name": st.sampled_from(list(IMAGE_SIZES) + ["missing.png"]),
        "width": st.sampled_from([8, 5, 0, -1, 2**40]),
        "height": st.sampled_from([6, 5, 0, -1, 2**40]),
    }
)
annotations = record(
    {
        "id": small_ids,
        "image_id": small_ids,
        "category_id": small_ids,
        "bbox": st.lists(numbers, min_size=4, max_size=4) | st.lists(numbers, max_size=5),
        "area": numbers,
        "iscrowd": st.sampled_from([0, 1, 2, True, 0.0, "0"]),
    }
)
categories = record({"id": small_ids, "name": st.sampled_from(["cat", "dog", "bird", "cat", ""])})


def section(records: st.SearchStrategy) -> st.SearchStrategy:
    return mostly(st.lists(mostly(records), max_size=4))


annotation_files = mostly(
    record({"images": section(images), "annotations": section(annotations), "categories": section(categories)})
)


def valid_content() -> dict:
    return {
        "images": [
            {"id": 1, "file_name": "a.png", "width": 8, "height": 6},
            {"id": 2, "file_name": "b.png", "width": 5, "height": 5},
        ],
        "annotations": [
            {"id": 1, "image_id": 1, "category_id": 3, "bbox": [1, 1, 4, 3], "area": 12, "iscrowd": 0},
            {"id": 2, "image_id": 1, "category_id": 7, "bbox": [0.5, 2, 2.5, 2]},
            {"id": 3, "image_id": 2, "category_id": 3, "bbox": [0, 0, 5, 5], "iscrowd": 1},
        ],
        "categories": [{"id": 3, "name": "cat"}, {"id": 7, "name": "dog"}],
    }


SECTION_KEYS = {
    "images": ["id", "file_name", "width", "height"],
    "annotations": ["id", "image_id", "category_id", "bbox", "area", "iscrowd"],
    "categories": ["id", "name"],
}
mutation = st.tuples(
    st.sampled_from(sorted(SECTION_KEYS)),
    st.integers(min_value=0, max_value=2),
    st.sampled_from(["set", "set", "set", "delete", "duplicate", "bbox_item"]),
    st.sampled_from(sorted({key for keys in SECTION_KEYS.values() for key in keys})),
    st.one_of(small_ids, numbers, json_values),
)


def mutate(content: dict, mutations: list[tuple]) -> dict:
    """A valid file with a few fields set to odd values, deleted, records duplicated or box items changed."""
    for section_name, index, action, key, value in mutations:
        records = content[section_name]
        record = records[index % len(records)]
        if action == "set":
            record[key] = value
        elif action == "delete":
            record.pop(key, None)
        elif action == "duplicate":
            records.append(dict(record))
        elif isinstance(record.get("bbox"), list) and record["bbox"]:
            record["bbox"][index % len(record["bbox"])] = value
    return content


mutated_valid_files = st.lists(mutation, min_size=1, max_size=3).map(
    lambda mutations: mutate(valid_content(), mutations)
)


@pytest.fixture(scope="module")
def image_dir(tmp_path_factory) -> Path:
    directory = tmp_path_factory.mktemp("images")
    for name, size in IMAGE_SIZES.items():
        Image.new("RGB", size, (90, 30, 200)).save(directory / name)
    return directory


def load_or_data_error(path: Path, image_dir: Path, *, check_image_sizes: bool) -> datasets.Dataset | None:
    try:
        return load_coco_detection(annotation_file=path, image_dir=image_dir, check_image_sizes=check_image_sizes)
    except DataError:
        return None


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(content=st.one_of(annotation_files, mutated_valid_files), check_image_sizes=st.booleans())
def test_malformed_annotation_files_load_or_raise_data_error(content, check_image_sizes, image_dir, tmp_path):
    path = tmp_path / "instances.json"
    path.write_text(json.dumps(content), encoding="utf-8", errors="surrogatepass")
    dataset = load_or_data_error(path, image_dir, check_image_sizes=check_image_sizes)
    if dataset is not None:
        # What loads is usable: every row reads back with finite, in-image boxes.
        for row in dataset.cast_column("image", datasets.Image(decode=False)):
            for x, y, w, h in row["objects"]["bbox"]:
                assert 0 <= x <= x + w <= row["width"] + 1e-3 and 0 <= y <= y + h <= row["height"] + 1e-3


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.binary(max_size=64))
def test_arbitrary_bytes_raise_data_error(data, image_dir, tmp_path):
    path = tmp_path / "instances.json"
    path.write_bytes(data)
    load_or_data_error(path, image_dir, check_image_sizes=True)


def one_image(**fields) -> dict:
    """A file of one image (`fields` over a valid record), no annotations and one category."""
    image = {"id": 1, "file_name": "a.png", "width": 8, "height": 6, **fields}
    return {"images": [image], "annotations": [], "categories": [{"id": 1, "name": "cat"}]}


@pytest.mark.parametrize(
    "content",
    [one_image(id=2**70), one_image(width=2**40), one_image(file_name="a.png\x00"), one_image(file_name="x" * 300)],
    ids=["huge-id", "huge-width", "nul-in-file-name", "long-file-name"],
)
def test_crashes_found_by_fuzzing_are_data_errors(content, image_dir, tmp_path):
    path = tmp_path / "instances.json"
    path.write_text(json.dumps(content), encoding="utf-8")
    with pytest.raises(DataError, match=str(path)):
        load_coco_detection(annotation_file=path, image_dir=image_dir, check_image_sizes=False)


# ------------------------------------------------------------------------------- Hub-format and KITTI


def assert_boxes_inside(dataset: datasets.Dataset) -> None:
    """What loads is usable: every row reads back with finite, in-image boxes of some area."""
    for row in dataset.cast_column("image", datasets.Image(decode=False)):
        for x, y, w, h in row["objects"]["bbox"]:
            assert 0 <= x <= x + w <= row["width"] + 1e-3 and 0 <= y <= y + h <= row["height"] + 1e-3
            assert w > 0 and h > 0


HUB_IMAGE_SIZES = {"a.png": (8, 6), "b.png": (5, 5)}
coordinates = mostly(st.integers(min_value=-2, max_value=10) | st.floats(min_value=-2, max_value=10))
hub_object = st.fixed_dictionaries(
    {
        "bbox": mostly(st.lists(coordinates, min_size=4, max_size=4)),
        "category": mostly(st.sampled_from(["cat", "dog"])),
    },
    optional={
        "iscrowd": mostly(st.sampled_from([0, 1, True, "0", "1", "true", "false"])),
        "area": mostly(st.integers(min_value=0, max_value=50)),
        "id": small_ids,
    },
)


def as_columns(objects: list[dict]) -> dict:
    """Objects as the dict of lists the Hub sets store (a missing field: None in its list)."""
    keys = sorted({key for obj in objects for key in obj} | {"bbox", "category"})
    return {key: [obj.get(key) for obj in objects] for key in keys}


def as_rows(objects):
    """A dict of lists as a list of per-object dicts; anything else as it is."""
    if not isinstance(objects, dict) or not all(isinstance(values, list) for values in objects.values()):
        return objects
    return [dict(zip(objects, values)) for values in zip(*objects.values())]


hub_objects = mostly(st.lists(hub_object, max_size=3).map(as_columns))
metadata_line = st.fixed_dictionaries(
    {
        "file_name": st.tuples(
            st.sampled_from(range(10)),
            st.sampled_from(list(HUB_IMAGE_SIZES)),
            st.sampled_from(["missing.png", "../a.png", "/a.png", ""]) | json_values,
        ).map(lambda t: t[2] if t[0] == 9 else t[1]),
        "objects": hub_objects,
    },
    # Each optional key is left out half the time: with it on some lines only, the others read None.
    optional={"width": st.sampled_from([8, 5, 0, 2**40]), "height": st.sampled_from([6, 5, -1]), "image_id": small_ids},
)


# Now and then bytes after the last line: a truncated or binary file.
trailing_junk = st.tuples(st.sampled_from(range(10)), st.binary(max_size=12)).map(lambda t: t[1] if t[0] == 9 else b"")


def write_metadata(folder: Path, lines: list, junk: bytes, *, objects_as_rows: bool) -> None:
    """`lines` as `folder/metadata.jsonl`, their objects as dicts of lists or (`objects_as_rows`) lists of
    dicts (one form per file: pyarrow refuses a mix), then `junk`."""
    if objects_as_rows:
        lines = [{**line, "objects": as_rows(line["objects"])} if "objects" in line else line for line in lines]
    folder.mkdir(parents=True)
    for name, size in HUB_IMAGE_SIZES.items():
        Image.new("RGB", size, (90, 30, 200)).save(folder / name)
    text = "".join(json.dumps(line) + "\n" for line in lines).encode("utf-8", errors="surrogatepass")
    (folder / "metadata.jsonl").write_bytes(text + junk)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    lines=st.lists(metadata_line, min_size=1, max_size=3),
    junk=trailing_junk,
    objects_as_rows=st.booleans(),
    bbox_format=st.sampled_from(["xywh", "xyxy"]),
)
def test_malformed_imagefolders_load_or_raise_data_error(lines, junk, objects_as_rows, bbox_format, tmp_path_factory):
    # A fresh folder per example: datasets caches an imagefolder by its files.
    root = tmp_path_factory.mktemp("imagefolder")
    write_metadata(root / "train", lines, junk, objects_as_rows=objects_as_rows)
    try:
        dataset = load_hub_detection(root, "train", bbox_format=bbox_format)
    except DataError:
        return
    assert_boxes_inside(dataset)


KITTI_SIZES = {"000000": (16, 8), "000001": (10, 12)}
odd_tokens = st.sampled_from(["nan", "inf", "-1", "1e400", "0x10", "1,5", "\u0661", "4", "-0.5", "1.5"])


def rarely_odd(good: st.SearchStrategy, odd: st.SearchStrategy = odd_tokens) -> st.SearchStrategy:
    """`good` formatted as a label field, an `odd` token one time in eight."""
    return st.tuples(st.sampled_from(range(8)), good, odd).map(lambda t: t[2] if t[0] == 7 else str(t[1]))


def label_line(parts: tuple) -> str:
    kitti_type, truncated, occluded, box, action, position, token = parts
    fields = [kitti_type, truncated, occluded, "-10", *box, "-1", "-1", "-1", "-1000", "-1000", "-1000", "-10"]
    if action == "drop":
        del fields[position % len(fields)]
    elif action == "insert":
        fields.insert(position % len(fields), token)
    return " ".join(fields)


coordinate = st.integers(min_value=-2, max_value=9) | st.floats(min_value=-2, max_value=9)
# Corners from a corner and a size (mostly positive), so that most boxes get past x2 >= x1 to the clipping.
corners = st.tuples(
    coordinate, coordinate, st.integers(min_value=-1, max_value=8), st.floats(min_value=-1, max_value=8)
)


def box_fields(parts: tuple) -> list[str]:
    """x1 y1 x2 y2 from a corner and a size, one of them an odd token when `position` < 4."""
    (x, y, width, height), position, token = parts
    fields = [f"{x:.2f}", f"{y:.2f}", f"{x + width:.2f}", f"{y + height:.2f}"]
    if position < 4:
        fields[position] = token
    return fields


kitti_lines = st.lists(
    st.tuples(
        st.sampled_from(["Car", "Pedestrian", "Cyclist", "Van", "DontCare", "Car", "Bus"]),
        rarely_odd(st.sampled_from(["0.00", "0.50", "1", "0.25"]), st.sampled_from(["-1", "1.5", "-0.5", "nan"])),
        rarely_odd(st.sampled_from([0, 1, 2, 3]), st.sampled_from(["4", "-1", "0.5", "x"])),
        st.tuples(corners, st.sampled_from(range(40)), odd_tokens).map(box_fields),
        st.sampled_from(["keep"] * 18 + ["drop", "insert"]),
        st.integers(min_value=0, max_value=15),
        odd_tokens,
    ).map(label_line),
    max_size=3,
)
split_names = st.tuples(
    st.sampled_from(range(10)),
    st.lists(st.sampled_from(sorted(KITTI_SIZES)), min_size=1, max_size=2, unique=True),
    st.lists(st.sampled_from([*KITTI_SIZES, "000009", "0 0", ""]), max_size=3),
).map(lambda t: t[2] if t[0] == 9 else t[1])


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    labels=st.fixed_dictionaries({name: kitti_lines for name in KITTI_SIZES}),
    split=split_names,
    skip_invalid=st.booleans(),
)
def test_malformed_kitti_labels_load_or_raise_data_error(labels, split, skip_invalid, tmp_path_factory):
    root = tmp_path_factory.mktemp("kitti")
    (root / "training" / "image_2").mkdir(parents=True)
    (root / "training" / "label_2").mkdir()
    (root / "ImageSets").mkdir()
    for name, size in KITTI_SIZES.items():
        Image.new("RGB", size).save(root / "training" / "image_2" / f"{name}.png")
        (root / "training" / "label_2" / f"{name}.txt").write_text("".join(line + "\n" for line in labels[name]))
    (root / "ImageSets" / "train.txt").write_text("".join(name + "\n" for name in split))
    try:
        dataset = load_kitti(root, "train", skip_invalid=skip_invalid)
    except DataError:
        return
    assert_boxes_inside(dataset)
    for row in dataset:
        for kitti_type, truncated, occluded in zip(*(row["objects"][key] for key in ("type", "truncated", "occluded"))):
            assert (0 <= truncated <= 1 and occluded in (0, 1, 2, 3)) or kitti_type == "DontCare"
