"""`LIAFDistillationTrainer`: `transformers.Trainer` that distils a frozen teacher into the student.

What the Trainer optimises, checkpoints and wraps for multi-process training is a `DistillationModel`
holding the student and the distiller (align convs, selectors: parameters that must train and sync with
the student). The frozen teacher is held outside that module tree, so it never reaches the optimizer,
the checkpoints, DDP or the published student. `save_model` writes a plain GFL directory.
"""

from __future__ import annotations

import copy
import json
import logging
import os
from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file
from torch import nn
from transformers import Trainer
from transformers.trainer import TRAINING_ARGS_NAME
from transformers.utils import SAFE_WEIGHTS_NAME, ModelOutput

from ..distillation.base import DistillationBatch, Distiller, MethodConfig, build_distiller, method_settings
from ..models.gfl.modeling_gfl import GFLForObjectDetection, GFLObjectDetectionOutput, GFLTargets
from ._held_out import held_out_directions
from .checkpoints import check_checkpoint, require_safetensors_checkpoint
from .detection import DetectionTrainer

logger = logging.getLogger(__name__)

DISTILLER_WEIGHTS_NAME = "distiller.safetensors"
#: Key of the distiller file's safetensors metadata that records the method and every setting it ran with.
DISTILLER_SETTINGS_KEY = "liaf_hf_method"


def _flat_settings(settings: dict, prefix: str = "") -> dict:
    """{"liaf": {"alpha": 10}} -> {"liaf.alpha": 10}: a combined method's settings as one level of names."""
    flat = {}
    for name, value in settings.items():
        if isinstance(value, dict):
            flat.update(_flat_settings(value, f"{prefix}{name}."))
        else:
            flat[f"{prefix}{name}"] = value
    return flat


def check_resumed_method(checkpoint: str, recorded: dict | None, current: dict | None) -> None:
    """Refuse to resume a distillation checkpoint under another method or other method settings.

    `recorded` is what the checkpoint's distiller file says it ran with (`{"method": ..., "settings": ...}`),
    `current` what this trainer was built with; either is None when unknown (a checkpoint written before
    liaf-hf recorded it, a `Distiller` passed in built). A changed setting would otherwise continue silently,
    e.g. a default changed by an upgrade: LIAF-KD's `entropy_weight` went from 0.1 to 1.0.
    """
    if current is None:
        return
    if recorded is None:
        logger.warning(
            "Checkpoint %s does not record its distillation settings (written before liaf-hf recorded them); "
            "resuming with %s.",
            checkpoint,
            current,
        )
        return
    current = json.loads(json.dumps(current))  # as the checkpoint stores it (tuples read back as lists)
    if recorded["method"] != current["method"]:
        raise ValueError(
            f"Checkpoint {checkpoint} was trained with distillation method {recorded['method']!r}; this run is "
            f"set up for {current['method']!r}. Resume it with the same method, or start a new run."
        )
    before, now = _flat_settings(recorded["settings"]), _flat_settings(current["settings"])
    changed = [
        f"{name}: {before.get(name, '(absent)')!r} in the checkpoint, {now.get(name, '(absent)')!r} now"
        for name in sorted(set(before) | set(now))
        if before.get(name) != now.get(name)
    ]
    if changed:
        raise ValueError(
            f"Checkpoint {checkpoint} was trained with other {current['method']!r} settings than this run's "
            f"({'; '.join(changed)}). To continue it, pass the checkpoint's values as method options "
            f"(--method_options or method_options=): {json.dumps(recorded['settings'])}."
        )


def recorded_method(distiller_file: str) -> dict | None:
    """The method and settings a checkpoint's distiller file was written with, or None if it has none."""
    with safe_open(distiller_file, framework="pt") as weights:
        text = (weights.metadata() or {}).get(DISTILLER_SETTINGS_KEY)
    return json.loads(text) if text else None


@dataclass
class DistillationOutput(ModelOutput):
    """Training output of a `DistillationModel`.

    Args:
        loss: student loss plus the weighted distillation losses.
        loss_dict: every loss component (the student's `loss_qfl`, `loss_dfl`, `loss_giou` and the
            distiller's), weighted as they enter `loss`.
        stats: the distiller's detached statistics.
    """

    loss: torch.FloatTensor | None = None
    loss_dict: dict | None = None
    stats: dict | None = None


