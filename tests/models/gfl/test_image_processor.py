"""GFLImageProcessor: resizing, padding, label conversion and post-processing."""

import warnings

import numpy as np
import pytest
import torch
from PIL import Image

from liaf_hf import GFLConfig, GFLImageProcessor
from liaf_hf.models.gfl.modeling_gfl import GFLObjectDetectionOutput
from tiny import FIXTURES


def test_resize_keeps_aspect_ratio_and_pads_to_multiple_of_32():
    processor = GFLImageProcessor(size={"shortest_edge": 100, "longest_edge": 150})
    batch = processor(images=[Image.new("RGB", (400, 200)), Image.new("RGB", (50, 50))], return_tensors="pt")
    # 400x200 -> longest edge caps the scale at 150/400: 75x150; 50x50 -> 100x100. Padded to 128x160.
    assert batch["pixel_values"].shape == (2, 3, 128, 160)
    mask = batch["pixel_mask"]
    assert mask[0].sum(dim=0).max() == 75 and mask[0].sum(dim=1).max() == 150
    assert mask[1].sum() == 100 * 100
    assert batch["pixel_values"][0, :, 75:, :].abs().sum() == 0


def test_normalisation_uses_imagenet_statistics():
    processor = GFLImageProcessor(size={"shortest_edge": 32, "longest_edge": 32})
    image = np.full((32, 32, 3), 255, dtype=np.uint8)
    values = processor(images=image)["pixel_values"][0, :, 0, 0]
    expected = (1 - torch.tensor([0.485, 0.456, 0.406])) / torch.tensor([0.229, 0.224, 0.225])
    assert torch.allclose(values, expected, atol=1e-5)


def test_annotations_become_normalised_labels_and_crowds_become_ignore_regions():
    processor = GFLImageProcessor(size={"shortest_edge": 64, "longest_edge": 128})
    annotation = {
        "image_id": 7,
        "annotations": [
            {"bbox": [10, 20, 40, 20], "category_id": 2, "iscrowd": 0},
            {"bbox": [0, 0, 100, 50], "category_id": 1, "iscrowd": 1},
        ],
    }
    labels = processor(images=Image.new("RGB", (200, 100)), annotations=annotation)["labels"][0]
    assert labels["class_labels"].tolist() == [2]
    assert labels["boxes"][0].tolist() == pytest.approx([30 / 200, 30 / 100, 40 / 200, 20 / 100])
    assert labels["ignore_boxes"][0].tolist() == pytest.approx([0.25, 0.25, 0.5, 0.5])
    assert labels["image_id"].item() == 7
    assert labels["orig_size"].tolist() == [100, 200] and labels["size"].tolist() == [64, 128]


def test_bad_annotation_names_the_image():
    processor = GFLImageProcessor()
    with pytest.raises(ValueError, match=r"image_id 3.*bbox must be 4 finite numbers"):
        processor(images=Image.new("RGB", (20, 20)), annotations={"image_id": 3, "annotations": [{"bbox": [1, 2]}]})


def test_post_processing_scales_boxes_and_applies_class_aware_nms():
    processor = GFLImageProcessor.for_model_config(GFLConfig(nms_iou_threshold=0.5, max_detections=10))
    logit = lambda p: torch.logit(torch.tensor(p)).item()  # noqa: E731
    logits = torch.full((1, 4, 2), -10.0)
    logits[0, 0, 0] = logit(0.9)  # box A, class 0
    logits[0, 1, 0] = logit(0.8)  # box A shifted slightly, class 0: suppressed by A
    logits[0, 2, 1] = logit(0.7)  # same place as A but class 1: kept (NMS is per class)
    logits[0, 3, 0] = logit(0.04)  # below the 0.05 score threshold
    boxes = torch.tensor([[[0.5, 0.5, 0.2, 0.2], [0.51, 0.5, 0.2, 0.2], [0.5, 0.5, 0.2, 0.2], [0.1, 0.1, 0.1, 0.1]]])
    outputs = GFLObjectDetectionOutput(logits=logits, pred_boxes=boxes)
    (result,) = processor.post_process_object_detection(outputs, target_sizes=[[100, 200]])
    assert result["scores"].tolist() == pytest.approx([0.9, 0.7])
    assert result["labels"].tolist() == [0, 1]
    assert result["boxes"][0].tolist() == pytest.approx([80.0, 40.0, 120.0, 60.0])
    (strict,) = processor.post_process_object_detection(outputs, threshold=0.75, target_sizes=[[100, 200]])
    assert strict["scores"].tolist() == pytest.approx([0.9])


