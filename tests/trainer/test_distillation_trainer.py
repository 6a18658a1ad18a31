"""LIAFDistillationTrainer: a frozen teacher, a plain saved student, checkpoints that resume exactly."""

import json
import logging
import os
import traceback

import pytest
import torch
import torch._dynamo
from safetensors.torch import load_file, save_file
from torch._dynamo.utils import counters
from torch.utils._python_dispatch import TorchDispatchMode
from transformers import TrainerCallback

from liaf_hf import GFLForObjectDetection
from liaf_hf.distillation import DistillationResult, Distiller
from liaf_hf.trainer import DistillationModel, DistillationOutput, inherit_from_teacher
from tiny import load_example, make_distillation_trainer, tiny_detector


class StopAfter(TrainerCallback):
    """Ends training after a given step, as an interruption would (the checkpoint of that step is kept)."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step >= self.step:
            control.should_training_stop = True
            control.should_save = True
        return control


def test_teacher_is_frozen_and_the_saved_student_is_plain(shapes, teacher_dir, tmp_path):
    trainer = make_distillation_trainer(shapes, teacher_dir, tmp_path / "run", evaluate_teacher_at_start=True)
    teacher_before = {k: v.clone() for k, v in trainer.teacher.state_dict().items()}
    student_before = {k: v.clone() for k, v in trainer.student.state_dict().items()}
    trainer.train()
    assert "teacher_AP" in trainer.teacher_metrics
    teacher_after = trainer.teacher.state_dict()
    assert all(torch.equal(teacher_before[k], teacher_after[k]) for k in teacher_before)
    assert any(not torch.equal(student_before[k], v) for k, v in trainer.student.state_dict().items())
    assert not any(p.requires_grad for p in trainer.teacher.parameters())
    assert all(not name.startswith("_teacher") for name, _ in trainer.model.named_parameters())

    trainer.save_model(str(tmp_path / "final"))
    saved = load_file(str(tmp_path / "final" / "model.safetensors"))
    # The keys a plain detector's folder holds, nothing of the distillation.
    GFLForObjectDetection(trainer.student.config).save_pretrained(tmp_path / "plain")
    assert set(saved) == set(load_file(str(tmp_path / "plain" / "model.safetensors")))
    assert not (tmp_path / "final" / "distiller.safetensors").exists()
    reloaded = GFLForObjectDetection.from_pretrained(tmp_path / "final")
    assert all(torch.equal(reloaded.state_dict()[k], v) for k, v in trainer.student.state_dict().items())
    assert (tmp_path / "run" / "checkpoint-2" / "distiller.safetensors").exists()


def test_evaluation_scores_the_student_only(shapes, teacher_dir, tmp_path):
    trainer = make_distillation_trainer(shapes, teacher_dir, tmp_path / "run", evaluate_teacher_at_start=False)
    metrics = trainer.evaluate()
    assert "eval_AP" in metrics and not any("liaf" in key for key in metrics)


def test_loss_components_are_logged(shapes, teacher_dir, tmp_path):
    trainer = make_distillation_trainer(shapes, teacher_dir, tmp_path / "run", evaluate_teacher_at_start=False)
    trainer.train()
    logged = [entry for entry in trainer.state.log_history if "loss" in entry]
    assert logged and {"loss_qfl", "loss_dfl", "loss_giou"} <= set(logged[0])


def test_logged_components_are_each_averaged_over_the_steps_that_had_them(shapes, teacher_dir, tmp_path):
    """LIAF-KD reports no statistics on a step without instances: such a step must not pull their averages
    toward 0."""
    trainer = make_distillation_trainer(shapes, teacher_dir, tmp_path / "run", method="liaf")

    def step(loss_liaf, stats):
        loss = torch.tensor(loss_liaf)
        return DistillationOutput(
            loss=loss, loss_dict={"loss_liaf": loss}, stats={k: torch.tensor(v) for k, v in stats.items()}
        )

    trainer.record_loss_components(step(1.0, {"liaf/weight_max_l0": 3.0}))
    trainer.record_loss_components(step(2.0, {}))
    trainer.record_loss_components(step(6.0, {"liaf/weight_max_l0": 5.0}))
    trainer.log({"loss": 1.0})
    logged = trainer.state.log_history[-1]
    assert logged["loss_liaf"] == pytest.approx(3.0) and logged["liaf/weight_max_l0"] == pytest.approx(4.0)
    trainer.log({"loss": 1.0})  # a new interval starts empty
    assert "loss_liaf" not in trainer.state.log_history[-1]


class ReadBackCounter(TorchDispatchMode):
    """Counts the operations of liaf_hf's code that make the host wait for the device on a GPU: a value read
    back, and a result whose size depends on the data (`nonzero`, a boolean mask's selection)."""

    WAITING = frozenset({"_local_scalar_dense", "nonzero", "masked_select", "_unique2", "unique_consecutive"})

    def __init__(self) -> None:
        super().__init__()
        self.sites: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = func.overloadpacket.__name__
        masked = name in ("index", "index_put", "index_put_") and any(
            isinstance(index, torch.Tensor) and index.dtype == torch.bool for index in (args[1] or ())
        )
        if name in self.WAITING or masked:
            # The innermost caller outside torch: liaf_hf's, or another library's (transformers' own checks).
            stack = traceback.extract_stack()[:-1]  # without this frame
            caller = [frame for frame in stack if f"{os.sep}torch{os.sep}" not in frame.filename][-1]
            if f"{os.sep}liaf_hf{os.sep}" in caller.filename:
                self.sites.append(f"{name} at {os.path.basename(caller.filename)}:{caller.lineno}")
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("method", ["liaf", "ld"])
def test_a_training_step_reads_back_only_the_finiteness_of_its_loss(shapes, teacher_dir, tmp_path, method):
    """Between logging steps the host waits for the device twice a step in liaf_hf's code: the non-finite
    guard and the check of the batch's labels (each names what is wrong), nothing else: the GFL loss and LD
    use the positive anchors as a mask, without counting or picking them."""
    trainer = make_distillation_trainer(
        shapes, teacher_dir, tmp_path / "run", method=method, max_steps=3, evaluate_teacher_at_start=False
    )
    trainer.args.logging_steps, trainer.args.save_strategy = 100, "no"
    with ReadBackCounter() as counter:
        trainer.train()
    assert len(counter.sites) == 2 * 3, counter.sites


def test_teacher_with_other_classes_is_refused(shapes, tmp_path):
    other = tmp_path / "other"
    tiny_detector({0: "cat", 1: "dog"}).save_pretrained(other)
    with pytest.raises(ValueError, match="same classes"):
        make_distillation_trainer(shapes, other, tmp_path / "run")
    # Built directly too: a step converts the labels once, with the student's classes, for both detectors.
    with pytest.raises(ValueError, match="same classes"):
        DistillationModel(
            student=tiny_detector(shapes[2]), teacher=tiny_detector({0: "cat", 1: "dog"}), distiller=torch.nn.Module()
        )


def test_teacher_checkpoint_with_missing_weights_is_refused(shapes, teacher_dir, tmp_path):
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "config.json").write_text((teacher_dir / "config.json").read_text())
    weights = load_file(str(teacher_dir / "model.safetensors"))
    weights.pop(next(k for k in weights if k.startswith("head.")))
    save_file(weights, str(broken / "model.safetensors"), metadata={"format": "pt"})
    with pytest.raises(ValueError, match="missing_keys"):
        make_distillation_trainer(shapes, broken, tmp_path / "run")