def load_teacher(teacher: GFLForObjectDetection | str | os.PathLike) -> GFLForObjectDetection:
    """The teacher, loaded strictly when given as a path: any missing, unexpected or mismatched weight is
    an error, since a teacher that silently kept random weights makes distillation worse than none. Weights
    are read only from `model.safetensors`: a pickled `pytorch_model.bin` from elsewhere could run code."""
    if isinstance(teacher, GFLForObjectDetection):
        return teacher
    path = Path(teacher)
    if not (path / "config.json").is_file():
        raise ValueError(f"Teacher directory {path} has no config.json; expected a saved GFL model.")
    require_safetensors_checkpoint(path, what="Teacher directory")
    try:
        model, info = GFLForObjectDetection.from_pretrained(path, output_loading_info=True, use_safetensors=True)
    except (OSError, ValueError, RuntimeError, SafetensorError) as error:
        raise ValueError(f"Could not load the teacher from {path}: {error}") from error
    problems = {key: info.get(key) for key in ("missing_keys", "unexpected_keys", "mismatched_keys") if info.get(key)}
    if problems:
        raise ValueError(f"Teacher checkpoint {path} does not match its config: {problems}")
    return model


def check_teacher_fits(student: GFLForObjectDetection, teacher: GFLForObjectDetection) -> None:
    """Refuse a teacher that cannot teach this student, naming what differs."""
    if student.config.id2label != teacher.config.id2label:
        raise ValueError(
            f"Teacher and student must predict the same classes; teacher id2label = {teacher.config.id2label}, "
            f"student id2label = {student.config.id2label}."
        )


def inherit_from_teacher(student: GFLForObjectDetection, teacher: GFLForObjectDetection) -> list[str]:
    """Copy the teacher's neck and head weights into the student where names and shapes match
    ("inheriting", as FGD and the paper's group do). Returns the names copied."""
    teacher_state = teacher.state_dict()
    copied = []
    with torch.no_grad():
        for name, tensor in student.state_dict().items():
            if not name.startswith(("model.neck.", "head.")):
                continue
            source = teacher_state.get(name)
            if source is not None and source.shape == tensor.shape:
                tensor.copy_(source)
                copied.append(name)
    return copied


def _image_ids(labels: list[dict]) -> list[int]:
    """Each image's `image_id` from the processor's labels; refused when one has none."""
    missing = [index for index, target in enumerate(labels) if "image_id" not in target]
    if missing:
        raise ValueError(
            f"The distillation method reads each image's id, but labels {missing} have no 'image_id' (the image "
            "processor writes it from the annotations' image_id)."
        )
    return [int(target["image_id"]) for target in labels]


