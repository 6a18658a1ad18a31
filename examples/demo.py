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
import hashlib
import json
import re
import shlex
import statistics
import time
from dataclasses import dataclass
from pathlib import Path

import datasets
import torch

from distill import main as distill
from liaf_hf import GFLForObjectDetection, GFLImageProcessor
from liaf_hf.cli import DATASET_FORMATS, DataArguments
from liaf_hf.data.collate import DetectionCollator, DetectionTransform
from liaf_hf.trainer.callbacks import format_duration
from liaf_hf.visualization.selector_weights import PICTURES_DIR
from train_detector import main as train_detector

ROOT = Path(__file__).resolve().parents[1]


def parse_args() -> argparse.Namespace:
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
    add_setting_arguments(parser)
    return check_setting_arguments(parser, parser.parse_args())


def add_setting_arguments(parser: argparse.ArgumentParser) -> None:
    """Data and model-size settings shared with benchmarks/distill_gain.py."""
    parser.add_argument("--difficulty", default="easy", help="Preset of the generated set.")
    parser.add_argument("--num_train", type=int, default=2000)
    parser.add_argument("--num_val", type=int, default=500)
    parser.add_argument("--batch_size", type=int, default=16)
    parser.add_argument("--channels", type=int, default=64, help="Width of the FPN and the head.")
    parser.add_argument(
        "--teacher_cache_dir", default=str(ROOT / "runs" / "teachers"), help="Trained teachers, kept by settings."
    )
    parser.add_argument(
        "--dataloader_num_workers", type=int, default=0, help="Processes preparing batches (a GPU needs several)."
    )
    data = parser.add_argument_group("your own data, teacher and schedule")
    data.add_argument(
        "--dataset_format",
        default="generated",
        choices=("generated", *DATASET_FORMATS),
        help="generated (default): the shapes set of --difficulty, written into --data_dir. Otherwise the data "
        "already in --data_dir (or --dataset_name), read as examples/distill.py reads it: auto finds the format "
        "from the layout.",
    )
    data.add_argument("--dataset_name", default=None, help="A Hub-format set instead of --data_dir.")
    data.add_argument("--train_split", default="train")
    data.add_argument("--eval_split", default="val")
    data.add_argument("--shortest_edge", type=int, default=None, help="Image resize (default: --image_size).")
    data.add_argument("--longest_edge", type=int, default=None, help="Image resize (default: --image_size).")
    data.add_argument(
        "--backbone_pretrained",
        action="store_true",
        help="Start the teacher (when trained here) and the students from timm's pretrained backbone weights "
        "(downloaded once).",
    )
    data.add_argument(
        "--teacher_model_name_or_path",
        default=None,
        help="A trained GFL teacher (a folder or Hub id) instead of training one: it is scored once on the eval "
        "split, and its scores are kept in --teacher_cache_dir.",
    )
    data.add_argument(
        "--training_flags",
        default="",
        help='More flags for every training and scoring run, e.g. "--optim sgd --learning_rate 0.01"; they win '
        "over the defaults, and runs with other flags are kept apart.",
    )


def check_setting_arguments(parser: argparse.ArgumentParser, args: argparse.Namespace) -> argparse.Namespace:
    """Stop with a usage error when the data settings contradict each other; fill the image edges."""
    if args.dataset_format == "generated":
        if args.dataset_name is not None:
            parser.error("--dataset_name reads a Hub-format set: give --dataset_format hub (or auto) with it")
    elif (args.data_dir is None) == (args.dataset_name is None):
        parser.error(
            f"--dataset_format {args.dataset_format} reads your data: give exactly one of --data_dir and --dataset_name"
        )
    try:
        shlex.split(args.training_flags)
    except ValueError as error:
        parser.error(f"--training_flags {args.training_flags!r} is not a valid command line: {error}")
    args.shortest_edge = args.shortest_edge or args.image_size
    args.longest_edge = args.longest_edge or args.image_size
    return args


def _short_hash(text: str) -> str:
    return hashlib.sha1(text.encode()).hexdigest()[:8]


