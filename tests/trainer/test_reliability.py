"""Reliability in one process: non-finite losses (stop or skip), unreadable images (stop or skip) without
damage to saved checkpoints, bf16 autocast, gradient clipping, loading weights only through safetensors, and
damaged checkpoints named before resuming."""

from __future__ import annotations

import hashlib
import json
import re
import shutil
from functools import partial
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import TrainerCallback, TrainingArguments

from liaf_hf import GFLForObjectDetection, GFLImageProcessor
from liaf_hf.data import label_maps, load_coco_detection
from liaf_hf.data.collate import DetectionCollator, DetectionTransform
from liaf_hf.data.synthetic import SyntheticSpec, generate_coco_dataset
from liaf_hf.distillation import DistillationResult, Distiller
from liaf_hf.errors import DataError
from liaf_hf.trainer import LIAFDistillationTrainer
from liaf_hf.trainer.detection import DetectionTrainer
from liaf_hf.trainer.integration import configure_for_detection, detection_trainer_kwargs
from tiny import tiny_detector as shared_tiny_detector

# Three FPN levels: these tests train for real, and P6-P7 would only add time.
tiny_detector = partial(shared_tiny_detector, num_fpn_levels=3)

TINY_SPEC = SyntheticSpec(image_width=64, image_height=64, min_size=10, max_size=24, max_objects=3)


def make_shapes(root: Path, *, num_train: int = 8, num_val: int = 2) -> Path:
    return generate_coco_dataset(root, num_train=num_train, num_val=num_val, seed=2, spec=TINY_SPEC)


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    root = make_shapes(tmp_path_factory.mktemp("shapes"))
    train, val = load_coco_detection(root, "train"), load_coco_detection(root, "val")
    return train, val, label_maps(train)[0]


@pytest.fixture(scope="module")
def teacher_dir(shapes, tmp_path_factory):
    directory = tmp_path_factory.mktemp("teacher")
    tiny_detector(shapes[2], channels=48, seed=1).save_pretrained(directory)
    return directory


def training_args(output_dir: Path, **overrides) -> TrainingArguments:
    settings = dict(
        output_dir=str(output_dir),
        max_steps=3,
        per_device_train_batch_size=4,
        per_device_eval_batch_size=2,
        learning_rate=1e-3,
        weight_decay=0.05,
        report_to="none",
        save_strategy="no",
        logging_steps=1,
        seed=0,
        full_determinism=True,
        disable_tqdm=True,
    )
    return configure_for_detection(TrainingArguments(**{**settings, **overrides}))


def trainer_kwargs(train, val, model, *, skip_bad_images=False) -> dict:
    processor = GFLImageProcessor.for_model_config(model.config, size={"shortest_edge": 64, "longest_edge": 64})
    return detection_trainer_kwargs(
        image_processor=processor, train_dataset=train, eval_dataset=val, skip_bad_images=skip_bad_images
    )


class OverflowingDetector(GFLForObjectDetection):
    """A real GFL detector whose box-distribution loss overflows to inf on chosen training calls."""

    overflow_calls: tuple[int, ...] = ()

    def forward(self, *args, **kwargs):
        outputs = super().forward(*args, **kwargs)
        if self.training and outputs.loss is not None:
            self.calls = getattr(self, "calls", 0) + 1
            if self.calls in self.overflow_calls:
                outputs.loss_dict["loss_dfl"] = outputs.loss_dict["loss_dfl"] * float("inf")
                outputs.loss = sum(outputs.loss_dict.values())
        return outputs


def overflowing_detector(id2label, calls: tuple[int, ...]) -> OverflowingDetector:
    torch.manual_seed(0)
    model = OverflowingDetector(tiny_detector(id2label).config)
    model.overflow_calls = calls
    return model


class Snapshots(TrainerCallback):
    """Copies of the weights and the optimizer state after every optimizer step."""

    def __init__(self) -> None:
        self.weights: dict[int, dict[str, torch.Tensor]] = {}
        self.optimizer: dict[int, list[dict]] = {}

    def on_step_end(self, args, state, control, model=None, optimizer=None, **kwargs):
        self.weights[state.global_step] = {name: p.detach().clone() for name, p in model.named_parameters()}
        self.optimizer[state.global_step] = [
            {key: value.clone() if torch.is_tensor(value) else value for key, value in entry.items()}
            for entry in optimizer.state_dict()["state"].values()
        ]
        return control


