"""GFLImageProcessor: resizing, padding, label conversion and post-processing."""

import numpy as np
import pytest
import torch
from PIL import Image

from liaf_hf import GFLConfig, GFLImageProcessor
from liaf_hf.models.gfl.modeling_gfl import GFLObjectDetectionOutput


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
    assert loaded.size == {"shortest_edge": 96, "longest_edge": 160} and loaded.max_detections == 7
