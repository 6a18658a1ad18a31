"""Images reach the detector upright and as faithful 8-bit RGB, whichever loader reads them: 16-bit and float
greyscale scaled by their range, EXIF orientation applied (and annotations sized for the stored pixels
refused), decompression bombs refused naming the file."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import PIL.Image
import pytest
import torch
from PIL import Image

from liaf_hf import GFLImageProcessor
from liaf_hf.data.coco import load_coco_detection
from liaf_hf.data.collate import DetectionTransform
from liaf_hf.data.hub_formats import load_hub_detection
from liaf_hf.data.images import read_header, read_image
from liaf_hf.data.kitti import load_kitti
from liaf_hf.errors import DataError
from liaf_hf.export.exporter import load_images

RED, BLUE = (255, 0, 0), (0, 0, 255)
EXIF_ORIENTATION = 0x0112


def write_coco(
    root: Path,
    images: dict[str, Image.Image],
    *,
    sizes: dict[str, tuple[int, int]] | None = None,
    boxes: dict[str, list[float]] | None = None,
    save=None,
) -> Path:
    """A COCO-layout set of `images` (by file name), each with one object (its `boxes` entry, or the whole
    image), and JSON sizes from `sizes` (default: the image's own)."""
    (root / "train").mkdir(parents=True)
    (root / "annotations").mkdir()
    records, annotations = [], []
    for image_id, (file_name, image) in enumerate(images.items(), start=1):
        (save or (lambda picture, path: picture.save(path)))(image, root / "train" / file_name)
        width, height = (sizes or {}).get(file_name, image.size)
        records.append({"id": image_id, "file_name": file_name, "width": width, "height": height})
        bbox = (boxes or {}).get(file_name, [0, 0, width, height])
        annotations.append({"id": image_id, "image_id": image_id, "category_id": 1, "bbox": bbox})
    content = {"images": records, "annotations": annotations, "categories": [{"id": 1, "name": "thing"}]}
    (root / "annotations" / "instances_train.json").write_text(json.dumps(content))
    return root


def processed(dataset, *, shortest_edge: int, longest_edge: int) -> dict:
    """The first row as the Trainer's transform feeds it to the model: pixel values in [0, 1] (no
    normalisation, no resize at these sizes) and labels."""
    processor = GFLImageProcessor(
        size={"shortest_edge": shortest_edge, "longest_edge": longest_edge}, do_normalize=False
    )
    return DetectionTransform(processor, train=False).apply_to(dataset)[0]


def sixteen_bit_ramp(width: int = 64, height: int = 16) -> Image.Image:
    ramp = np.tile(np.linspace(0, 65535, width).astype(np.uint16), (height, 1))
    return Image.fromarray(ramp)


def test_a_16_bit_png_is_scaled_by_its_range_not_saturated(tmp_path):
    root = write_coco(tmp_path / "set", {"depth.png": sixteen_bit_ramp()})
    with Image.open(root / "train" / "depth.png") as stored:
        assert stored.mode.startswith("I")  # the file really is 16-bit
    pixels = processed(load_coco_detection(root), shortest_edge=16, longest_edge=64)["pixel_values"]
    assert pixels.shape == (3, 16, 64)
    assert (pixels >= 0.999).float().mean() < 0.05, "the ramp is not clipped to white"
    assert pixels.min() < 0.01 and pixels.max() > 0.99
    # The ramp survives: each column is brighter than the one before, and the middle is mid-grey.
    row = pixels[0, 0]
    assert (row[1:] >= row[:-1]).all() and abs(row[32].item() - 0.5) < 0.05


def test_a_float_tiff_in_0_1_is_not_black(tmp_path):
    values = np.tile(np.linspace(0, 1, 32, dtype=np.float32), (16, 1))
    root = write_coco(tmp_path / "set", {"float.tif": Image.fromarray(values, mode="F")})
    pixels = processed(load_coco_detection(root), shortest_edge=16, longest_edge=32)["pixel_values"]
    assert abs(pixels.mean().item() - 0.5) < 0.05
    assert pixels.max() > 0.99


def test_images_of_other_ranges_are_refused_naming_file_and_mode(tmp_path):
    root = write_coco(tmp_path / "set", {"far.tif": Image.fromarray(np.full((8, 8), 300.0, np.float32), mode="F")})
    with pytest.raises(DataError, match=r"far\.tif: cannot decode image id 1: a 32-bit float image \(mode 'F'\)"):
        processed(load_coco_detection(root), shortest_edge=8, longest_edge=8)


def rotated_jpeg(image: Image.Image, path: Path, orientation: int = 6) -> None:
    exif = Image.Exif()
    exif[EXIF_ORIENTATION] = orientation
    image.save(path, exif=exif, quality=95)


def stored_with_red_corner() -> Image.Image:
    """40 x 20 stored pixels, red in the stored top-left 10 x 8: with Orientation=6 (turn 90 degrees
    clockwise to view) that is the upright top-right corner, x 12..20 and y 0..10 of a 20 x 40 picture."""
    image = Image.new("RGB", (40, 20), BLUE)
    image.paste(RED, (0, 0, 10, 8))
    return image


def test_jpeg_whose_json_gives_the_stored_size_is_refused(tmp_path):
    root = write_coco(
        tmp_path / "set", {"photo.jpg": stored_with_red_corner()}, sizes={"photo.jpg": (40, 20)}, save=rotated_jpeg
    )
    with pytest.raises(DataError) as raised:
        load_coco_detection(root)
    message = str(raised.value)
    assert "photo.jpg (image id 1)" in message and "Orientation=6" in message and "stored size" in message


def test_jpeg_with_orientation_loads_upright_and_its_boxes_cover_the_object(tmp_path):
    upright_box = [12, 0, 8, 10]
    root = write_coco(
        tmp_path / "set",
        {"photo.jpg": stored_with_red_corner()},
        sizes={"photo.jpg": (20, 40)},
        boxes={"photo.jpg": upright_box},
        save=rotated_jpeg,
    )
    dataset = load_coco_detection(root)
    assert dataset[0]["image"].size == (20, 40)
    example = processed(dataset, shortest_edge=20, longest_edge=40)
    pixels = example["pixel_values"]
    assert pixels.shape == (3, 40, 20)
    centre_x, centre_y, width, height = (example["labels"]["boxes"][0] * torch.tensor([20, 40, 20, 40])).tolist()
    assert [centre_x - width / 2, centre_y - height / 2, width, height] == pytest.approx(upright_box)
    inside = pixels[:, 1:9, 13:19]  # the box, a pixel in from its edges (JPEG blurs them)
    assert inside[0].mean() > 0.9 and inside[2].mean() < 0.1, "the box covers the red object"
    assert pixels[0, 20:, :].mean() < 0.1, "outside the box is the blue background"


def test_every_reader_agrees_on_the_upright_size(tmp_path):
    path = tmp_path / "photo.jpg"
    rotated_jpeg(stored_with_red_corner(), path)
    header = read_header(path)
    assert (header.stored_width, header.stored_height, header.orientation) == (40, 20, 6)
    assert header.size == read_image(path).size == (20, 40)
    assert header.size_mismatch(20, 40) is None


@pytest.fixture
def tiny_pixel_limit(monkeypatch):
    """PIL refuses images over twice MAX_IMAGE_PIXELS: with 100, any image over 200 pixels is a "bomb"."""
    monkeypatch.setattr(PIL.Image, "MAX_IMAGE_PIXELS", 100)


def test_decompression_bombs_are_refused_naming_the_file_in_the_coco_loader_and_the_transform(tmp_path, request):
    root = write_coco(tmp_path / "set", {"big.png": Image.new("RGB", (40, 30))})
    dataset = load_coco_detection(root, check_image_sizes=False)
    request.getfixturevalue("tiny_pixel_limit")
    with pytest.raises(DataError, match=r"big\.png \(image id 1\): refused as a possible decompression bomb"):
        load_coco_detection(root)
    with pytest.raises(DataError, match=r"big\.png: cannot decode image id 1: refused as a possible decompression"):
        processed(dataset, shortest_edge=30, longest_edge=40)
    with pytest.raises(DataError, match=r"big\.png: refused as a possible decompression bomb"):
        load_images(dataset)


def test_decompression_bombs_are_refused_naming_the_file_in_the_hub_and_kitti_loaders(tmp_path, request):
    folder = tmp_path / "folder" / "train"
    folder.mkdir(parents=True)
    Image.new("RGB", (40, 30)).save(folder / "big.png")
    (folder / "metadata.jsonl").write_text(
        json.dumps({"file_name": "big.png", "objects": {"bbox": [[1, 1, 5, 5]], "category": ["car"]}}) + "\n"
    )
    kitti = tmp_path / "kitti"
    (kitti / "training" / "image_2").mkdir(parents=True)
    (kitti / "training" / "label_2").mkdir()
    (kitti / "ImageSets").mkdir()
    Image.new("RGB", (40, 30)).save(kitti / "training" / "image_2" / "000000.png")
    (kitti / "training" / "label_2" / "000000.txt").write_text("Car 0 0 -10 1 1 5 5 -1 -1 -1 -1000 -1000 -1000 -10\n")
    (kitti / "ImageSets" / "train.txt").write_text("000000\n")
    request.getfixturevalue("tiny_pixel_limit")
    with pytest.raises(DataError, match=r"row 0 \(image_id 0\): image .*big\.png: refused as a possible decompression"):
        load_hub_detection(tmp_path / "folder", "train")
    with pytest.raises(DataError, match=r"000000\.png: refused as a possible decompression bomb"):
        load_kitti(kitti, "train")


def test_kitti_and_hub_sizes_are_upright(tmp_path):
    """Loaders that take the size from the image header take the upright one."""
    folder = tmp_path / "folder" / "train"
    folder.mkdir(parents=True)
    rotated_jpeg(stored_with_red_corner(), folder / "photo.jpg")
    (folder / "metadata.jsonl").write_text(
        json.dumps({"file_name": "photo.jpg", "objects": {"bbox": [[12, 0, 8, 10]], "category": ["red"]}}) + "\n"
    )
    row = load_hub_detection(tmp_path / "folder", "train")[0]
    assert (row["width"], row["height"]) == row["image"].size == (20, 40)
    assert row["objects"]["bbox"] == [[12.0, 0.0, 8.0, 10.0]]

    kitti = tmp_path / "kitti"
    (kitti / "training" / "image_2").mkdir(parents=True)
    (kitti / "training" / "label_2").mkdir()
    (kitti / "ImageSets").mkdir()
    rotated_jpeg(stored_with_red_corner(), kitti / "training" / "image_2" / "000000.jpg")
    # x 12..20 fits the upright 20-pixel width; against the stored 40 x 20 the box would reach below y = 20.
    line = "Car 0 0 -10 12 0 20 30 -1 -1 -1 -1000 -1000 -1000 -10\n"
    (kitti / "training" / "label_2" / "000000.txt").write_text(line)
    (kitti / "ImageSets" / "train.txt").write_text("000000\n")
    row = load_kitti(kitti, "train")[0]
    assert (row["width"], row["height"]) == (20, 40)
    assert row["objects"]["bbox"] == [[12.0, 0.0, 8.0, 30.0]], "not clipped to the stored height"


def test_export_images_are_read_by_the_same_rules(tmp_path):
    root = write_coco(
        tmp_path / "set",
        {"depth.png": sixteen_bit_ramp(), "photo.jpg": stored_with_red_corner()},
        save=lambda image, path: rotated_jpeg(image, path) if path.suffix == ".jpg" else image.save(path),
        sizes={"photo.jpg": (20, 40)},
    )
    depth, photo = load_images(load_coco_detection(root))
    assert depth.mode == photo.mode == "RGB"
    assert int(np.asarray(depth)[0, 32, 0]) == pytest.approx(128, abs=3)
    assert photo.size == (20, 40) and int(np.asarray(photo)[2, 17, 0]) > 200