def same_weights(first: dict[str, torch.Tensor], second: dict[str, torch.Tensor]) -> bool:
    return first.keys() == second.keys() and all(torch.equal(first[name], second[name]) for name in first)


def same_optimizer_state(first: list[dict], second: list[dict]) -> bool:
    return len(first) == len(second) and all(
        a.keys() == b.keys() and all(torch.equal(torch.as_tensor(a[k]), torch.as_tensor(b[k])) for k in a)
        for a, b in zip(first, second)
    )


# ------------------------------------------------------------------------------------ non-finite losses


def test_detection_trainer_stops_on_a_non_finite_loss_naming_component_and_step(shapes, tmp_path):
    train, val, id2label = shapes
    model = overflowing_detector(id2label, calls=(2,))
    trainer = DetectionTrainer(model=model, args=training_args(tmp_path), **trainer_kwargs(train, val, model))
    with pytest.raises(FloatingPointError, match=r"step 2: loss_dfl is not finite"):
        trainer.train()
    assert trainer.state.global_step == 1


def test_skipped_step_changes_no_weight_and_no_optimizer_state_and_is_counted(shapes, tmp_path):
    train, val, id2label = shapes
    model = overflowing_detector(id2label, calls=(2,))
    snapshots = Snapshots()
    trainer = DetectionTrainer(
        model=model,
        args=training_args(tmp_path),
        nonfinite_loss="skip",
        **trainer_kwargs(train, val, model),
    )
    trainer.add_callback(snapshots)
    result = trainer.train()
    assert trainer.state.global_step == 3
    # AdamW with zero gradients would still move every weight (momentum, weight decay): the step is skipped.
    assert same_weights(snapshots.weights[1], snapshots.weights[2])
    assert same_optimizer_state(snapshots.optimizer[1], snapshots.optimizer[2])
    assert not same_weights(snapshots.weights[2], snapshots.weights[3])
    assert result.metrics["nonfinite_steps_skipped"] == 1
    logged = [entry for entry in trainer.state.log_history if "loss" in entry]
    assert [entry["nonfinite_steps_skipped"] for entry in logged] == [0, 1, 1]
    assert all(torch.isfinite(torch.tensor(entry["loss"])) for entry in logged)
    assert all(torch.isfinite(p).all() for p in model.parameters())


class NaNAtCall(Distiller):
    """A distillation term that is NaN on chosen calls, as an overflow in a feature loss would be."""

    needs_teacher = False

    def __init__(self, calls: tuple[int, ...]) -> None:
        super().__init__()
        self.bad_calls = calls
        self.calls = 0
        self.scale = torch.nn.Parameter(torch.ones(()))

    def forward(self, *, student, teacher, batch) -> DistillationResult:
        self.calls += 1
        value = float("nan") if self.calls in self.bad_calls else 0.0
        loss = (student.fpn_features[0].float().mean() * self.scale) ** 2 * 1e-3 + value
        return DistillationResult(losses={"loss_feature": loss})


def test_distillation_skips_a_non_finite_step_like_plain_training(shapes, teacher_dir, tmp_path):
    train, val, id2label = shapes
    student = tiny_detector(id2label, seed=3)
    snapshots = Snapshots()
    trainer = LIAFDistillationTrainer(
        model=student,
        teacher=teacher_dir,
        method=NaNAtCall(calls=(2,)),
        evaluate_teacher_at_start=False,
        nonfinite_loss="skip",
        args=training_args(tmp_path),
        **trainer_kwargs(train, val, student),
    )
    trainer.add_callback(snapshots)
    result = trainer.train()
    assert same_weights(snapshots.weights[1], snapshots.weights[2])
    assert same_optimizer_state(snapshots.optimizer[1], snapshots.optimizer[2])
    assert not same_weights(snapshots.weights[2], snapshots.weights[3])
    assert result.metrics["nonfinite_steps_skipped"] == 1
    logged = [entry for entry in trainer.state.log_history if "loss" in entry]
    # Component averages leave the skipped step out, so no NaN reaches the logs.
    assert ["loss_feature" in entry for entry in logged] == [True, False, True]
    assert all(torch.isfinite(torch.tensor(entry["loss_feature"])) for entry in logged if "loss_feature" in entry)