def test_inheriting_copies_matching_neck_and_head(shapes):
    _, _, id2label = shapes
    teacher = tiny_detector(id2label, backbone="resnet34", seed=3)
    student = tiny_detector(id2label, seed=4)
    copied = inherit_from_teacher(student, teacher)
    assert copied and all(name.startswith(("model.neck.", "head.")) for name in copied)
    # resnet34 and resnet18 share channel counts, so every neck and head tensor fits.
    assert torch.equal(student.head.class_logits.weight, teacher.head.class_logits.weight)
    assert not torch.equal(student.backbone.body.conv1.weight, teacher.backbone.body.conv1.weight)


@pytest.mark.parametrize("method", ["none", "liaf"])
def test_resumed_run_matches_uninterrupted_run(shapes, teacher_dir, tmp_path, method):
    def trainer(directory):
        return make_distillation_trainer(
            shapes, teacher_dir, tmp_path / directory, method=method, max_steps=4, evaluate_teacher_at_start=False
        )

    full = trainer("full")
    full.train()
    interrupted = trainer("part")
    interrupted.add_callback(StopAfter(2))
    interrupted.train()
    assert interrupted.state.global_step == 2
    resumed = trainer("part")
    resumed.train(resume_from_checkpoint=str(tmp_path / "part" / "checkpoint-2"))
    for name, value in full.student.state_dict().items():
        assert torch.equal(value, resumed.student.state_dict()[name]), name
    resumed_distiller = resumed.distillation_model.distiller.state_dict()
    for name, value in full.distillation_model.distiller.state_dict().items():
        assert torch.equal(value, resumed_distiller[name]), name
    state = json.loads((tmp_path / "part" / "checkpoint-4" / "trainer_state.json").read_text())
    assert state["global_step"] == 4


