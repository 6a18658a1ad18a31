"""A step skipped for a non-finite loss (`nonfinite_loss="skip"`) leaves every buffer of the model as it was:
BatchNorm's running statistics and batch counts, and a distiller's own buffers, not only the weights and the
optimizer state."""

from __future__ import annotations

from functools import partial
from pathlib import Path

import pytest
import torch
from transformers import TrainerCallback, TrainingArguments

from liaf_hf import GFLForObjectDetection, GFLImageProcessor
from liaf_hf.data import label_maps, load_coco_detection
from liaf_hf.data.synthetic import SyntheticSpec, generate_coco_dataset
from liaf_hf.distillation import DistillationResult, Distiller
from liaf_hf.trainer import LIAFDistillationTrainer
from liaf_hf.trainer.detection import DetectionTrainer
from liaf_hf.trainer.integration import configure_for_detection, detection_trainer_kwargs
from tiny import tiny_detector as shared_tiny_detector

# Three FPN levels: these tests train for real, and P6-P7 would only add time.
tiny_detector = partial(shared_tiny_detector, num_fpn_levels=3)

TINY_SPEC = SyntheticSpec(image_width=64, image_height=64, min_size=10, max_size=24, max_objects=3)


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    root = generate_coco_dataset(tmp_path_factory.mktemp("shapes"), num_train=8, num_val=2, seed=2, spec=TINY_SPEC)
    train, val = load_coco_detection(root, "train"), load_coco_detection(root, "val")
    return train, val, label_maps(train)[0]


def training_args(output_dir: Path, **overrides) -> TrainingArguments:
    settings = dict(
        output_dir=str(output_dir),
        max_steps=3,
        per_device_train_batch_size=4,
        learning_rate=1e-3,
        report_to="none",
        save_strategy="no",
        logging_steps=1,
        seed=0,
        full_determinism=True,
        disable_tqdm=True,
    )
    return configure_for_detection(TrainingArguments(**{**settings, **overrides}))


def trainer_kwargs(train, val, model) -> dict:
    processor = GFLImageProcessor.for_model_config(model.config, size={"shortest_edge": 64, "longest_edge": 64})
    return detection_trainer_kwargs(image_processor=processor, train_dataset=train, eval_dataset=val)


def overflow_in_the_stem(detector: GFLForObjectDetection, calls: tuple[int, ...]) -> None:
    """Make the backbone's first convolution give NaN on the chosen training forwards (counted from 1), as a
    half-precision overflow would: the BatchNorm after it takes NaN into its running statistics."""
    count = 0

    def hook(module, inputs, output):
        nonlocal count
        if not module.training:
            return output
        count += 1
        return output * float("nan") if count in calls else output

    detector.backbone.body.conv1.register_forward_hook(hook)


class BufferSnapshots(TrainerCallback):
    """Copies of every buffer of the trained module after each optimizer step."""

    def __init__(self) -> None:
        self.buffers: dict[int, dict[str, torch.Tensor]] = {}

    def on_step_end(self, args, state, control, model=None, **kwargs):
        self.buffers[state.global_step] = {name: b.detach().clone() for name, b in model.named_buffers()}
        return control


def unequal_buffers(first: dict[str, torch.Tensor], second: dict[str, torch.Tensor]) -> list[str]:
    assert first.keys() == second.keys()
    return [name for name in first if not torch.equal(first[name], second[name])]


def test_a_skipped_step_leaves_every_buffer_as_it_was_and_the_saved_model_predicts(shapes, tmp_path):
    """Two micro-batches a step; the second of step 2 overflows: the running statistics that both of its
    forwards updated are restored, and the saved model gives finite outputs."""
    train, val, id2label = shapes
    model = tiny_detector(id2label)
    overflow_in_the_stem(model, calls=(4,))
    snapshots = BufferSnapshots()
    args = training_args(tmp_path, per_device_train_batch_size=2, gradient_accumulation_steps=2)
    trainer = DetectionTrainer(model=model, args=args, nonfinite_loss="skip", **trainer_kwargs(train, val, model))
    trainer.add_callback(snapshots)
    result = trainer.train()
    assert result.metrics["nonfinite_steps_skipped"] == 1
    before, after_skip, after_next = snapshots.buffers[1], snapshots.buffers[2], snapshots.buffers[3]
    assert any(name.endswith("running_var") for name in before)
    assert unequal_buffers(before, after_skip) == []
    assert "model.backbone.body.bn1.running_mean" in unequal_buffers(after_skip, after_next)
    assert all(torch.isfinite(value).all() for value in after_next.values())

    trainer.save_model(str(tmp_path / "model"))
    saved = GFLForObjectDetection.from_pretrained(tmp_path / "model").eval()
    processor = GFLImageProcessor.for_model_config(saved.config, size={"shortest_edge": 64, "longest_edge": 64})
    batch = processor(images=[val[0]["image"]], return_tensors="pt")
    with torch.no_grad():
        outputs = saved(**batch)
    assert torch.isfinite(outputs.logits).all() and torch.isfinite(outputs.pred_boxes).all()


class CountingDistiller(Distiller):
    """A distillation term with buffers of its own: the forwards it has seen and a running mean of the
    student's first FPN map, as a method that normalises by running statistics keeps."""

    needs_teacher = False

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("calls", torch.zeros((), dtype=torch.long))
        self.register_buffer("feature_mean", torch.zeros(()))
        self.scale = torch.nn.Parameter(torch.ones(()))

    def forward(self, *, student, teacher, batch) -> DistillationResult:
        features = student.fpn_features[0].float()
        with torch.no_grad():
            self.calls += 1
            self.feature_mean.lerp_(features.mean(), 0.5)
        return DistillationResult(losses={"loss_feature": (features.mean() * self.scale) ** 2 * 1e-3})


def test_distillation_skips_a_step_leaving_the_student_and_distiller_buffers_as_they_were(shapes, tmp_path):
    train, val, id2label = shapes
    teacher_dir = tmp_path / "teacher"
    tiny_detector(id2label, channels=48, seed=1).save_pretrained(teacher_dir)
    student = tiny_detector(id2label, seed=3)
    overflow_in_the_stem(student, calls=(2,))
    distiller = CountingDistiller()
    snapshots = BufferSnapshots()
    trainer = LIAFDistillationTrainer(
        model=student,
        teacher=teacher_dir,
        method=distiller,
        evaluate_teacher_at_start=False,
        nonfinite_loss="skip",
        args=training_args(tmp_path / "run"),
        **trainer_kwargs(train, val, student),
    )
    trainer.add_callback(snapshots)
    result = trainer.train()
    assert result.metrics["nonfinite_steps_skipped"] == 1
    before, after_skip, after_next = snapshots.buffers[1], snapshots.buffers[2], snapshots.buffers[3]
    assert {"distiller.calls", "distiller.feature_mean", "student.model.backbone.body.bn1.running_mean"} <= set(before)
    assert unequal_buffers(before, after_skip) == []
    assert {"distiller.calls", "student.model.backbone.body.bn1.running_mean"} <= set(
        unequal_buffers(after_skip, after_next)
    )
    assert int(distiller.calls) == 2  # the skipped step's call is undone
    assert all(torch.isfinite(value).all() for value in after_next.values())