def test_unknown_non_finite_policy_is_refused(shapes, tmp_path):
    train, val, id2label = shapes
    model = tiny_detector(id2label)
    with pytest.raises(ValueError, match="nonfinite_loss"):
        DetectionTrainer(model=model, args=training_args(tmp_path), nonfinite_loss="ignore")


# ------------------------------------------------------------------------------------ unreadable images


def truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def test_a_truncated_or_garbage_image_raises_data_error_naming_the_file(tmp_path):
    root = make_shapes(tmp_path / "shapes", num_train=3, num_val=0)
    dataset = load_coco_detection(root, "train")
    files = sorted((root / "train").iterdir())
    truncate(files[0])
    files[1].write_bytes(b"this is not an image at all")
    processor = GFLImageProcessor(size={"shortest_edge": 64, "longest_edge": 64})
    image_ids = dataset["image_id"]
    strict = DetectionTransform(processor, train=False).apply_to(dataset)
    for index in (0, 1):
        with pytest.raises(DataError, match=rf"{files[index].name}: cannot decode image id {image_ids[index]}"):
            strict[[index]]
    lenient = DetectionTransform(processor, train=False, skip_bad_images=True)
    rows = lenient.apply_to(dataset)[[0, 1, 2]]
    assert len(rows["pixel_values"]) == 1 and lenient.bad_images_skipped == 2
    assert rows["labels"][0]["image_id"].item() == image_ids[2]
    with pytest.raises(DataError, match="every image of this batch"):
        DetectionCollator(processor)(lenient.apply_to(dataset).__getitems__([0, 1]))


class CorruptAfterFirstSave(TrainerCallback):
    """Damages an image file once the first checkpoint is written, as a failing disk would, and records
    the checkpoint's file hashes at that moment."""

    def __init__(self, image: Path) -> None:
        self.image = image
        self.hashes: dict[str, str] | None = None

    def on_save(self, args, state, control, **kwargs):
        if self.hashes is None:
            checkpoint = Path(args.output_dir) / f"checkpoint-{state.global_step}"
            self.hashes = file_hashes(checkpoint)
            truncate(self.image)
        return control


def file_hashes(directory: Path) -> dict[str, str]:
    return {path.name: hashlib.sha256(path.read_bytes()).hexdigest() for path in sorted(directory.iterdir())}


@pytest.mark.parametrize("skip_bad_images", [False, True])
def test_an_image_breaking_mid_run_stops_or_is_skipped_and_saved_checkpoints_stay_intact(
    tmp_path, teacher_dir, skip_bad_images
):
    root = make_shapes(tmp_path / "shapes", num_train=8, num_val=0)
    train = load_coco_detection(root, "train")
    broken = sorted((root / "train").iterdir())[3]
    corrupt = CorruptAfterFirstSave(broken)
    student = tiny_detector(label_maps(train)[0], seed=4)
    trainer = LIAFDistillationTrainer(
        model=student,
        teacher=teacher_dir,
        method="none",
        evaluate_teacher_at_start=False,
        args=training_args(tmp_path / "run", max_steps=5, save_strategy="steps", save_steps=1),
        **trainer_kwargs(train, None, student, skip_bad_images=skip_bad_images),
    )
    trainer.add_callback(corrupt)
    if skip_bad_images:
        result = trainer.train()
        assert trainer.state.global_step == 5
        assert result.metrics["bad_images_skipped"] >= 1
    else:
        with pytest.raises(DataError, match=rf"{broken.name}: cannot decode image id"):
            trainer.train()
        assert trainer.state.global_step < 5
    first = tmp_path / "run" / "checkpoint-1"
    assert file_hashes(first) == corrupt.hashes
    reloaded = GFLForObjectDetection.from_pretrained(first)
    assert all(torch.isfinite(p).all() for p in reloaded.parameters())
    assert json.loads((first / "trainer_state.json").read_text())["global_step"] == 1


# ------------------------------------------------------------------------------- mixed precision, clipping


def test_losses_are_float32_and_finite_under_bf16_autocast(shapes):
    train, _, id2label = shapes
    model = tiny_detector(id2label).train()
    processor = GFLImageProcessor.for_model_config(model.config, size={"shortest_edge": 64, "longest_edge": 64})
    examples = DetectionTransform(processor, train=False).apply_to(train)
    batch = DetectionCollator(processor)(examples.__getitems__([0, 1, 2, 3]))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        outputs = model(**batch)
    for name, value in {"loss": outputs.loss, **outputs.loss_dict}.items():
        assert value.dtype == torch.float32, name
        assert torch.isfinite(value), name
    outputs.loss.backward()
    assert all(p.grad is None or torch.isfinite(p.grad).all() for p in model.parameters())