def test_resuming_under_another_method_or_other_settings_is_refused_naming_them(shapes, teacher_dir, tmp_path):
    def trainer(**method):
        return make_distillation_trainer(
            shapes, teacher_dir, tmp_path / "run", max_steps=4, evaluate_teacher_at_start=False, **method
        )

    interrupted = trainer(method="liaf", method_options={"entropy_weight": 0.1})
    interrupted.add_callback(StopAfter(2))
    interrupted.train()
    checkpoint = str(tmp_path / "run" / "checkpoint-2")
    # The defaults of today (entropy 1.0) are not what the checkpoint ran with: no silent switch.
    changed = trainer(method="liaf")
    refusal = (
        r"checkpoint-2 was trained with other 'liaf' settings .*entropy_weight: 0\.1 in the checkpoint, 1\.0 now\)\. "
        r"To continue it, pass .*\"entropy_weight\": 0\.1"
    )
    with pytest.raises(ValueError, match=refusal):
        changed.train(resume_from_checkpoint=checkpoint)
    assert changed.state.global_step == 0
    with pytest.raises(ValueError, match=r"trained with distillation method 'liaf'; this run is set up for 'aid'"):
        trainer(method="aid").train(resume_from_checkpoint=checkpoint)
    same = trainer(method="liaf", method_options={"entropy_weight": 0.1})
    same.train(resume_from_checkpoint=checkpoint)
    assert same.state.global_step == 4


def test_a_checkpoint_that_does_not_record_its_method_still_resumes_with_a_warning(
    shapes, teacher_dir, tmp_path, caplog
):
    def trainer():
        return make_distillation_trainer(
            shapes, teacher_dir, tmp_path / "run", method="liaf", max_steps=4, evaluate_teacher_at_start=False
        )

    interrupted = trainer()
    interrupted.add_callback(StopAfter(2))
    interrupted.train()
    # As liaf-hf wrote it before checkpoints recorded the method.
    distiller_file = tmp_path / "run" / "checkpoint-2" / "distiller.safetensors"
    save_file(load_file(distiller_file), distiller_file, metadata={"format": "pt"})
    resumed = trainer()
    with caplog.at_level(logging.WARNING, logger="liaf_hf.distillation"):
        resumed.train(resume_from_checkpoint=str(distiller_file.parent))
    assert resumed.state.global_step == 4
    assert "checkpoint-2 does not record its distillation settings" in caplog.text


def test_distillation_model_hides_the_teacher(shapes):
    _, _, id2label = shapes
    wrapper = DistillationModel(
        student=tiny_detector(id2label),
        teacher=tiny_detector(id2label, seed=2),
        distiller=torch.nn.Module(),
    )
    assert all(name.startswith(("student.", "distiller.")) for name in wrapper.state_dict())