def test_processor_round_trip(tmp_path):
    processor = GFLImageProcessor(size={"shortest_edge": 96, "longest_edge": 160}, max_detections=7)
    processor.save_pretrained(tmp_path)
    loaded = GFLImageProcessor.from_pretrained(tmp_path)
    assert dict(loaded.size) == {"shortest_edge": 96, "longest_edge": 160} and loaded.max_detections == 7


# ------------------------------------------------------------------------ transformers' conventions

IMAGE_200_BY_100 = Image.new("RGB", (200, 100))  # width 200, height 100


@pytest.mark.parametrize(
    ("size", "expected"),
    [
        ({"shortest_edge": 50, "longest_edge": 80}, (40, 80)),  # the longer edge caps the scale
        ({"shortest_edge": 50}, (50, 100)),
        ({"longest_edge": 150}, (75, 150)),
        ({"max_height": 60, "max_width": 60}, (30, 60)),
        ({"height": 48, "width": 40}, (48, 40)),  # exact, not keeping the aspect ratio
    ],
)
def test_every_size_form_of_transformers_resizes_as_documented(size, expected):
    processor = GFLImageProcessor(size=size, pad_size_divisor=1)
    batch = processor(images=IMAGE_200_BY_100, annotations={"image_id": 0, "annotations": []})
    assert tuple(batch["pixel_values"].shape[-2:]) == expected
    assert batch["labels"][0]["size"].tolist() == list(expected)


def test_a_size_form_transformers_does_not_know_is_refused_naming_the_forms():
    with pytest.raises(ValueError, match="size must"):
        GFLImageProcessor(size={"shortest_side": 10})


def test_pad_size_pads_every_image_to_it_and_refuses_an_image_that_does_not_fit():
    processor = GFLImageProcessor(size={"max_height": 64, "max_width": 64}, pad_size={"height": 64, "width": 64})
    batch = processor(images=[Image.new("RGB", (40, 20)), Image.new("RGB", (20, 40))])
    assert batch["pixel_values"].shape == (2, 3, 64, 64)
    assert batch["pixel_mask"][0].sum() == 32 * 64 and batch["pixel_mask"][1].sum() == 64 * 32
    with pytest.raises(ValueError, match=r"images\[0\] is 100x200 after resizing, larger than pad_size 64x64"):
        processor(images=IMAGE_200_BY_100, do_resize=False)


def test_per_call_overrides_apply_to_that_call_only():
    processor = GFLImageProcessor(size={"shortest_edge": 50, "longest_edge": 100})
    image = np.full((100, 200, 3), 255, dtype=np.uint8)
    raw = processor(images=image, do_resize=False, do_normalize=False, do_pad=False)["pixel_values"][0]
    assert raw.shape == (3, 100, 200) and torch.allclose(raw, torch.ones_like(raw))
    unscaled = processor(images=image, do_rescale=False, do_normalize=False, size={"height": 10, "width": 10})
    assert unscaled["pixel_values"].shape == (1, 3, 32, 32) and unscaled["pixel_values"].max() == 255
    assert dict(processor.size) == {"shortest_edge": 50, "longest_edge": 100} and processor.do_normalize