def test_bf16_training_steps_run_on_the_cpu_for_detection_and_distillation(shapes, teacher_dir, tmp_path):
    train, val, id2label = shapes
    model = tiny_detector(id2label)
    args = training_args(tmp_path / "plain", max_steps=1, bf16=True, use_cpu=True)
    plain = DetectionTrainer(model=model, args=args, **trainer_kwargs(train, val, model))
    plain.train()
    student = tiny_detector(id2label, seed=5)
    distilled = LIAFDistillationTrainer(
        model=student,
        teacher=teacher_dir,
        method="liaf",
        evaluate_teacher_at_start=False,
        args=training_args(tmp_path / "liaf", max_steps=1, bf16=True, use_cpu=True),
        **trainer_kwargs(train, val, student),
    )
    distilled.train()
    for trainer in (plain, distilled):
        logged = [entry for entry in trainer.state.log_history if "loss" in entry]
        assert len(logged) == 1 and all(torch.isfinite(torch.tensor(entry["loss"])) for entry in logged)
        assert all(p.dtype == torch.float32 and torch.isfinite(p).all() for p in trainer.model.parameters())
    assert "loss_liaf" in [entry for entry in distilled.state.log_history if "loss" in entry][0]


def test_gradient_clipping_is_on_by_default_and_clips_after_the_skip_guard(shapes, tmp_path):
    """The examples leave `max_grad_norm` at TrainingArguments' default, 1.0 (clipping on); the trainer's
    hook between backward and the optimizer step keeps clipping intact: with SGD the update is exactly
    lr x the clipped gradient."""
    assert TrainingArguments(output_dir=str(tmp_path)).max_grad_norm == 1.0
    train, val, id2label = shapes
    model = tiny_detector(id2label)
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    args = training_args(tmp_path, max_steps=1, optim="sgd", learning_rate=0.1, weight_decay=0.0, max_grad_norm=0.05)
    trainer = DetectionTrainer(model=model, args=args, **trainer_kwargs(train, val, model))
    trainer.train()
    assert trainer.state.log_history[0]["grad_norm"] > 0.05
    step = torch.cat([(before[name] - p.detach()).flatten() for name, p in model.named_parameters()])
    assert float(step.norm()) == pytest.approx(0.1 * 0.05, rel=1e-3)


# ------------------------------------------------------------------------------------------ safe loading


def test_resuming_from_a_pickled_checkpoint_is_refused(shapes, teacher_dir, tmp_path):
    train, val, id2label = shapes
    checkpoint = tmp_path / "run" / "checkpoint-2"
    checkpoint.mkdir(parents=True)
    torch.save(tiny_detector(id2label).state_dict(), checkpoint / "pytorch_model.bin")
    student = tiny_detector(id2label)
    trainer = LIAFDistillationTrainer(
        model=student,
        teacher=teacher_dir,
        method="none",
        evaluate_teacher_at_start=False,
        args=training_args(tmp_path / "run"),
        **trainer_kwargs(train, val, student),
    )
    with pytest.raises(ValueError, match=r"has no model.safetensors .*never pickled files"):
        trainer.train(resume_from_checkpoint=str(checkpoint))
    assert trainer.state.global_step == 0
    plain_model = tiny_detector(id2label)
    plain = DetectionTrainer(
        model=plain_model, args=training_args(tmp_path / "run"), **trainer_kwargs(train, val, plain_model)
    )
    with pytest.raises(ValueError, match=r"has no model.safetensors"):
        plain.train(resume_from_checkpoint=str(checkpoint))