@pytest.mark.parametrize("objective", ["robust", "task", "lookahead"])
def test_liaf_trains_its_selectors_and_align_convs_and_logs_their_weights(shapes, teacher_dir, tmp_path, objective):
    # "task" reads the gradient of the student's own GFL loss on its FPN maps, through the real detector;
    # "lookahead" the held-out directions, which the trainer computes with the real student.
    trainer = make_distillation_trainer(
        shapes,
        teacher_dir,
        tmp_path / "run",
        method="liaf",
        method_options={"objective": objective},
        evaluate_teacher_at_start=False,
    )
    distiller = trainer.distillation_model.distiller
    # The resnet34 teacher is 48 wide, the student 32: the distiller owns one align conv per level.
    assert all(isinstance(conv, torch.nn.Conv2d) for conv in distiller.aligner.convs)
    teacher_before = {k: v.clone() for k, v in trainer.teacher.state_dict().items()}
    distiller_before = {k: v.clone() for k, v in distiller.state_dict().items()}
    trainer.train()
    after = distiller.state_dict()
    for name in ("selector.selector_vectors", "selector.embed.0.weight", "aligner.convs.0.weight"):
        assert not torch.equal(distiller_before[name], after[name]), name
    assert all(torch.equal(v, trainer.teacher.state_dict()[k]) for k, v in teacher_before.items())
    logged = [entry for entry in trainer.state.log_history if "loss" in entry]
    assert {"loss_liaf", "loss_liaf_div", "liaf/weight_entropy_l0", "liaf/weight_max_l4"} <= set(logged[0])
    assert ("liaf/alignment_gain_l0" in logged[0]) == (objective in ("task", "lookahead"))
    saved = tmp_path / "final"
    trainer.save_model(str(saved))
    # Saved in the layout every GFL checkpoint has: the base model's keys without `model.`.
    saved_keys = {key.removeprefix("model.") for key in trainer.student.state_dict()}
    assert set(load_file(str(saved / "model.safetensors"))) == saved_keys


def test_selector_gradient_comes_from_the_student_features(shapes, teacher_dir, tmp_path):
    """One forward/backward of the trained module: the selectors and the student's FPN receive gradient
    from the LIAF loss; the frozen teacher receives none."""
    trainer = make_distillation_trainer(
        shapes, teacher_dir, tmp_path / "run", method="liaf", evaluate_teacher_at_start=False
    )
    model = trainer.distillation_model.train()
    inputs = next(iter(trainer.get_train_dataloader()))
    outputs = model(**inputs)
    outputs.loss_dict["loss_liaf"].backward()
    selector_grads = [p.grad for p in model.distiller.selector.parameters()]
    assert all(grad is not None and grad.abs().sum() > 0 for grad in selector_grads)
    assert model.student.neck.parameters().__next__().grad.abs().sum() > 0
    assert all(p.grad is None for p in model.teacher.parameters())


@pytest.mark.parametrize(("method", "runs_head"), [("liaf", False), ("mimic", False), ("ld", True), ("liaf+ld", True)])
def test_feature_methods_run_the_teacher_without_its_head(shapes, teacher_dir, tmp_path, method, runs_head):
    """A method that compares FPN maps only gets the teacher's backbone and FPN (its head's launches and
    outputs saved), and its losses are those it computes from the teacher's full output."""
    trainer = make_distillation_trainer(
        shapes, teacher_dir, tmp_path / "run", method=method, evaluate_teacher_at_start=False
    )
    model = trainer.distillation_model.train()
    inputs = next(iter(trainer.get_train_dataloader()))
    head_calls = []
    hook = model.teacher.head.register_forward_hook(lambda *_: head_calls.append(1))
    seen = {}
    distiller_forward = model.distiller.forward

    def record(*, student, teacher, batch):
        seen["teacher"] = teacher
        result = distiller_forward(student=student, teacher=teacher, batch=batch)
        with torch.no_grad():
            full_teacher = model.teacher(pixel_values=inputs["pixel_values"], pixel_mask=inputs["pixel_mask"])
            seen["with_full_teacher"] = distiller_forward(student=student, teacher=full_teacher, batch=batch)
        return result

    model.distiller.forward = record
    try:
        with torch.no_grad():
            outputs = model(**inputs)
    finally:
        hook.remove()
    # The hook counts the run inside `record` too: one call there, one more when the step ran the head.
    assert len(head_calls) == 1 + int(runs_head)
    assert (seen["teacher"].class_logits is not None) == runs_head
    for name, value in seen["with_full_teacher"].losses.items():
        torch.testing.assert_close(outputs.loss_dict[name], value)


