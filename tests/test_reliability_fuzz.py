"""Fuzzing the COCO loader: every annotation file, however malformed, either loads or raises DataError."""

from __future__ import annotations

import json
from pathlib import Path

import datasets
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from liaf_hf.data.coco import load_coco_detection
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