class DistillationModel(nn.Module):
    """The module the Trainer trains: `student` and `distiller`. The teacher is attached but not
    registered as a submodule.

    In training mode with labels, `forward` returns a `DistillationOutput`; otherwise (evaluation,
    inference) it returns the student's own `GFLObjectDetectionOutput`, so evaluation scores the student
    alone and skips every distillation term.
    """

    main_input_name = "pixel_values"

    def __init__(self, *, student: GFLForObjectDetection, teacher: GFLForObjectDetection, distiller: Distiller) -> None:
        super().__init__()
        # The step converts the labels once, with the student's classes, for the teacher's loss too.
        check_teacher_fits(student, teacher)
        self.student = student
        self.distiller = distiller
        # A plain attribute in a tuple: nn.Module registers Modules assigned directly, which would put the
        # teacher in state_dict, the optimizer and DDP.
        self._teacher = (teacher,)
        #: Training progress in [0, 1], set by the trainer before each step.
        self.progress = 0.0

    @property
    def teacher(self) -> GFLForObjectDetection:
        return self._teacher[0]

    @property
    def config(self):
        return self.student.config

    def forward(
        self,
        pixel_values: torch.Tensor,
        pixel_mask: torch.Tensor | None = None,
        labels: list[dict] | None = None,
    ) -> DistillationOutput | GFLObjectDetectionOutput:
        if labels is None or not self.training:
            return self.student(pixel_values=pixel_values, pixel_mask=pixel_mask, labels=labels)
        # Checked and converted once for the student's loss, the distiller and the teacher's loss (the two
        # detectors share their classes and see the same input).
        targets = self.student.prepare_targets(labels, pixel_values, pixel_mask)
        teacher_output, student_output = self.detector_outputs(pixel_values, pixel_mask, targets)
        batch = self.distillation_batch(pixel_values, pixel_mask, targets, student_output)
        if self.distiller.needs_image_ids:
            batch.image_ids = _image_ids(labels)
        if self.distiller.needs_held_out_directions:
            batch.held_out_directions = held_out_directions(self.student, pixel_values, pixel_mask, labels)
        result = self.distiller(student=student_output, teacher=teacher_output, batch=batch)
        loss = student_output.loss + sum(result.losses.values(), torch.zeros_like(student_output.loss))
        return DistillationOutput(
            loss=loss, loss_dict={**student_output.loss_dict, **result.losses}, stats=dict(result.stats)
        )

    def detector_outputs(
        self, pixel_values: torch.Tensor, pixel_mask: torch.Tensor | None, targets: GFLTargets
    ) -> tuple[GFLObjectDetectionOutput | None, GFLObjectDetectionOutput]:
        """The teacher's output (None when the method needs none) and the student's on one batch, each with
        what the distiller reads of it: the teacher's head, loss or per-instance losses, the student's
        per-instance losses.

        Args:
            pixel_values: (B, 3, H, W) padded images.
            pixel_mask: (B, H, W), 1 on real pixels; None when nothing is padded.
            targets: the student's `prepare_targets` of the batch's labels.
        """
        teacher_output = None
        if self.distiller.needs_teacher:
            # The teacher runs first: its activations are freed before the student's graph is built, so the
            # step's peak memory is the student's plus the teacher's outputs (run second, the teacher's
            # activations would come on top of the student's graph, which is kept for the backward pass).
            with torch.no_grad():
                teacher_loss = self.distiller.needs_teacher_loss or self.distiller.needs_teacher_instance_losses
                if self.distiller.needs_teacher_head or teacher_loss:
                    # Labels only when the method weighs by the teacher's own loss: they cost an assignment.
                    teacher_output = self.teacher(
                        pixel_values=pixel_values,
                        pixel_mask=pixel_mask,
                        labels=targets if teacher_loss else None,
                        output_instance_losses=self.distiller.needs_teacher_instance_losses,
                    )
                else:
                    teacher_output = GFLObjectDetectionOutput(
                        fpn_features=tuple(self.teacher.forward_features(pixel_values))
                    )
        student_output = self.student(
            pixel_values=pixel_values,
            pixel_mask=pixel_mask,
            labels=targets,
            output_instance_losses=self.distiller.needs_student_instance_losses,
        )
        return teacher_output, student_output

    def distillation_batch(
        self,
        pixel_values: torch.Tensor,
        pixel_mask: torch.Tensor | None,
        labels: list[dict] | GFLTargets,
        student_output: GFLObjectDetectionOutput,
    ) -> DistillationBatch:
        """What the distiller knows about a batch besides the outputs: boxes in xyxy input pixels, classes,
        ignore regions, sizes, strides and the training progress (and the student's positive anchors when
        the method reads them).

        Args:
            pixel_values: (B, 3, H, W) padded images.
            pixel_mask: (B, H, W), 1 on real pixels; None when nothing is padded.
            labels: one dict per image, `class_labels` (n,) and `boxes` (n, 4) normalised cxcywh, or the
                `GFLTargets` the student prepared of them.
            student_output: the student's output on `pixel_values` (with labels, its positive anchors are the
                batch's `positive_mask`; without, its FPN maps size the mask assigned here).
        """
        targets = (
            labels if isinstance(labels, GFLTargets) else self.student.prepare_targets(labels, pixel_values, pixel_mask)
        )
        valid_sizes, instances = targets.valid_sizes, targets.instances
        positive_mask = None
        if self.distiller.needs_positive_mask:
            # The student's loss has assigned the anchors already; only an output computed without labels
            # needs them assigned here.
            positive_mask = student_output.positive_mask
            if positive_mask is None:
                positive_mask = self.student.positive_anchor_mask(student_output.fpn_features, valid_sizes, targets)
        return DistillationBatch(
            boxes=[boxes for _, boxes, _ in instances],
            class_labels=[class_labels for class_labels, _, _ in instances],
            ignore_boxes=[ignore if ignore is not None else boxes.new_zeros((0, 4)) for _, boxes, ignore in instances],
            input_size=tuple(pixel_values.shape[-2:]),
            valid_sizes=valid_sizes,
            strides=list(self.student.strides),
            progress=float(self.progress),
            teacher_strides=list(self.teacher.strides),
            positive_mask=positive_mask,
        )