def test_rescale_factor_and_float_images_already_in_unit_range():
    processor = GFLImageProcessor(size={"height": 8, "width": 8}, do_normalize=False, pad_size_divisor=8)
    halves = processor(images=np.full((8, 8, 3), 200, dtype=np.uint8), rescale_factor=0.5)["pixel_values"]
    assert torch.allclose(halves, torch.full_like(halves, 100.0))
    unit = torch.full((3, 8, 8), 0.25)
    assert torch.allclose(processor(images=unit, do_rescale=False)["pixel_values"], unit[None])


def test_float_images_of_0_to_255_are_rescaled_like_their_uint8_twins():
    """transformers' rule: `do_rescale` multiplies every image by `rescale_factor`, whatever its dtype; a float
    RGBA image of 0..255 is composited at its own scale (transformers' RGBA conversion takes floats only in
    [0, 1]), not refused or clipped."""
    processor = GFLImageProcessor(size={"shortest_edge": 16, "longest_edge": 24})
    pixels = np.random.default_rng(0).integers(0, 256, (20, 30, 4), dtype=np.uint8)
    pixels[..., 3] = np.where(np.arange(30) < 15, 255, 128)  # opaque on the left, half transparent on the right
    for channels in (slice(0, 3), slice(0, 4)):
        expected = processor(images=pixels[..., channels])["pixel_values"]
        as_float = pixels[..., channels].astype(np.float32)
        for image in (as_float, torch.from_numpy(as_float).permute(2, 0, 1), as_float.astype(np.float64)):
            values = processor(images=image)["pixel_values"]
            assert torch.allclose(values.float(), expected, atol=0.05), (channels, type(image), image.dtype)


def test_a_float_image_whose_range_disagrees_with_do_rescale_is_processed_as_asked_with_a_warning():
    processor = GFLImageProcessor(size={"height": 8, "width": 8}, do_normalize=False, pad_size_divisor=8)
    levels = np.linspace(0, 255, 8 * 8 * 3, dtype=np.float32).reshape(8, 8, 3)
    with pytest.warns(UserWarning, match=r"images\[1\] is a float image with values outside \[0, 1\] \(0 to 255\)"):
        unscaled = processor(images=[levels / 255, levels], do_rescale=False)["pixel_values"]
    assert torch.allclose(unscaled[1], torch.from_numpy(levels).permute(2, 0, 1))
    with pytest.warns(UserWarning, match=r"images\[0\] is a float image already in \[0, 1\].*do_rescale=False"):
        twice = processor(images=levels / 255)["pixel_values"]
    assert torch.allclose(twice[0], torch.from_numpy(levels / 255 / 255).permute(2, 0, 1))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        processor(images=levels)  # 0..255 floats, rescaled
        processor(images=levels / 255, do_rescale=False)
        processor(images=levels.astype(np.uint8), do_rescale=False)  # integer images never warn


def test_numpy_tensors_and_coco_detection_format_and_an_unknown_format():
    processor = GFLImageProcessor(size={"height": 32, "width": 32})
    annotation = {"image_id": 1, "annotations": [{"bbox": [0, 0, 10, 10], "category_id": 0, "area": 80.0}]}
    batch = processor(images=IMAGE_200_BY_100, annotations=annotation, return_tensors="np", format="coco_detection")
    assert isinstance(batch["pixel_values"], np.ndarray) and isinstance(batch["labels"][0]["boxes"], np.ndarray)
    with pytest.raises(ValueError, match="format 'coco_panoptic' is not supported"):
        processor(images=IMAGE_200_BY_100, annotations=annotation, format="coco_panoptic")


def test_labels_carry_area_in_resized_pixels_and_iscrowd():
    processor = GFLImageProcessor(size={"shortest_edge": 50, "longest_edge": 100})  # 200x100 -> 100x50: 1/4 area
    annotation = {
        "image_id": 1,
        "annotations": [
            {"bbox": [0, 0, 20, 10], "category_id": 0, "area": 150.0},
            {"bbox": [10, 10, 20, 20], "category_id": 1},
            {"bbox": [0, 0, 50, 50], "category_id": 1, "iscrowd": 1},
        ],
    }
    labels = processor(images=IMAGE_200_BY_100, annotations=annotation)["labels"][0]
    assert labels["area"].tolist() == pytest.approx([150 / 4, 400 / 4])
    assert labels["iscrowd"].tolist() == [0, 0] and labels["ignore_boxes"].shape == (1, 4)