def _slug(text: str) -> str:
    """A folder-name-safe version of a path's or Hub id's last part."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text.rstrip("/").split("/")[-1]) or "data"


def data_key(args: argparse.Namespace) -> str:
    """The data and image size as a folder name's part (with what else changes a run: pretrained backbones,
    extra flags), so cached teachers and reused students are never mixed across settings."""
    size = (
        f"{args.image_size}px"
        if args.shortest_edge == args.longest_edge == args.image_size
        else f"{args.shortest_edge}x{args.longest_edge}px"
    )
    if args.dataset_format == "generated":
        key = f"{args.difficulty}-{size}-{args.num_train}images"
    else:
        source = args.dataset_name or str(Path(args.data_dir).resolve())
        splits = f"{args.dataset_format}:{source}:{args.train_split}:{args.eval_split}"
        key = f"{_slug(source)}-{_short_hash(splits)}-{size}"
    if args.backbone_pretrained:
        key += "-pretrained"
    if args.training_flags.strip():
        key += f"-flags{_short_hash(' '.join(shlex.split(args.training_flags)))}"
    return key


def teacher_key(args: argparse.Namespace) -> str:
    """The teacher as a folder name's part: the one `--teacher_model_name_or_path` names, or how it is trained."""
    if args.teacher_model_name_or_path:
        name = args.teacher_model_name_or_path
        return f"{_slug(name)}-{_short_hash(str(Path(name).resolve()) if Path(name).exists() else name)}"
    return f"{args.teacher_backbone}-{args.teacher_steps}steps"


def data_flags(args: argparse.Namespace) -> list[str]:
    """The example scripts' flags that read (or generate) the data and size the images."""
    if args.dataset_format == "generated":
        source = [
            "--data_dir", args.data_dir, "--generate_synthetic", args.difficulty,
            "--synthetic_num_train", str(args.num_train), "--synthetic_num_val", str(args.num_val),
        ]  # fmt: skip
    else:
        source = ["--dataset_name", args.dataset_name] if args.dataset_name else ["--data_dir", args.data_dir]
        source += [
            "--dataset_format", args.dataset_format, "--train_split", args.train_split, "--eval_split", args.eval_split
        ]  # fmt: skip
    return source + ["--shortest_edge", str(args.shortest_edge), "--longest_edge", str(args.longest_edge)]


def load_eval_split(args: argparse.Namespace) -> datasets.Dataset:
    """The evaluation split the runs are scored on (after a training run has written it, when generated)."""
    if args.dataset_format == "generated":
        data = DataArguments(data_dir=args.data_dir, generate_synthetic=args.difficulty)
    else:
        data = DataArguments(data_dir=args.data_dir, dataset_name=args.dataset_name, dataset_format=args.dataset_format)
    return data.load_split(args.eval_split)