@pytest.mark.parametrize("method", ["liaf", "aid", "ld"])
def test_a_distillation_step_converts_the_labels_once(shapes, teacher_dir, tmp_path, method):
    """The student's loss, the distiller's batch, LD's positive anchors and AID's teacher loss share one
    conversion of the labels to pixels (each costs a few dozen kernel launches and a wait on a GPU)."""
    trainer = make_distillation_trainer(
        shapes, teacher_dir, tmp_path / "run", method=method, evaluate_teacher_at_start=False
    )
    model = trainer.distillation_model.train()
    inputs = next(iter(trainer.get_train_dataloader()))
    conversions = []
    for detector in (model.student, model.teacher):
        convert = detector.labels_in_pixels
        detector.labels_in_pixels = lambda *args, convert=convert: conversions.append(1) or convert(*args)
    outputs = model(**inputs)
    assert len(conversions) == 1
    assert torch.isfinite(outputs.loss)


def test_teacher_and_student_of_different_timm_families(shapes):
    """A ConvNeXt teacher 48 wide and a MobileNet student 32 wide: the align convs bridge the widths and one
    LIAF step trains the student and the selectors."""
    from liaf_hf.distillation import build_distiller

    _, _, id2label = shapes
    teacher = tiny_detector(id2label, backbone="convnext_atto", channels=48, seed=6).eval().requires_grad_(False)
    student = tiny_detector(id2label, backbone="mobilenetv3_small_100", channels=32, seed=7)
    distiller = build_distiller("liaf", student_config=student.config, teacher_config=teacher.config)
    model = DistillationModel(student=student, teacher=teacher, distiller=distiller).train()
    labels = [
        {"class_labels": torch.tensor([0, 1]), "boxes": torch.tensor([[0.5, 0.5, 0.4, 0.3], [0.2, 0.3, 0.2, 0.2]])},
        {"class_labels": torch.tensor([2]), "boxes": torch.tensor([[0.6, 0.4, 0.3, 0.5]])},
    ]
    outputs = model(pixel_values=torch.randn(2, 3, 64, 96), labels=labels)
    assert torch.isfinite(outputs.loss) and float(outputs.loss_dict["loss_liaf"]) > 0
    outputs.loss.backward()
    assert all(conv.weight.grad is not None for conv in distiller.aligner.convs)
    assert student.backbone.body.conv_stem.weight.grad.abs().sum() > 0
    assert all(p.grad is None for p in teacher.parameters())


class BrokenDistiller(Distiller):
    """Returns a NaN loss from the second step on, as an overflow would."""

    needs_teacher = False

    def __init__(self) -> None:
        super().__init__()
        self.calls = 0

    def forward(self, *, student, teacher, batch) -> DistillationResult:
        self.calls += 1
        value = float("nan") if self.calls >= 2 else 0.0
        return DistillationResult(losses={"loss_broken": student.fpn_features[0].sum() * 0 + value})


def test_non_finite_loss_stops_training_naming_component_and_step(shapes, teacher_dir, tmp_path):
    trainer = make_distillation_trainer(
        shapes, teacher_dir, tmp_path / "run", method=BrokenDistiller(), max_steps=3, evaluate_teacher_at_start=False
    )
    with pytest.raises(FloatingPointError, match=r"step 2: loss_broken is not finite"):
        trainer.train()