def test_a_processor_saved_by_version_0_1_loads_and_gives_the_same_tensors():
    """`tests/fixtures/gfl_processor_v0_1`: a processor saved before the torchvision backend, with the
    tensors it produced for these three images (mixed sizes, a crowd box)."""
    from safetensors.torch import load_file
    from transformers import AutoImageProcessor

    folder = FIXTURES / "gfl_processor_v0_1"
    processor = AutoImageProcessor.from_pretrained(folder)
    assert isinstance(processor, GFLImageProcessor) and processor.score_threshold == 0.1
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, (h, w, 3), dtype=np.uint8) for h, w in [(30, 20), (18, 40), (24, 24)]]
    objects = [
        {"bbox": [2.0, 3.0, 10.0, 7.5], "category_id": 1, "iscrowd": 0},
        {"bbox": [1.0, 1.0, 4.0, 4.0], "category_id": 0, "iscrowd": 1},
    ]
    batch = processor(images=images, annotations=[{"image_id": i, "annotations": objects} for i in range(3)])
    expected = load_file(folder / "expected.safetensors")
    assert torch.allclose(batch["pixel_values"], expected["pixel_values"], atol=1e-5)
    assert torch.equal(batch["pixel_mask"], expected["pixel_mask"].long())
    for index, labels in enumerate(batch["labels"]):
        for key in ("class_labels", "boxes", "ignore_boxes", "image_id", "orig_size", "size"):
            assert torch.equal(labels[key], expected[f"labels.{index}.{key}"]), (index, key)


@pytest.mark.parametrize("container", ["model_output", "dataclass", "dict"])
def test_post_processing_reads_a_model_output_a_plain_dataclass_or_a_dict(container):
    import dataclasses

    @dataclasses.dataclass
    class Bare:
        logits: torch.Tensor
        pred_boxes: torch.Tensor

    logits = torch.tensor([[[4.0, -9.0], [-9.0, -9.0]]])
    boxes = torch.tensor([[[0.5, 0.5, 0.5, 0.5], [0.1, 0.1, 0.1, 0.1]]])
    outputs = {
        "model_output": GFLObjectDetectionOutput(logits=logits, pred_boxes=boxes),
        "dataclass": Bare(logits=logits, pred_boxes=boxes),
        "dict": {"logits": logits, "pred_boxes": boxes},
    }[container]
    (result,) = GFLImageProcessor().post_process_object_detection(outputs, threshold=0.5, target_sizes=[(10, 20)])
    assert result["labels"].tolist() == [0] and result["boxes"][0].tolist() == pytest.approx([5.0, 2.5, 15.0, 7.5])


@pytest.mark.parametrize("mode", ["I;16", "F"])
def test_a_16_bit_or_float_pil_image_is_refused_rather_than_saturated(mode):
    """PIL's RGB conversion would clip a 16-bit ramp to white or a [0, 1] float image to black; the processor
    says so and how to convert it, and the library's reader gives it the right pixels."""
    from liaf_hf.data.images import to_rgb

    ramp = np.linspace(0, 65535 if mode == "I;16" else 1.0, 32 * 32).reshape(32, 32)
    image = Image.fromarray(ramp.astype(np.uint16 if mode == "I;16" else np.float32))
    assert image.mode == mode
    processor = GFLImageProcessor(size={"height": 32, "width": 32})
    with pytest.raises(ValueError, match=rf"images\[0\] is a PIL image of mode '{mode}'.*to_rgb"):
        processor(images=[image])
    pixels = processor(images=[to_rgb(image)], do_normalize=False)["pixel_values"][0]
    assert 0.45 < float(pixels.mean()) < 0.55  # the ramp's mean, neither white nor black
