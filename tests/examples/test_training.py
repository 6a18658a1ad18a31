"""Training with transformers.Trainer: the example script end to end, and a detector that really learns."""

import json
import logging

import pytest
import torch
from transformers import AutoModelForObjectDetection, HfArgumentParser

from liaf_hf import GFLConfig, GFLForObjectDetection, GFLImageProcessor
from liaf_hf.cli import DetectorArguments, build_detector
from liaf_hf.data import load_coco_detection
from liaf_hf.data.collate import DetectionCollator, DetectionTransform
from liaf_hf.data.synthetic import SyntheticSpec, generate_coco_dataset
from liaf_hf.metrics import CocoDetectionEvaluator, coco_ground_truth_from_dataset
from tiny import load_example, tiny_detector_flags


def test_train_detector_example_trains_scores_and_saves(tmp_path, caplog):
    data_dir, output_dir = tmp_path / "shapes", tmp_path / "run"
    caplog.set_level(logging.INFO, logger="liaf_hf.trainer.callbacks")
    metrics = load_example("train_detector").main(
        [
            "--data_dir", str(data_dir), "--generate_synthetic", "easy",
            "--synthetic_num_train", "24", "--synthetic_num_val", "8",
            "--backbone", "resnet18", "--fpn_channels", "32", "--head_channels", "32",
            "--head_stacked_convs", "1", "--head_norm_groups", "8",
            "--shortest_edge", "64", "--longest_edge", "64",
            "--output_dir", str(output_dir), "--do_train", "--do_eval", "--max_steps", "3",
            "--per_device_train_batch_size", "8", "--per_device_eval_batch_size", "4",
            "--save_strategy", "no", "--report_to", "none", "--logging_steps", "1",
        ]
    )  # fmt: skip
    for key in ("eval_AP", "eval_AP50", "eval_AP75", "eval_APs", "eval_APm", "eval_APl", "eval_AR100"):
        assert key in metrics and -1.0 <= metrics[key] <= 1.0
    assert any(key.startswith("eval_AP_") for key in metrics), "per-class AP"
    model = AutoModelForObjectDetection.from_pretrained(output_dir)
    assert list(model.config.id2label.values()) == list(SyntheticSpec().class_names)
    assert GFLImageProcessor.from_pretrained(output_dir).size == {"shortest_edge": 64, "longest_edge": 64}
    summary = json.loads((output_dir / "summary.json").read_text())
    assert summary["parameters"] == sum(p.numel() for p in model.parameters())
    progress = [record.getMessage() for record in caplog.records if record.name == "liaf_hf.trainer.callbacks"]
    assert progress == ["Training GFL resnet18 detector: 3 steps", "GFL resnet18 detector: trained 3 steps"]


def test_detector_learns_to_find_objects(tmp_path):
    """Overfitting a handful of images must reach a high AP50: this fails if assignment, losses, box
    decoding or post-processing disagree with each other."""
    torch.manual_seed(0)
    root = generate_coco_dataset(tmp_path / "shapes", num_train=8, num_val=1, seed=3)
    dataset = load_coco_detection(root, "train")
    config = GFLConfig(
        backbone="resnet18",
        fpn_channels=32,
        head_channels=32,
        head_stacked_convs=1,
        head_norm_groups=8,
        id2label=dict(enumerate(dataset.features["objects"]["category"].feature.names)),
    )
    model = GFLForObjectDetection(config)
    processor = GFLImageProcessor.for_model_config(config, size={"shortest_edge": 96, "longest_edge": 96})
    examples = dataset.with_transform(DetectionTransform(processor, train=False))
    batch = DetectionCollator(processor)([examples[i] for i in range(len(examples))])
    optimizer = torch.optim.AdamW(model.parameters(), lr=2e-3)
    model.train()
    for _ in range(80):
        loss = model(**batch).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

    model.eval()
    with torch.no_grad():
        outputs = model(pixel_values=batch["pixel_values"], pixel_mask=batch["pixel_mask"])
    sizes = [label["orig_size"].tolist() for label in batch["labels"]]
    detections = processor.post_process_object_detection(outputs, target_sizes=sizes)
    evaluator = CocoDetectionEvaluator(coco_ground_truth_from_dataset(dataset))
    evaluator.update([label["image_id"] for label in batch["labels"]], detections)
    assert evaluator.compute()["AP50"] > 0.6


@pytest.mark.parametrize("flag", ["--use_pretrained_backbone", "--backbone_pretrained"])
def test_either_pretrained_backbone_flag_loads_the_weights(flag, monkeypatch):
    """`--backbone_pretrained` keeps working beside transformers' name for it (the loading itself is stubbed:
    it would download timm's weights)."""
    loaded = []
    monkeypatch.setattr(GFLForObjectDetection, "load_pretrained_backbone", lambda model: loaded.append(model))
    (arguments,) = HfArgumentParser(DetectorArguments).parse_args_into_dataclasses(
        [flag, "true", "--num_fpn_levels", "3", *tiny_detector_flags()]
    )
    model = build_detector(arguments, {0: "a"})
    assert model.config.use_pretrained_backbone is True and loaded == [model]


def test_trainer_scales_the_loss_for_gradient_accumulation(tmp_path):
    from transformers import Trainer, TrainingArguments

    model = GFLForObjectDetection(GFLConfig(backbone="resnet18", fpn_channels=16, head_channels=16, head_norm_groups=4))
    args = TrainingArguments(output_dir=str(tmp_path), report_to="none", gradient_accumulation_steps=2)
    assert Trainer(model=model, args=args).model_accepts_loss_kwargs is False


def test_detection_batches_are_copied_to_a_gpu_without_waiting(tmp_path, monkeypatch):
    """A batch's many small label tensors go to a GPU from pinned memory without a stream synchronisation
    each; on a machine without one, nothing is pinned (torch would warn)."""
    from transformers import TrainingArguments

    from liaf_hf.trainer.integration import configure_for_detection

    cpu_args = configure_for_detection(TrainingArguments(output_dir=str(tmp_path), report_to=[]))
    assert not cpu_args.dataloader_pin_memory and not cpu_args.accelerator_config.non_blocking

    pinned = TrainingArguments(output_dir=str(tmp_path), report_to=[])
    unpinned = TrainingArguments(output_dir=str(tmp_path), report_to=[], dataloader_pin_memory=False)
    with monkeypatch.context() as patched:  # only while configuring: the arguments would look for a driver
        patched.setattr(torch.cuda, "is_available", lambda: True)
        configure_for_detection(pinned)
        configure_for_detection(unpinned)
    assert pinned.dataloader_pin_memory and pinned.accelerator_config.non_blocking
    assert not unpinned.accelerator_config.non_blocking  # from pageable memory it would gain nothing
