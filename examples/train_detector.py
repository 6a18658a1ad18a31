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

import sys

from liaf_hf.scripts import DETECTOR_TRAINING_ARGUMENTS, parse_script_arguments, train_detector


def main(argv: list[str] | None = None) -> dict[str, float]:
    return train_detector(**parse_script_arguments(DETECTOR_TRAINING_ARGUMENTS, argv))


if __name__ == "__main__":
    main(sys.argv[1:])