def common_flags(args: argparse.Namespace, *, output_dir: Path, steps: int, run_name: str, seed: int = 0) -> list[str]:
    """Flags every training run of the demo shares: data, image size, schedule, logging under `run_name` with a
    progress bar (then --training_flags, which win over them)."""
    return (
        data_flags(args)
        + [
            "--output_dir", str(output_dir), "--do_train", "--do_eval",
            "--max_steps", str(steps), "--per_device_train_batch_size", str(args.batch_size),
            "--per_device_eval_batch_size", "32",
            "--learning_rate", "2e-3", "--weight_decay", "1e-4", "--warmup_steps", str(min(100, steps // 10)),
            "--lr_scheduler_type", "cosine", "--max_grad_norm", "35", "--logging_steps", "50",
            "--save_strategy", "no", "--report_to", "none", "--seed", str(seed), "--run_name", run_name,
            "--dataloader_num_workers", str(args.dataloader_num_workers),
            # The demo's folders are its own: each run trains the students into them again (and a teacher whose
            # cached folder is incomplete).
            "--overwrite_output_dir", "true",
        ]
        + shlex.split(args.training_flags)
    )  # fmt: skip


def detector_flags(prefix: str, backbone: str, channels: int = 64, *, pretrained: bool = False) -> list[str]:
    """A small GFL: `channels`-wide FPN and head with two stacked convs, sized for a CPU."""
    return [
        f"--{prefix}backbone", backbone, f"--{prefix}fpn_channels", str(channels),
        f"--{prefix}head_channels", str(channels), f"--{prefix}head_stacked_convs", "2",
        f"--{prefix}backbone_pretrained", str(pretrained).lower(),
    ]  # fmt: skip


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


@dataclass
class Teacher:
    """The teacher the students learn from, and the file with its scores on the evaluation split."""

    name_or_path: str
    summary_file: Path


def train_teacher(args: argparse.Namespace) -> Teacher:
    """Train the teacher once (a later run with the same settings reuses it), or score the one
    `--teacher_model_name_or_path` names once."""
    if args.teacher_model_name_or_path:
        name = args.teacher_model_name_or_path
        scores_dir = Path(args.teacher_cache_dir) / f"scores-{teacher_key(args)}-{data_key(args)}"
        if not (scores_dir / "summary.json").is_file():
            train_detector(
                data_flags(args)
                + [
                    "--model_name_or_path", name, "--output_dir", str(scores_dir), "--do_eval",
                    "--per_device_eval_batch_size", "32", "--report_to", "none", "--disable_tqdm", "true",
                    "--dataloader_num_workers", str(args.dataloader_num_workers),
                ]
                + shlex.split(args.training_flags)
            )  # fmt: skip
        else:
            print(f"Reusing the teacher's scores in {scores_dir}")
        return Teacher(name_or_path=name, summary_file=scores_dir / "summary.json")
    teacher_dir = Path(args.teacher_cache_dir) / (
        f"{args.teacher_backbone}-{args.teacher_steps}steps-{data_key(args)}-{args.channels}ch"
        + (f"-batch{args.batch_size}" if args.batch_size != 16 else "")
    )
    teacher = Teacher(name_or_path=str(teacher_dir), summary_file=teacher_dir / "summary.json")
    if teacher.summary_file.is_file() and (teacher_dir / "model.safetensors").is_file():
        print(f"Reusing the teacher in {teacher_dir}")
        return teacher
    train_detector(
        common_flags(
            args,
            output_dir=teacher_dir,
            steps=args.teacher_steps,
            run_name=f"the teacher (GFL {args.teacher_backbone})",
        )
        + detector_flags("", args.teacher_backbone, args.channels, pretrained=args.backbone_pretrained)
    )
    return teacher


def train_student(
    args: argparse.Namespace,
    teacher: Teacher,
    method: str,
    options: str,
    *,
    name: str | None = None,
    seed: int = 0,
    extra_flags: list[str] | None = None,
) -> Path:
    """Distil the teacher into a fresh student with `method` (`none` trains it alone); returns its folder."""
    student_dir = Path(args.output_dir) / f"student-{args.student_backbone}-{name or method}"
    distill(
        common_flags(
            args,
            output_dir=student_dir,
            steps=args.student_steps,
            seed=seed,
            run_name=f"the student (GFL {args.student_backbone}, {name or method}, seed {seed})",
        )
        + detector_flags("student_", args.student_backbone, args.channels, pretrained=args.backbone_pretrained)
        + [
            "--teacher_model_name_or_path", teacher.name_or_path, "--method", method, "--method_options", options,
            "--evaluate_teacher_at_start", "false",
            # Scored on the same validation set before: the card shows it without a re-run.
            "--teacher_metrics_file", str(teacher.summary_file),
        ]
        + list(extra_flags or [])
    )  # fmt: skip
    return student_dir


def evaluation_flags(args: argparse.Namespace) -> list[str]:
    """Score the distilled student `args.evaluations` times during training (each adds a selector picture)."""
    if args.evaluations < 1:
        return []
    # Rounded up, so the last one falls before the final evaluation rather than a step or two ahead of it.
    every = -(-args.student_steps // (args.evaluations + 1))
    return ["--eval_strategy", "steps", "--eval_steps", str(every)]


def announce(stage: int, what: str, started: float) -> None:
    """Print which of the demo's four stages begins, and the time spent so far."""
    elapsed = time.perf_counter() - started
    print(f"\n[{stage}/4, {format_duration(elapsed)} so far] {what}", flush=True)


def main() -> None:
    args = parse_args()
    started = time.perf_counter()
    print(
        f"The demo trains a teacher (GFL {args.teacher_backbone}, {args.teacher_steps} steps; reused when cached), "
        f"then a student (GFL {args.student_backbone}, {args.student_steps} steps) alone and distilled with "
        f"{args.method}, then scores all three. Each training run logs its estimated time left after its first "
        "steps.",
        flush=True,
    )
    announce(1, f"The teacher: GFL {args.teacher_backbone}, {args.teacher_steps} steps", started)
    teacher = train_teacher(args)
    announce(2, f"The student alone: GFL {args.student_backbone}, {args.student_steps} steps", started)
    plain_dir = train_student(args, teacher, "none", "{}")
    announce(3, f"The student distilled with {args.method}: {args.student_steps} steps", started)
    # The distilled student's model card lists the plain student beside it.
    distilled_dir = train_student(
        args,
        teacher,
        args.method,
        args.method_options,
        extra_flags=["--baseline_metrics_file", str(plain_dir / "summary.json")] + evaluation_flags(args),
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
    throughputs = images_per_second([directory for _, directory in runs], load_eval_split(args))
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
