"""What the example scripts do once their flags are parsed: train (or score) a detector, distil a student.

`examples/train_detector.py` and `examples/distill.py` parse their flags into the argument dataclasses of
`liaf_hf.cli` and call `train_detector` or `distill` here; `liaf_hf.experiments` builds the same dataclasses from
typed run specs and calls the same functions, so a benchmark measures what a user's command runs.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from transformers import HfArgumentParser, TrainingArguments, set_seed

from .cli import (
    DataArguments,
    DetectorArguments,
    DistillationArguments,
    FaultArguments,
    ModelCardArguments,
    OutputArguments,
    build_detector,
    check_output_dir,
    prefixed_arguments,
    prepare_datasets,
    train_and_evaluate,
    unprefixed,
    write_run_summary,
)
from .data import label_maps
from .hub import take_over_push_to_hub
from .hub.model_card import backbone_name, read_metrics_file, training_hyperparameters, write_model_card
from .models.gfl.image_processing_gfl import GFLImageProcessor
from .trainer.detection import DetectionTrainer
from .trainer.distillation import LIAFDistillationTrainer
from .trainer.integration import configure_for_detection, detection_trainer_kwargs
from .visualization.selector_weights import PICTURES_DIR, add_selector_pictures, add_training_weights_record

logger = logging.getLogger(__name__)

#: The student's `DetectorArguments`, every flag prefixed `--student_`.
StudentArguments = prefixed_arguments(DetectorArguments, "student_", "StudentArguments")

#: The argument dataclasses of `train_detector`, by its keyword names, in the order the script parses them.
DETECTOR_TRAINING_ARGUMENTS: dict[str, type] = {
    "detector": DetectorArguments,
    "data": DataArguments,
    "card": ModelCardArguments,
    "faults": FaultArguments,
    "output": OutputArguments,
    "training": TrainingArguments,
}
#: The argument dataclasses of `distill`, by its keyword names.
DISTILLATION_ARGUMENTS: dict[str, type] = {
    "distillation": DistillationArguments,
    "student": StudentArguments,
    "data": DataArguments,
    "card": ModelCardArguments,
    "faults": FaultArguments,
    "output": OutputArguments,
    "training": TrainingArguments,
}


def parse_script_arguments(classes: dict[str, type], argv: Sequence[str] | None = None) -> dict[str, Any]:
    """A script's flags parsed into `classes` (`DETECTOR_TRAINING_ARGUMENTS` or `DISTILLATION_ARGUMENTS`), by
    keyword name."""
    parsed = HfArgumentParser(tuple(classes.values())).parse_args_into_dataclasses(args=argv)
    return dict(zip(classes, parsed))


def _start(training: TrainingArguments, output: OutputArguments, keep: dict[str, str] | None = None):
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)
    check_output_dir(training, overwrite=output.overwrite_output_dir, keep=keep)
    configure_for_detection(training)
    return take_over_push_to_hub(training)


def _card_fields(card: ModelCardArguments, data: DataArguments, training: TrainingArguments, hub_target) -> dict:
    """What every model card of the scripts says of the data, the schedule, the Hub id and the license."""
    return {
        "dataset_name": card.card_dataset_name or data.display_name,
        "dataset_id": card.dataset_id,
        "dataset_split": data.eval_split,
        "model_id": hub_target.repo_id if hub_target else None,
        "training": training_hyperparameters(training),
        "license": card.license,
    }


def train_detector(
    *,
    detector: DetectorArguments,
    data: DataArguments,
    card: ModelCardArguments,
    faults: FaultArguments,
    output: OutputArguments,
    training: TrainingArguments,
) -> dict[str, float]:
    """Train and score a GFL detector with `DetectionTrainer` (or only score the one `detector.model_name_or_path`
    names, without `--do_train`); writes `summary.json` and, after training, the model card. Returns the
    metrics."""
    hub_target = _start(training, output)
    train_dataset, eval_dataset = prepare_datasets(data, training)
    # The weights a run starts from follow --seed too, so two runs of one command (and a resumed run's
    # reference run) are the same run.
    set_seed(training.seed)
    model = build_detector(detector, label_maps(train_dataset)[0])
    image_processor = GFLImageProcessor.for_model_config(
        model.config, size={"shortest_edge": data.shortest_edge, "longest_edge": data.longest_edge}
    )
    trainer = DetectionTrainer(
        model=model,
        args=training,
        nonfinite_loss=faults.nonfinite_loss,
        **detection_trainer_kwargs(
            image_processor=image_processor,
            train_dataset=train_dataset,
            eval_dataset=eval_dataset,
            seed=training.seed,
            skip_bad_images=faults.skip_bad_images,
            run_name=training.run_name or f"GFL {backbone_name(model.config)} detector",
        ),
    )
    metrics = train_and_evaluate(trainer, training)
    if training.process_index == 0:
        write_run_summary(training.output_dir, model=model, metrics=metrics, backbone=backbone_name(model.config))
        if training.do_train:
            write_model_card(
                training.output_dir,
                metrics=metrics,
                **_card_fields(card, data, training, hub_target),
            )
        if hub_target:
            hub_target.push(training.output_dir, commit_message="GFL detector")
    trainer.accelerator.end_training()
    return metrics


def distill(
    *,
    distillation: DistillationArguments,
    student: Any,
    data: DataArguments,
    card: ModelCardArguments,
    faults: FaultArguments,
    output: OutputArguments,
    training: TrainingArguments,
) -> dict[str, float]:
    """Distil `distillation.teacher_model_name_or_path` into a new student (`StudentArguments`) with
    `LIAFDistillationTrainer`; writes `summary.json` (with the method's settings, defaults included) and, after
    training, the model card. Returns the metrics."""
    hub_target = _start(
        training, output, keep={"--teacher_model_name_or_path": distillation.teacher_model_name_or_path}
    )
    # Read before training, so a wrong path fails now rather than after the run.
    baseline_metrics = read_metrics_file(card.baseline_metrics_file) if card.baseline_metrics_file else None
    teacher_file_metrics = (
        read_metrics_file(distillation.teacher_metrics_file) if distillation.teacher_metrics_file else {}
    )
    train_dataset, eval_dataset = prepare_datasets(data, training)
    set_seed(training.seed)
    model = build_detector(unprefixed(student, "student_", DetectorArguments), label_maps(train_dataset)[0])
    trainer = _distillation_trainer(model, distillation, data, faults, training, train_dataset, eval_dataset)
    metrics = train_and_evaluate(trainer, training)
    # Scored at start when asked; otherwise the teacher's metrics from --teacher_metrics_file.
    teacher_metrics = trainer.teacher_metrics or {
        f"teacher_{name}": value for name, value in teacher_file_metrics.items()
    }
    if training.process_index == 0:
        # Defaults included, so the run's settings stay known if a default changes later; the same record
        # the trainer writes into its checkpoints.
        settings = trainer.method_record["settings"]
        write_run_summary(
            training.output_dir,
            model=model,
            metrics={**teacher_metrics, **metrics},
            method=distillation.method,
            method_options=distillation.options,
            method_settings=settings,
            student_backbone=backbone_name(model.config),
        )
        if training.do_train:
            write_model_card(
                training.output_dir,
                metrics=metrics,
                **_card_fields(card, data, training, hub_target),
                method=distillation.method,
                method_options=settings,
                inherit=distillation.inherit,
                teacher_name=distillation.teacher_model_name_or_path,
                teacher_config=trainer.teacher.config,
                teacher_metrics=teacher_metrics,
                baseline_metrics=baseline_metrics,
            )
        if hub_target:
            hub_target.push(training.output_dir, commit_message=f"Distilled GFL student ({distillation.method})")
    trainer.accelerator.end_training()
    return metrics


def _distillation_trainer(
    model, distillation: DistillationArguments, data: DataArguments, faults: FaultArguments, training, train, val
) -> LIAFDistillationTrainer:
    """The trainer `distill` runs, with the selector pictures when asked and the method has selectors."""
    image_processor = GFLImageProcessor.for_model_config(
        model.config, size={"shortest_edge": data.shortest_edge, "longest_edge": data.longest_edge}
    )
    trainer = LIAFDistillationTrainer(
        model=model,
        teacher=distillation.teacher_model_name_or_path,
        method=distillation.method,
        method_options=distillation.options,
        inherit=distillation.inherit,
        evaluate_teacher_at_start=distillation.evaluate_teacher_at_start and training.do_train,
        compile_distiller=distillation.compile_distiller,
        nonfinite_loss=faults.nonfinite_loss,
        args=training,
        **detection_trainer_kwargs(
            image_processor=image_processor,
            train_dataset=train,
            eval_dataset=val,
            seed=training.seed,
            skip_bad_images=faults.skip_bad_images,
            run_name=training.run_name or f"GFL {backbone_name(model.config)} student, {distillation.method}",
        ),
    )
    if distillation.selector_pictures:
        pictures = add_selector_pictures(trainer, num_images=distillation.selector_picture_images)
        if pictures is not None:
            logger.info("Selector weights drawn into %s", Path(training.output_dir) / PICTURES_DIR)
    if distillation.selector_train_images > 0 and train is not None:
        add_training_weights_record(trainer, train, num_images=distillation.selector_train_images)
    return trainer
