"""Drawing detections and the predict example: PNGs with boxes where the detections are, clear errors for
directories that are not GFL detectors and for inputs that are not images."""

import importlib.util
import json
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from liaf_hf import DataError, GFLConfig, GFLForObjectDetection, GFLImageProcessor, LiafError
from liaf_hf.inference import detect, find_images, load_detector, open_image
from liaf_hf.visualization.drawing import class_colour, draw_detections
from tiny import ROOT

ID2LABEL = {0: "circle", 1: "square"}
BACKGROUND = (128, 128, 128)


def load_predict_example():
    spec = importlib.util.spec_from_file_location("example_predict", ROOT / "examples" / "predict.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses resolve the example's annotations through sys.modules
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def detector_dir(tmp_path_factory):
    """A tiny untrained detector keeping at most 3 detections per image, so the drawings stay sparse."""
    directory = tmp_path_factory.mktemp("detector")
    torch.manual_seed(0)
    config = GFLConfig(
        backbone="resnet18",
        fpn_channels=16,
        head_channels=16,
        head_stacked_convs=1,
        head_norm_groups=4,
        max_detections=3,
        id2label=ID2LABEL,
    )
    GFLForObjectDetection(config).save_pretrained(directory)
    GFLImageProcessor.for_model_config(config, size={"shortest_edge": 64, "longest_edge": 96}).save_pretrained(
        directory
    )
    return directory


def changed(before: Image.Image, after: Image.Image) -> np.ndarray:
    """(H, W) bool: pixels that differ."""
    return (np.asarray(before, dtype=np.int16) != np.asarray(after, dtype=np.int16)).any(-1)


def test_draw_detections_draws_box_and_tag_in_the_class_colour():
    image = Image.new("RGB", (120, 90), BACKGROUND)
    detections = {
        "scores": torch.tensor([0.9, 0.1]),
        "labels": torch.tensor([1, 0]),
        "boxes": torch.tensor([[30.0, 40.0, 90.0, 80.0], [0.0, 0.0, 20.0, 20.0]]),
    }
    drawn = draw_detections(image, detections, ID2LABEL, threshold=0.5)
    assert drawn is not image and image.getpixel((30, 60)) == BACKGROUND, "the input is left as it was"
    assert drawn.size == image.size
    diff = changed(image, drawn)
    for x, y in [(30, 60), (90, 60), (60, 80)]:  # left, right and bottom edges of the box
        assert drawn.getpixel((x, y)) == class_colour(1)
    assert diff[35:40, 30:60].any(), "the tag sits on the box's top edge"
    assert not diff[50:75, 35:85].any(), "the inside of the box is untouched"
    assert not diff[:20, :20].any(), "a detection below the threshold is not drawn"


def test_draw_detections_accepts_lists_and_refuses_mismatched_fields():
    image = Image.new("RGB", (40, 30), BACKGROUND)
    drawn = draw_detections(image, {"scores": [0.8], "labels": [5], "boxes": [[2, 2, 30, 20]]})  # no names: "5"
    assert drawn.getpixel((2, 15)) == class_colour(5)
    with pytest.raises(ValueError, match="1 scores, 2 labels and 1 boxes"):
        draw_detections(image, {"scores": [0.8], "labels": [1, 2], "boxes": [[2, 2, 30, 20]]})
    with pytest.raises(ValueError, match=r"boxes'\]\[0\] must be 4 numbers"):
        draw_detections(image, {"scores": [0.8], "labels": [1], "boxes": [[2, 2, 30]]})


def test_predict_writes_pngs_with_the_detections_drawn(detector_dir, tmp_path):
    images_dir = tmp_path / "images"
    images_dir.mkdir()
    Image.new("RGB", (96, 64), BACKGROUND).save(images_dir / "a.png")
    Image.new("RGB", (64, 80), BACKGROUND).save(images_dir / "b.jpg", quality=100)
    (images_dir / "notes.txt").write_text("not an image")
    output_dir = tmp_path / "drawn"
    written = load_predict_example().main(
        ["--model", str(detector_dir), "--images", str(images_dir), "--output_dir", str(output_dir)]
        + ["--threshold", "0.0", "--batch_size", "1"]
    )
    assert written == [output_dir / "a.png", output_dir / "b.png"]
    model, processor = load_detector(detector_dir)
    for source in sorted(images_dir.glob("*.*g")):
        original = open_image(source)
        drawn = Image.open(output_dir / f"{source.stem}.png")
        assert drawn.format == "PNG" and drawn.size == original.size
        [detections] = detect(model, processor, [original], threshold=0.0)
        assert len(detections["scores"]) > 0, "an untrained model scores every anchor above 0"
        diff = changed(original, drawn.convert("RGB"))
        height, width = diff.shape
        for x1, y1, x2, y2 in detections["boxes"].round().long().tolist():
            # The box's left edge, halfway down, within a pixel of rounding.
            x, y = min(max(x1, 0), width - 1), min(max((y1 + y2) // 2, 0), height - 1)
            assert diff[max(y - 1, 0) : y + 2, max(x - 1, 0) : x + 2].any(), (source.name, (x1, y1, x2, y2))
        assert diff.mean() < 0.9, "boxes and tags, not a repainted image"


def test_predict_refuses_a_directory_that_is_not_a_gfl_detector(detector_dir, tmp_path):
    predict = load_predict_example()
    image = tmp_path / "a.png"
    Image.new("RGB", (32, 32)).save(image)
    arguments = ["--images", str(image), "--output_dir", str(tmp_path / "out")]
    with pytest.raises(LiafError, match="is not a directory"):
        predict.main(["--model", str(tmp_path / "missing")] + arguments)
    with pytest.raises(LiafError, match="is not a saved GFL detector: it has no config.json"):
        predict.main(["--model", str(tmp_path)] + arguments)
    other = tmp_path / "detr"
    other.mkdir()
    (other / "config.json").write_text(json.dumps({"model_type": "detr"}))
    with pytest.raises(LiafError, match=r"detr/config.json: model_type is 'detr', expected 'gfl'"):
        predict.main(["--model", str(other)] + arguments)
    (other / "config.json").write_text("{not json")
    with pytest.raises(LiafError, match=r"detr/config.json is not valid JSON"):
        predict.main(["--model", str(other)] + arguments)
    assert not (tmp_path / "out").exists()


def test_missing_and_unreadable_images_are_named(detector_dir, tmp_path):
    with pytest.raises(DataError, match="nowhere.png does not exist"):
        find_images([tmp_path / "nowhere.png"])
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="No images"):
        find_images([tmp_path / "empty"])
    (tmp_path / "broken.png").write_bytes(b"not a png")
    with pytest.raises(DataError, match="broken.png: not a readable image"):
        open_image(tmp_path / "broken.png")
    first, second = tmp_path / "one", tmp_path / "two"
    for folder in (first, second):
        folder.mkdir()
        Image.new("RGB", (32, 32)).save(folder / "same.png")
    with pytest.raises(LiafError, match="would overwrite each other"):
        load_predict_example().main(
            ["--model", str(detector_dir), "--images", str(first), str(second), "--output_dir", str(tmp_path / "o")]
        )


def test_predict_refuses_an_output_dir_holding_its_input_images_before_writing(detector_dir, tmp_path):
    images_dir = tmp_path / "images"
    images_dir.mkdir()
    Image.new("RGB", (48, 32), (200, 30, 30)).save(images_dir / "a.png")
    Image.new("RGB", (48, 32), (30, 30, 200)).save(images_dir / "b.jpg")
    before = {path.name: path.read_bytes() for path in images_dir.iterdir()}
    predict = load_predict_example()
    for images, output_dir in [
        ([str(images_dir)], str(images_dir)),
        ([str(images_dir / "a.png")], str(images_dir / "." / "sub" / "..")),  # the same folder, spelled otherwise
    ]:
        with pytest.raises(LiafError, match=r"is the folder of input images .*replace \[.*a\.png'\]"):
            predict.main(["--model", str(detector_dir), "--images", *images, "--output_dir", output_dir])
    with pytest.raises(LiafError, match="is the folder of input images"):
        predict.main(
            ["--model", str(detector_dir), "--images", str(images_dir / "b.jpg"), "--output_dir", str(images_dir)]
        )
    assert {path.name: path.read_bytes() for path in images_dir.iterdir()} == before, "nothing written"
    # A folder inside the inputs' is another folder: the inputs stay as they were.
    written = predict.main(
        ["--model", str(detector_dir), "--images", str(images_dir), "--output_dir", str(images_dir / "drawn")]
    )
    assert written == [images_dir / "drawn" / "a.png", images_dir / "drawn" / "b.png"]
    assert {path.name: path.read_bytes() for path in images_dir.iterdir() if path.is_file()} == before


def test_predict_reads_images_upright_and_16_bit_greyscale_by_its_range(detector_dir, tmp_path):
    """The loaders' and the pipeline's rule: EXIF orientation applied, 16-bit scaled to 8-bit, not clipped."""
    images_dir = tmp_path / "images"
    images_dir.mkdir()
    stored = Image.new("RGB", (48, 32), (220, 20, 20))
    stored.paste((20, 20, 220), (24, 0, 48, 32))  # left half red, right half blue
    exif = Image.Exif()
    exif[0x0112] = 6  # shown turned 90 degrees clockwise: the left half on top
    stored.save(images_dir / "turned.jpg", exif=exif, quality=100)
    Image.fromarray(np.full((20, 30), 32768, dtype=np.uint16)).save(images_dir / "deep.png")
    output_dir = tmp_path / "drawn"
    # No detection scores 2: the PNGs show the images as read.
    load_predict_example().main(
        ["--model", str(detector_dir), "--images", str(images_dir), "--output_dir", str(output_dir), "--threshold", "2"]
    )
    turned = Image.open(output_dir / "turned.png").convert("RGB")
    assert turned.size == (32, 48)
    top, bottom = np.asarray(turned)[4, 16].astype(int), np.asarray(turned)[44, 16].astype(int)
    assert top[0] > 150 > top[2] and bottom[2] > 150 > bottom[0], (top, bottom)
    deep = np.asarray(Image.open(output_dir / "deep.png").convert("RGB"))
    assert deep.shape == (20, 30, 3) and (deep == 128).all()


def test_predict_names_an_image_over_the_decompression_bomb_limit(detector_dir, tmp_path, monkeypatch):
    image = tmp_path / "huge.png"
    Image.new("RGB", (64, 64)).save(image)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # 4096 pixels: over twice the limit
    with pytest.raises(DataError, match=r"huge\.png: refused as a possible decompression bomb"):
        load_predict_example().main(
            ["--model", str(detector_dir), "--images", str(image), "--output_dir", str(tmp_path / "out")]
        )
