"""Train, score and save a GFL detector with `transformers.Trainer`.

    python examples/train_detector.py --data_dir data/shapes --generate_synthetic easy --backbone resnet18 \
        --output_dir runs/r18 --do_train --do_eval --max_steps 600 --per_device_train_batch_size 16

Takes every `TrainingArguments` flag and runs under `accelerate launch` as well. With
`--generate_synthetic easy` the generated benchmark set is written to `--data_dir` first (nothing is
downloaded); `--generate_synthetic kitti` writes it in KITTI layout. `--data_dir` may be a COCO-layout or a
KITTI-layout root (recognised by its layout; KITTI data is scored with VOC AP50 and KITTI AP40 besides COCO
AP), and `--dataset_name` a Hub-format set instead. After training the output directory also holds
the model card (`README.md`); `--push_to_hub` (with `--hub_model_id`) uploads the detector alone once, at the
end: weights, configs, card and model code, never checkpoints or the training state.
An `--output_dir` that already holds a trained model or checkpoints is refused before anything loads, unless
the run resumes (`--resume_from_checkpoint`) or `--overwrite_output_dir true` says to replace them.
"""

from __future__ import annotations

import logging
import sys

from transformers import HfArgumentParser, TrainingArguments, set_seed

from liaf_hf import GFLImageProcessor
from liaf_hf.cli import (
    DataArguments,
    DetectorArguments,
    FaultArguments,
    ModelCardArguments,
    OutputArguments,
    build_detector,
    check_output_dir,
    prepare_datasets,
    train_and_evaluate,
    write_run_summary,
)
from liaf_hf.data import label_maps
from liaf_hf.hub import take_over_push_to_hub
from liaf_hf.hub.model_card import backbone_name, training_hyperparameters, write_model_card
from liaf_hf.trainer.detection import DetectionTrainer
from liaf_hf.trainer.integration import configure_for_detection, detection_trainer_kwargs


def main(argv: list[str] | None = None) -> dict[str, float]:
    parser = HfArgumentParser(
        (DetectorArguments, DataArguments, ModelCardArguments, FaultArguments, OutputArguments, TrainingArguments)
    )
    model_args, data_args, card_args, fault_args, output_args, training_args = parser.parse_args_into_dataclasses(
        args=argv
    )
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)
    check_output_dir(training_args, overwrite=output_args.overwrite_output_dir)
    configure_for_detection(training_args)
    hub_target = take_over_push_to_hub(training_args)

    train_dataset, eval_dataset = prepare_datasets(data_args, training_args)
    # The weights a run starts from follow --seed too, so two runs of one command (and a resumed run's
    # reference run) are the same run.
    set_seed(training_args.seed)
    model = build_detector(model_args, label_maps(train_dataset)[0])
    image_processor = GFLImageProcessor.for_model_config(
        model.config, size={"shortest_edge": data_args.shortest_edge, "longest_edge": data_args.longest_edge}
    )
    trainer = DetectionTrainer(
        model=model,
        args=training_args,
        nonfinite_loss=fault_args.nonfinite_loss,
        **detection_trainer_kwargs(
            image_processor=image_processor,
            train_dataset=train_dataset,
            eval_dataset=eval_dataset,
            seed=training_args.seed,
            skip_bad_images=fault_args.skip_bad_images,
            run_name=training_args.run_name or f"GFL {backbone_name(model.config)} detector",
        ),
    )
    metrics = train_and_evaluate(trainer, training_args)
    if training_args.process_index == 0:
        write_run_summary(training_args.output_dir, model=model, metrics=metrics, backbone=backbone_name(model.config))
        if training_args.do_train:
            write_model_card(
                training_args.output_dir,
                metrics=metrics,
                dataset_name=card_args.card_dataset_name or data_args.display_name,
                dataset_id=card_args.dataset_id,
                dataset_split=data_args.eval_split,
                model_id=hub_target.repo_id if hub_target else None,
                training=training_hyperparameters(training_args),
                license=card_args.license,
            )
        if hub_target:
            hub_target.push(training_args.output_dir, commit_message="GFL detector")
    trainer.accelerator.end_training()
    return metrics


if __name__ == "__main__":
    main(sys.argv[1:])
