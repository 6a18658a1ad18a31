"""Distil a trained GFL teacher into a student with LIAFDistillationTrainer.

    accelerate launch examples/distill.py --teacher_model_name_or_path runs/teacher \
        --student_backbone resnet18 --method liaf --data_dir data/shapes \
        --output_dir runs/student-liaf --do_train --do_eval --max_steps 600

The output directory holds a plain GFL student (and its image processor) that
`GFLForObjectDetection.from_pretrained` loads like any other detector: nothing of the distillation is in it.
"""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path

from transformers import HfArgumentParser, TrainingArguments

from liaf_hf import GFLImageProcessor
from liaf_hf.data import label_maps
from liaf_hf.distillation import LIAFDistillationTrainer
from liaf_hf.distillation.arguments import DistillationArguments
from liaf_hf.training import (
    DataArguments,
    DetectorArguments,
    build_detector,
    configure_for_detection,
    detection_trainer_kwargs,
    prefixed_arguments,
    prepare_datasets,
    unprefixed,
)

StudentArguments = prefixed_arguments(DetectorArguments, "student_", "StudentArguments")


def main(argv: list[str] | None = None) -> dict[str, float]:
    parser = HfArgumentParser((DistillationArguments, StudentArguments, DataArguments, TrainingArguments))
    distill_args, student_args, data_args, training_args = parser.parse_args_into_dataclasses(args=argv)
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)
    configure_for_detection(training_args)

    train_dataset, eval_dataset = prepare_datasets(data_args, training_args)
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
        args=training_args,
        **detection_trainer_kwargs(
            image_processor=image_processor,
            train_dataset=train_dataset,
            eval_dataset=eval_dataset,
            seed=training_args.seed,
        ),
    )
    metrics: dict[str, float] = {}
    if training_args.do_train:
        train_result = trainer.train(resume_from_checkpoint=training_args.resume_from_checkpoint)
        trainer.save_model()
        trainer.save_metrics("train", train_result.metrics)
        trainer.save_state()
    if training_args.do_eval:
        metrics = trainer.evaluate()
        trainer.log_metrics("eval", metrics)
        trainer.save_metrics("eval", metrics)
    if training_args.process_index == 0:
        summary = {
            "method": distill_args.method,
            "method_options": distill_args.options,
            "student_backbone": student.config.backbone,
            "parameters": sum(p.numel() for p in student.parameters()),
            **{k: v for k, v in {**trainer.teacher_metrics, **metrics}.items() if isinstance(v, (int, float))},
        }
        Path(training_args.output_dir).mkdir(parents=True, exist_ok=True)
        (Path(training_args.output_dir) / "summary.json").write_text(json.dumps(summary, indent=2))
    trainer.accelerator.end_training()
    return metrics


if __name__ == "__main__":
    main(sys.argv[1:])
