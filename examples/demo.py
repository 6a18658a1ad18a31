"""The README's demo: generate the shapes set, train a teacher, then train the student without and with
distillation, and print one table.

    python examples/demo.py                        # the README gives its measured duration
    python examples/demo.py --student_steps 100    # a quick look (scores will be low)

The teacher is a ResNet-34 GFL trained for 450 steps, the student a ResNet-18 GFL trained for 350 steps
(benchmarks/distill_gain.py uses a ResNet-50 teacher).

Each student's folder holds its model card (with the teacher's AP and, for the distilled one, the plain
student's). With a method that has instance selectors (`liaf`), the distilled student is also scored
`--evaluations` times during training, and its folder holds pictures of the selectors' instance weights on
six validation images: `selector_weights/step-<N>.png` at the start and at each evaluation, and
`selector_weights/over_training.png` with one row per step.

Everything is local: the data are generated, every backbone starts from random weights, nothing
downloads. The teacher is cached in --teacher_cache_dir and reused by later runs with the same settings.
The flags under "your own data, teacher and schedule" (`--help`) run the same comparison on a COCO- or
KITTI-layout root or a Hub-format set, with a teacher trained elsewhere, as benchmarks/distill_gain.py does.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import datasets
import torch

from liaf_hf import GFLForObjectDetection, GFLImageProcessor
from liaf_hf.cli import DistillationArguments
from liaf_hf.data.collate import DetectionCollator, DetectionTransform
from liaf_hf.experiments import add_experiment_arguments, check_experiment_arguments, experiment_from_args
from liaf_hf.trainer.callbacks import format_duration
from liaf_hf.visualization.selector_weights import PICTURES_DIR

ROOT = Path(__file__).resolve().parents[1]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data_dir", default=str(ROOT / "data" / "shapes-easy"))
    parser.add_argument("--output_dir", default=str(ROOT / "runs" / "demo"))
    parser.add_argument("--teacher_backbone", default="resnet34")
    parser.add_argument("--student_backbone", default="resnet18")
    parser.add_argument("--teacher_steps", type=int, default=450)
    parser.add_argument("--student_steps", type=int, default=350)
    parser.add_argument("--method", default="liaf")
    parser.add_argument("--method_options", default="{}")
    parser.add_argument("--image_size", type=int, default=128)
    parser.add_argument(
        "--evaluations", type=int, default=3, help="Scorings of the distilled student while it trains (0: at the end)."
    )
    add_experiment_arguments(parser, teacher_cache_dir=ROOT / "runs" / "teachers")
    args = check_experiment_arguments(parser, parser.parse_args(argv))
    try:
        # Checked now, as examples/distill.py checks them, so a misspelt option stops the demo before the teacher.
        DistillationArguments(teacher_model_name_or_path="", method=args.method, method_options=args.method_options)
    except ValueError as error:
        parser.error(str(error))
    args.options = json.loads(args.method_options)
    return args


@torch.no_grad()
def images_per_second(
    model_dirs: list[str | Path],
    eval_split: datasets.Dataset,
    *,
    batch_size: int = 32,
    batches: int = 4,
    rounds: int = 5,
) -> list[float]:
    """Inference throughput of saved detectors (forward pass and post-processing) on the same validation
    images. The models take turns within each round and each reports its median round, so that the
    machine's noise hits them alike (timed one after another, two identical students differed by 11%)."""
    detectors = [
        (GFLForObjectDetection.from_pretrained(path).eval(), GFLImageProcessor.from_pretrained(path))
        for path in model_dirs
    ]
    # A small evaluation split (a quick look with --num_val 16) is timed on fewer or smaller batches.
    batch_size = min(batch_size, len(eval_split))
    batches = max(1, min(batches, len(eval_split) // batch_size))
    dataset = eval_split.with_transform(DetectionTransform(detectors[0][1], train=False))
    collate = DetectionCollator(detectors[0][1])
    loaded = [collate([dataset[i] for i in range(b * batch_size, (b + 1) * batch_size)]) for b in range(batches)]
    seconds: list[list[float]] = [[] for _ in detectors]
    for round_index in range(rounds + 1):  # round 0 warms up
        for model_index, (model, processor) in enumerate(detectors):
            started = time.perf_counter()
            for batch in loaded:
                outputs = model(pixel_values=batch["pixel_values"], pixel_mask=batch["pixel_mask"])
                processor.post_process_object_detection(
                    outputs, target_sizes=[labels["orig_size"] for labels in batch["labels"]]
                )
            if round_index > 0:
                seconds[model_index].append(time.perf_counter() - started)
    return [batch_size * batches / statistics.median(times) for times in seconds]


def announce(stage: int, what: str, started: float) -> None:
    """Print which of the demo's four stages begins, and the time spent so far."""
    elapsed = time.perf_counter() - started
    print(f"\n[{stage}/4, {format_duration(elapsed)} so far] {what}", flush=True)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    experiment = experiment_from_args(args)
    started = time.perf_counter()
    print(
        f"The demo trains a teacher (GFL {args.teacher_backbone}, {args.teacher_steps} steps; reused when cached), "
        f"then a student (GFL {args.student_backbone}, {args.student_steps} steps) alone and distilled with "
        f"{args.method}, then scores all three. Each training run logs its estimated time left after its first "
        "steps.",
        flush=True,
    )
    announce(1, f"The teacher: GFL {args.teacher_backbone}, {args.teacher_steps} steps", started)
    teacher = experiment.teacher()
    announce(2, f"The student alone: GFL {args.student_backbone}, {args.student_steps} steps", started)
    plain_dir = experiment.student(teacher, "none", {})
    announce(3, f"The student distilled with {args.method}: {args.student_steps} steps", started)
    # The distilled student's model card lists the plain student beside it.
    distilled_dir = experiment.student(
        teacher,
        args.method,
        args.options,
        evaluations=args.evaluations,
        baseline_metrics_file=plain_dir / "summary.json",
    )
    teacher_label = (
        f"teacher {teacher.name_or_path}"
        if args.teacher_model_name_or_path
        else f"teacher GFL {args.teacher_backbone} ({args.teacher_steps} steps)"
    )
    runs = [
        (teacher_label, teacher.name_or_path),
        (f"student GFL {args.student_backbone} ({args.student_steps} steps)", plain_dir),
        (f"distilled student, {args.method}", distilled_dir),
    ]
    minutes = (time.perf_counter() - started) / 60
    announce(4, "Inference speed of the three models on the same validation images", started)
    rows = []
    throughputs = images_per_second([directory for _, directory in runs], experiment.data.load_eval_split())
    summaries = [teacher.summary_file] + [Path(directory) / "summary.json" for _, directory in runs[1:]]
    for (name, directory), summary_file, throughput in zip(runs, summaries, throughputs):
        summary = json.loads(summary_file.read_text())
        rows.append(
            {
                "model": name,
                "AP": summary["eval_AP"],
                "AP50": summary["eval_AP50"],
                "parameters": summary["parameters"],
                "images_per_second": throughput,
                "directory": str(directory),
            }
        )
    print()
    print("| model | AP | AP50 | params (M) | images/s (inference) |")
    print("|---|---|---|---|---|")
    for row in rows:
        print(
            f"| {row['model']} | {row['AP']:.3f} | {row['AP50']:.3f} | {row['parameters'] / 1e6:.1f} | "
            f"{row['images_per_second']:.0f} |"
        )
    print(f"\nTotal time: {minutes:.1f} minutes. Distilled student: {rows[-1]['directory']}")
    pictures = distilled_dir / PICTURES_DIR
    if pictures.is_dir():
        print(f"Selector weights over validation images: {pictures} (over_training.png: one row per evaluation)")
    (Path(args.output_dir) / "demo_results.json").write_text(json.dumps({"minutes": minutes, "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