def test_a_compiled_distiller_trains_as_the_eager_one(shapes, teacher_dir, tmp_path):
    """`compile_distiller=True` changes how the loss runs, not what it is: the same logged losses step by step,
    and a checkpoint with the same tensors."""

    def trainer(name, compile_distiller):
        run = make_distillation_trainer(
            shapes,
            teacher_dir,
            tmp_path / name,
            method="liaf",
            max_steps=3,
            evaluate_teacher_at_start=False,
            compile_distiller=compile_distiller,
        )
        run.args.save_strategy = "no"
        run.train()
        return run

    torch._dynamo.reset()
    counters.clear()
    eager = trainer("eager", False)
    assert not counters["stats"]["unique_graphs"]
    compiled = trainer("compiled", True)
    assert counters["stats"]["unique_graphs"] >= 1  # the loss was compiled
    eager_logs = [entry for entry in eager.state.log_history if "loss_liaf" in entry]
    compiled_logs = [entry for entry in compiled.state.log_history if "loss_liaf" in entry]
    assert len(eager_logs) == len(compiled_logs) == 3
    for step, (want, got) in enumerate(zip(eager_logs, compiled_logs)):
        for name in ("loss", "loss_liaf", "loss_liaf_div", "loss_liaf_entropy", "liaf/weight_max_l0"):
            assert got[name] == pytest.approx(want[name], rel=1e-3, abs=1e-5), (step, name)
    assert eager.model.state_dict().keys() == compiled.model.state_dict().keys()


@pytest.mark.parametrize(
    ("method", "options", "message"),
    [
        ("liaf", '{"alpah": 2.0}', r"'liaf' has no options \['alpah'\]; its options .*'alpha': 10\.0"),
        ("liaf", '{"alpha": "2"}', r"Option 'alpha' of method 'liaf' must be a number \(default 10\.0\), got '2'"),
        ("liaf", '{"num_selectors": 2.5}', r"'num_selectors' of method 'liaf' must be an integer \(default 6\)"),
        ("liaf", '{"use_scale": "yes"}', r"'use_scale' of method 'liaf' must be true or false"),
        ("liaf+ld", '{"weight": 0.5}', r"'liaf\+ld' has no options \['weight'\]: .*keyed by part name"),
        ("liaf+ld", '{"ld": {"weight": null}}', r"Option 'weight' of method 'ld' must be a number"),
        ("oracle", '{"facts_file": 3}', r"'facts_file' of method 'oracle' must be a string or null"),
    ],
)
def test_method_options_are_checked_before_the_data_and_the_teacher_load(tmp_path, method, options, message):
    data_dir = tmp_path / "data"
    with pytest.raises(ValueError, match=r"--method_options: .*" + message):
        load_example("distill").main(
            [
                "--teacher_model_name_or_path", str(tmp_path / "no-teacher"), "--method", method,
                "--method_options", options, "--data_dir", str(data_dir), "--generate_synthetic", "easy",
                "--synthetic_num_train", "2", "--synthetic_num_val", "1",
                "--output_dir", str(tmp_path / "run"), "--do_train", "--max_steps", "1",
            ]
        )  # fmt: skip
    assert not data_dir.exists() and not (tmp_path / "run").exists()


def test_the_trainer_checks_method_options_as_the_command_line_does(shapes, teacher_dir, tmp_path):
    with pytest.raises(ValueError, match=r"Option 'alpha' of method 'liaf' must be a number \(default 10\.0\)"):
        make_distillation_trainer(shapes, teacher_dir, tmp_path, method="liaf", method_options={"alpha": [1]})


def test_lookahead_with_one_image_per_batch_is_refused_before_the_first_step(shapes, teacher_dir, tmp_path):
    from transformers import TrainingArguments

    from liaf_hf.trainer import LIAFDistillationTrainer

    train, _, id2label = shapes
    args = TrainingArguments(output_dir=str(tmp_path), per_device_train_batch_size=1, report_to="none", max_steps=1)
    with pytest.raises(ValueError, match="per_device_train_batch_size of at least 2, got 1"):
        LIAFDistillationTrainer(
            model=tiny_detector(id2label),
            teacher=teacher_dir,
            method="liaf",
            method_options={"objective": "lookahead"},
            args=args,
            train_dataset=train,
        )
    assert not any(tmp_path.iterdir())  # nothing written
