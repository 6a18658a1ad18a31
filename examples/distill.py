"""Distil a trained GFL teacher into a student with LIAFDistillationTrainer.

    accelerate launch examples/distill.py --teacher_model_name_or_path runs/teacher \
        --student_backbone resnet18 --method liaf --data_dir data/shapes \
        --output_dir runs/student-liaf --do_train --do_eval --max_steps 600

The data flags are those of `examples/train_detector.py`: `--data_dir` a COCO-layout or KITTI-layout root, or
`--dataset_name` a Hub-format set.
The output directory holds a plain GFL student (and its image processor) that
`GFLForObjectDetection.from_pretrained` loads like any other detector: nothing of the distillation is in it.
After training it also holds the model card (`README.md`: teacher, method, results, how to load it);
`--baseline_metrics_file runs/student-plain/summary.json` adds the student trained without distillation to
its results table, and `--teacher_metrics_file runs/teacher/eval_results.json` the teacher's scores when it
is not evaluated at start (`--evaluate_teacher_at_start false`). With a method that has instance selectors
(`liaf`, `liaf+ld`), `<output_dir>/selector_weights/` receives pictures of their weights on the first
`--selector_picture_images` validation images, before training and at each evaluation (also in TensorBoard
with `--report_to tensorboard`); `--selector_pictures false` turns them off.
`--push_to_hub` (with `--hub_model_id`) uploads the student alone once, at the end: weights, configs, card and
model code, never checkpoints, the distiller, the pictures or the training state.
Before anything loads, an `--output_dir` that is the teacher's folder (or holds the teacher in one of its
`checkpoint-*` folders) is refused, and so is one that already holds a trained model or checkpoints unless the
run resumes (`--resume_from_checkpoint`) or `--overwrite_output_dir true` says to replace them.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

from transformers import HfArgumentParser, TrainingArguments, set_seed

from liaf_hf import GFLImageProcessor
from liaf_hf.cli import (
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
from liaf_hf.data import label_maps
from liaf_hf.hub import take_over_push_to_hub
from liaf_hf.hub.model_card import backbone_name, read_metrics_file, training_hyperparameters, write_model_card
from liaf_hf.trainer import LIAFDistillationTrainer
from liaf_hf.trainer.integration import configure_for_detection, detection_trainer_kwargs
from liaf_hf.visualization.selector_weights import PICTURES_DIR, add_selector_pictures

StudentArguments = prefixed_arguments(DetectorArguments, "student_", "StudentArguments")


def main(argv: list[str] | None = None) -> dict[str, float]:
    parser = HfArgumentParser(
        (
            DistillationArguments,
            StudentArguments,
            DataArguments,
            ModelCardArguments,
            FaultArguments,
            OutputArguments,
            TrainingArguments,
        )
    )
    distill_args, student_args, data_args, card_args, fault_args, output_args, training_args = (
        parser.parse_args_into_dataclasses(args=argv)
    )
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)
    check_output_dir(
        training_args,
        overwrite=output_args.overwrite_output_dir,
        keep={"--teacher_model_name_or_path": distill_args.teacher_model_name_or_path},
    )
    configure_for_detection(training_args)
    hub_target = take_over_push_to_hub(training_args)
    # Read before training, so a wrong path fails now rather than after the run.
    baseline_metrics = read_metrics_file(card_args.baseline_metrics_file) if card_args.baseline_metrics_file else None
    teacher_file_metrics = (
        read_metrics_file(distill_args.teacher_metrics_file) if distill_args.teacher_metrics_file else {}
    )

    train_dataset, eval_dataset = prepare_datasets(data_args, training_args)
    # The weights a run starts from follow --seed too, so two runs of one command (and a resumed run's
    # reference run) are the same run.
    set_seed(training_args.seed)
    student = build_detector(unprefixed(student_args, "student_", DetectorArguments), label_maps(train_dataset)[0])
    image_processor = GFLImageProcessor.for_model_config(
        student.config, size={"shortest_edge": data_args.shortest_edge, "longest_edge": data_args.longest_edge}
    )
    trainer = LIAFDistillationTrainer(
        model=student,
        teacher=distill_args.teacher_model_name_or_path,
        method=distill_args.method,
        method_options=distill_args.options,
        inherit=distill_args.inherit,
        evaluate_teacher_at_start=distill_args.evaluate_teacher_at_start and training_args.do_train,
        compile_distiller=distill_args.compile_distiller,
        nonfinite_loss=fault_args.nonfinite_loss,
        args=training_args,
        **detection_trainer_kwargs(
            image_processor=image_processor,
            train_dataset=train_dataset,
            eval_dataset=eval_dataset,
            seed=training_args.seed,
            skip_bad_images=fault_args.skip_bad_images,
            run_name=training_args.run_name or f"GFL {backbone_name(student.config)} student, {distill_args.method}",
        ),
    )
    if distill_args.selector_pictures:
        pictures = add_selector_pictures(trainer, num_images=distill_args.selector_picture_images)
        if pictures is not None:
            logging.getLogger(__name__).info(
                "Selector weights drawn into %s", Path(training_args.output_dir) / PICTURES_DIR
            )
    metrics = train_and_evaluate(trainer, training_args)
    # Scored at start when asked; otherwise the teacher's metrics from --teacher_metrics_file.
    teacher_metrics = trainer.teacher_metrics or {
        f"teacher_{name}": value for name, value in teacher_file_metrics.items()
    }
    if training_args.process_index == 0:
        # Defaults included, so the run's settings stay known if a default changes later; the same record
        # the trainer writes into its checkpoints.
        settings = trainer.method_record["settings"]
        write_run_summary(
            training_args.output_dir,
            model=student,
            metrics={**teacher_metrics, **metrics},
            method=distill_args.method,
            method_options=distill_args.options,
            method_settings=settings,
            student_backbone=backbone_name(student.config),
        )
        if training_args.do_train:
            write_model_card(
                training_args.output_dir,
                metrics=metrics,
                dataset_name=card_args.card_dataset_name or data_args.display_name,
                dataset_id=card_args.dataset_id,
                dataset_split=data_args.eval_split,
                method=distill_args.method,
                method_options=settings,
                inherit=distill_args.inherit,
                teacher_name=distill_args.teacher_model_name_or_path,
                teacher_config=trainer.teacher.config,
                teacher_metrics=teacher_metrics,
                baseline_metrics=baseline_metrics,
                model_id=hub_target.repo_id if hub_target else None,
                training=training_hyperparameters(training_args),
                license=card_args.license,
            )
        if hub_target:
            hub_target.push(training_args.output_dir, commit_message=f"Distilled GFL student ({distill_args.method})")
    trainer.accelerator.end_training()
    return metrics


if __name__ == "__main__":
    main(sys.argv[1:])