@pytest.mark.parametrize("damage", ["corrupt", "truncated", "pickle_only"])
def test_a_teacher_with_unreadable_weights_is_refused_before_any_step(shapes, teacher_dir, tmp_path, damage):
    train, val, id2label = shapes
    broken = tmp_path / "teacher"
    broken.mkdir()
    (broken / "config.json").write_text((teacher_dir / "config.json").read_text())
    weights = (teacher_dir / "model.safetensors").read_bytes()
    if damage == "corrupt":
        (broken / "model.safetensors").write_bytes(b"\x00" * 64 + weights[64:])
        expected = "Could not load the teacher"
    elif damage == "truncated":
        (broken / "model.safetensors").write_bytes(weights[: len(weights) // 2])
        expected = "Could not load the teacher"
    else:
        torch.save(load_file(teacher_dir / "model.safetensors"), broken / "pytorch_model.bin")
        expected = "has no model.safetensors"
    student = tiny_detector(id2label)
    with pytest.raises(ValueError, match=expected) as error:
        LIAFDistillationTrainer(
            model=student,
            teacher=broken,
            method="none",
            args=training_args(tmp_path / "run"),
            **trainer_kwargs(train, val, student),
        )
    assert str(broken) in str(error.value)
    assert not (tmp_path / "run").exists()


# --------------------------------------------------------------------------------------- damaged checkpoints


def trained_run(shapes, teacher_dir, output_dir: Path, kind: str, *, max_steps: int = 2):
    """A detection or distillation trainer saving a checkpoint at every step of `max_steps`."""
    train, val, id2label = shapes
    model = tiny_detector(id2label, seed=6)
    args = training_args(output_dir, max_steps=max_steps, save_strategy="steps", save_steps=1)
    if kind == "detection":
        return DetectionTrainer(model=model, args=args, **trainer_kwargs(train, val, model))
    return LIAFDistillationTrainer(
        model=model,
        teacher=teacher_dir,
        method="liaf",
        evaluate_teacher_at_start=False,
        args=args,
        **trainer_kwargs(train, val, model),
    )


@pytest.fixture(scope="module")
def saved_runs(shapes, teacher_dir, tmp_path_factory) -> dict[str, Path]:
    """Output folders of a finished 2-step detection run and distillation run: checkpoint-1 and checkpoint-2."""
    runs = {}
    for kind in ("detection", "distillation"):
        runs[kind] = tmp_path_factory.mktemp(kind)
        trained_run(shapes, teacher_dir, runs[kind], kind).train()
    return runs


def truncated(data: bytes) -> bytes:
    return data[: len(data) // 2]


def garbage(data: bytes) -> bytes:
    return bytes(len(data))  # all zero bytes: a safetensors header of length 0, no zip or pickle at all


@pytest.mark.parametrize(
    ("kind", "name", "damage"),
    [
        ("detection", "model.safetensors", truncated),
        ("detection", "optimizer.pt", truncated),
        ("detection", "optimizer.pt", garbage),
        ("detection", "scheduler.pt", garbage),
        ("detection", "rng_state.pth", truncated),
        ("detection", "trainer_state.json", truncated),
        ("distillation", "distiller.safetensors", truncated),
        ("distillation", "model.safetensors", garbage),
        ("distillation", "rng_state.pth", garbage),
        ("distillation", "scheduler.pt", truncated),
    ],
)
def test_a_damaged_checkpoint_file_is_named_before_the_first_resumed_step(
    shapes, teacher_dir, saved_runs, tmp_path, kind, name, damage
):
    run = tmp_path / "run"
    shutil.copytree(saved_runs[kind], run)
    damaged = run / "checkpoint-2" / name
    damaged.write_bytes(damage(damaged.read_bytes()))
    trainer = trained_run(shapes, teacher_dir, run, kind, max_steps=4)
    with pytest.raises(DataError, match=re.escape(str(damaged)) + " is truncated or corrupt") as error:
        trainer.train(resume_from_checkpoint=str(run / "checkpoint-2"))
    assert f"Resume from an earlier checkpoint instead: --resume_from_checkpoint {run / 'checkpoint-1'}" in str(
        error.value
    )
    assert "weights_only" not in str(error.value), "no advice to unpickle arbitrary code"
    assert trainer.state.global_step == 0


def test_a_checkpoint_without_its_trainer_state_is_refused_naming_it(shapes, teacher_dir, saved_runs, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(saved_runs["detection"], run)
    (run / "checkpoint-1" / "trainer_state.json").unlink()
    trainer = trained_run(shapes, teacher_dir, run, "detection", max_steps=3)
    with pytest.raises(DataError, match=r"checkpoint-1 has no trainer_state.json.*no earlier checkpoint beside it"):
        trainer.train(resume_from_checkpoint=str(run / "checkpoint-1"))
    # The intact later checkpoint resumes.
    trainer.train(resume_from_checkpoint=str(run / "checkpoint-2"))
    assert trainer.state.global_step == 3
