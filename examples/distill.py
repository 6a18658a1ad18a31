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
with `--report_to tensorboard`); `--selector_pictures false` turns them off. `--selector_train_images N` also
records their weights on the first N training images, with the training annotations, when training ends
(`selector_weights/train_weights.json`).
`--push_to_hub` (with `--hub_model_id`) uploads the student alone once, at the end: weights, configs, card and
model code, never checkpoints, the distiller, the pictures or the training state.
Before anything loads, an `--output_dir` that is the teacher's folder (or holds the teacher in one of its
`checkpoint-*` folders) is refused, and so is one that already holds a trained model or checkpoints unless the
run resumes (`--resume_from_checkpoint`) or `--overwrite_output_dir true` says to replace them.
"""

from __future__ import annotations

import sys

from liaf_hf.scripts import DISTILLATION_ARGUMENTS, distill, parse_script_arguments


def main(argv: list[str] | None = None) -> dict[str, float]:
    return distill(**parse_script_arguments(DISTILLATION_ARGUMENTS, argv))


if __name__ == "__main__":
    main(sys.argv[1:])