class LIAFDistillationTrainer(DetectionTrainer):
    """`transformers.Trainer` that distils `teacher` into `model` (the student) with a registered
    distillation method.

    Args:
        model: the student (`GFLForObjectDetection`).
        teacher: a `GFLForObjectDetection` or the path of a saved one (loaded strictly). It is put in eval
            mode with gradients off, moved to the training device, and never saved.
        method: a registered method name (`"none"`, `"liaf"`, `"mimic"`, `"fgd"`, `"pkd"`, `"ld"`, `"aid"`),
            registered names joined by "+" to combine methods (`"liaf+ld"`), or a built `Distiller`.
        method_options: the method's config (`LIAFConfig`, ...) or its options as a dict (what `--method_options`
            gives); for a combined method, one per part keyed by part name (`{"liaf": {...}, "ld": LDConfig()}`);
            the defaults when None.
        inherit: start the student's neck and head from the teacher's where shapes match.
        evaluate_teacher_at_start: score the teacher on the eval set when training starts and log it as
            `teacher_*` beside the student's `eval_*` metrics.
        compile_distiller: compile the method's loss with `torch.compile` (`Distiller.compile_losses`): the
            same values, fewer kernel launches on a GPU; the first steps take longer while it compiles. The
            student and teacher are compiled, or not, by the `torch_compile` training argument as usual.
        **kwargs: everything `DetectionTrainer` takes: `nonfinite_loss` ("error" stops on a NaN or inf loss
            component naming it and the step, "skip" skips and counts such steps) and every
            `transformers.Trainer` argument (args, datasets, collator, compute_metrics, ...).
    """

    def __init__(
        self,
        *,
        model: GFLForObjectDetection,
        teacher: GFLForObjectDetection | str | os.PathLike,
        method: str | Distiller = "liaf",
        method_options: MethodConfig | dict | None = None,
        inherit: bool = False,
        evaluate_teacher_at_start: bool = True,
        compile_distiller: bool = False,
        **kwargs,
    ) -> None:
        teacher = load_teacher(teacher)
        check_teacher_fits(model, teacher)
        if inherit:
            copied = inherit_from_teacher(model, teacher)
            logger.info("Inherited %d neck/head tensors from the teacher: %s", len(copied), ", ".join(copied))
            self.inherited_tensors = copied
        distiller = (
            method
            if isinstance(method, Distiller)
            else build_distiller(
                method, student_config=model.config, teacher_config=teacher.config, config=method_options
            )
        )
        # Recorded in every checkpoint and compared on resume, so that a run is not continued under other
        # settings; unknown for a Distiller passed in built.
        self.method_record = None
        if not isinstance(method, Distiller):
            self.method_record = {"method": method, "settings": method_settings(method, method_options)}
        if compile_distiller:
            distiller.compile_losses()
        teacher.eval().requires_grad_(False)
        super().__init__(model=DistillationModel(student=model, teacher=teacher, distiller=distiller), **kwargs)
        if distiller.needs_held_out_directions and self.args.per_device_train_batch_size < 2:
            # Refused before the first step: every batch would have no other half to hold out.
            raise ValueError(
                f"Method {method if isinstance(method, str) else type(method).__name__!r} takes the held-out loss "
                'on the other half of each batch (LIAF-KD\'s objective="lookahead"): it needs '
                f"per_device_train_batch_size of at least 2, got {self.args.per_device_train_batch_size}."
            )
        teacher.to(self.args.device)
        self.evaluate_teacher_at_start = evaluate_teacher_at_start
        self.teacher_metrics: dict[str, float] = {}
        # Each step's loss components and statistics, summed on the device per set of names and read back
        # only when logged: reading each back every step made the host wait for the device some thirty
        # times a step (LIAF-KD) where it could be queueing the next kernels.
        self._component_sums: dict[tuple[str, ...], torch.Tensor] = {}
        self._component_steps: Counter[tuple[str, ...]] = Counter()
        self._saving_checkpoint = False

    @property
    def distillation_model(self) -> DistillationModel:
        return self.accelerator.unwrap_model(self.model, keep_torch_compile=False)

    @property
    def student(self) -> GFLForObjectDetection:
        return self.distillation_model.student

    @property
    def teacher(self) -> GFLForObjectDetection:
        return self.distillation_model.teacher

    # ------------------------------------------------------------------------------------- training

    def train(self, *args, **kwargs):
        if self.evaluate_teacher_at_start and self.eval_dataset is not None and not self.teacher_metrics:
            self.teacher_metrics = self.evaluate_teacher()
            self.log(dict(self.teacher_metrics))
        return super().train(*args, **kwargs)

    def evaluate_teacher(self) -> dict[str, float]:
        """The teacher's metrics on the eval set, with this trainer's collator and metrics, keys `teacher_*`."""
        args = copy.deepcopy(self.args)
        args.report_to = []
        evaluator = Trainer(
            model=self.teacher,
            args=args,
            data_collator=self.data_collator,
            eval_dataset=self.eval_dataset,
            compute_metrics=self.compute_metrics,
            preprocess_logits_for_metrics=self.preprocess_logits_for_metrics,
        )
        metrics = evaluator.evaluate(metric_key_prefix="teacher")
        self.teacher.requires_grad_(False)
        return metrics

    def training_step(self, model, inputs, num_items_in_batch=None):
        self.distillation_model.progress = self.state.global_step / max(1, self.state.max_steps)
        return super().training_step(model, inputs, num_items_in_batch)

    def record_loss_components(self, outputs) -> None:
        # Called by DetectionTrainer.compute_loss for finite training losses only.
        if not isinstance(outputs, DistillationOutput):
            return
        components = {**outputs.loss_dict, **outputs.stats}
        if not components:
            return
        names = tuple(components)
        device = outputs.loss.device
        values = torch.stack(
            [torch.as_tensor(value, device=device).detach().float().reshape(()) for value in components.values()]
        )
        total = self._component_sums.get(names)
        self._component_sums[names] = values if total is None else total + values
        self._component_steps[names] += 1

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        # Training logs carry "loss"; add each component averaged over the steps of the interval that had it.
        if "loss" in logs and self._component_steps:
            sums: dict[str, float] = defaultdict(float)
            steps: Counter[str] = Counter()
            for names, total in self._component_sums.items():
                for name, value in zip(names, total.tolist()):
                    sums[name] += value
                    steps[name] += self._component_steps[names]
            for name, value in sums.items():
                logs[name] = round(value / steps[name], 6)
            self._component_sums.clear()
            self._component_steps.clear()
        super().log(logs, start_time)

    # --------------------------------------------------------------------------------- saving/resume

    def _save_checkpoint(self, model, trial) -> None:
        self._saving_checkpoint = True
        try:
            super()._save_checkpoint(model, trial)
        finally:
            self._saving_checkpoint = False

    def _save(self, output_dir: str | None = None, state_dict: dict | None = None) -> None:
        """Write the plain student (and its image processor); checkpoints also get the distiller's state,
        so a resumed run continues with the same selectors and align convs."""
        output_dir = output_dir if output_dir is not None else self.args.output_dir
        if not self.args.should_save:
            return
        os.makedirs(output_dir, exist_ok=True)
        self.student.save_pretrained(output_dir)
        if self.processing_class is not None:
            self.processing_class.save_pretrained(output_dir)
        torch.save(self.args, os.path.join(output_dir, TRAINING_ARGS_NAME))
        if self._saving_checkpoint:
            distiller = self.distillation_model.distiller
            distiller_state = {name: value.detach().contiguous() for name, value in distiller.state_dict().items()}
            metadata = {"format": "pt"}
            if self.method_record is not None:
                metadata[DISTILLER_SETTINGS_KEY] = json.dumps(self.method_record)
            save_file(distiller_state, os.path.join(output_dir, DISTILLER_WEIGHTS_NAME), metadata=metadata)

    def _load_from_checkpoint(self, resume_from_checkpoint: str, model: nn.Module | None = None) -> None:
        check_checkpoint(resume_from_checkpoint)
        target = self.accelerator.unwrap_model(model if model is not None else self.model)
        student_file = os.path.join(resume_from_checkpoint, SAFE_WEIGHTS_NAME)
        distiller_file = os.path.join(resume_from_checkpoint, DISTILLER_WEIGHTS_NAME)
        for path in (student_file, distiller_file):
            if not os.path.isfile(path):
                raise ValueError(f"Checkpoint {resume_from_checkpoint} has no {os.path.basename(path)}.")
        check_resumed_method(resume_from_checkpoint, recorded_method(distiller_file), self.method_record)
        target.student.load_state_dict(load_file(student_file), strict=True)
        target.distiller.load_state_dict(load_file(distiller_file), strict=True)

    def _load_best_model(self) -> None:
        self._load_from_checkpoint(self.state.best_model_checkpoint)
