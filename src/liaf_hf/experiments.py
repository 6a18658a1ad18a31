"""Typed run specs for the demo and the benchmarks: one teacher and the students distilled from it, on one set
and schedule.

A spec builds the argument dataclasses the example scripts parse (`liaf_hf.cli`) and calls the functions the
scripts call (`liaf_hf.scripts`), so a benchmark measures what a user's command runs, without building a
command line. `examples/demo.py` and `benchmarks/distill_gain.py` are thin callers:

    experiment = Experiment(data=DataSpec(data_dir="data/shapes-easy", generated="easy"), output_dir="runs/x")
    teacher = experiment.teacher()                       # trained once, then reused from `teacher_cache_dir`
    student_dir = experiment.student(teacher, "liaf", {}, seed=0)

Trained teachers are kept under folder names built from every setting that changes them
(`Experiment.teacher_dir`), so a later run with other settings never reuses the wrong one.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import re
import shlex
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import datasets
from transformers import HfArgumentParser

from .cli import DATASET_FORMATS, DataArguments
from .data.synthetic import SyntheticSpec
from .scripts import DETECTOR_TRAINING_ARGUMENTS, DISTILLATION_ARGUMENTS, distill, train_detector


def _short_hash(text: str) -> str:
    return hashlib.sha1(text.encode()).hexdigest()[:8]


def _slug(text: str) -> str:
    """A folder-name-safe version of a path's or Hub id's last part."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text.rstrip("/").split("/")[-1]) or "data"


@dataclass(frozen=True, kw_only=True)
class DataSpec:
    """Where a run's images come from and how they are sized: the generated set of one difficulty (written into
    `data_dir` by the first run), or data already on disk or on the Hub."""

    data_dir: str | None = None
    generated: str | None = None
    """The generated set's difficulty (`liaf_hf.data.synthetic`); None reads the data as they are."""
    num_train: int = 2000
    num_val: int = 500
    dataset_format: str = "auto"
    dataset_name: str | None = None
    train_split: str = "train"
    eval_split: str = "val"
    shortest_edge: int = 128
    longest_edge: int = 128
    max_train_samples: int | None = None
    """Train on the first N training images only."""

    def __post_init__(self) -> None:
        self.arguments()  # DataArguments checks the combination, naming the flag

    def arguments(self) -> DataArguments:
        """The `DataArguments` a script would parse for this data."""
        size = {"shortest_edge": self.shortest_edge, "longest_edge": self.longest_edge}
        if self.generated is not None:
            return DataArguments(
                data_dir=self.data_dir,
                generate_synthetic=self.generated,
                synthetic_num_train=self.num_train,
                synthetic_num_val=self.num_val,
                max_train_samples=self.max_train_samples,
                **size,
            )
        return DataArguments(
            data_dir=self.data_dir,
            dataset_name=self.dataset_name,
            dataset_format=self.dataset_format,
            train_split=self.train_split,
            eval_split=self.eval_split,
            max_train_samples=self.max_train_samples,
            **size,
        )

    def key(self) -> str:
        """The data and image size as part of a folder name."""
        size = (
            f"{self.shortest_edge}px"
            if self.shortest_edge == self.longest_edge
            else f"{self.shortest_edge}x{self.longest_edge}px"
        )
        first = f"-first{self.max_train_samples}" if self.max_train_samples is not None else ""
        if self.generated is not None:
            return f"{self.generated}-{size}-{self.num_train}images{first}"
        source = self.dataset_name or str(Path(self.data_dir).resolve())
        splits = f"{self.dataset_format}:{source}:{self.train_split}:{self.eval_split}"
        return f"{_slug(source)}-{_short_hash(splits)}-{size}{first}"

    def load_eval_split(self) -> datasets.Dataset:
        """The evaluation split the runs are scored on (once a run has written it, when generated)."""
        return self.arguments().load_split(self.eval_split)


@dataclass(frozen=True, kw_only=True)
class DetectorSpec:
    """A small GFL: a timm backbone, a `channels`-wide FPN and a head with `stacked_convs` convolutions."""

    backbone: str
    channels: int = 64
    stacked_convs: int = 2
    pretrained: bool = False

    def arguments(self) -> dict[str, Any]:
        """The `DetectorArguments` fields of this detector."""
        return {
            "backbone": self.backbone,
            "fpn_channels": self.channels,
            "head_channels": self.channels,
            "head_stacked_convs": self.stacked_convs,
            "backbone_pretrained": self.pretrained,
        }


@dataclass(frozen=True, kw_only=True)
class Schedule:
    """How a detector trains: AdamW at a cosine learning rate with a short warm-up, scored at the end (and
    `evaluations` times during training)."""

    steps: int
    batch_size: int
    seed: int = 0
    learning_rate: float = 2e-3
    weight_decay: float = 1e-4
    max_grad_norm: float = 35.0
    eval_batch_size: int = 32
    evaluations: int = 0
    """Scorings during training, evenly spaced (besides the one at the end)."""
    eval_every: int = 0
    """Score every this many steps instead (an AP-against-steps curve); 0: as `evaluations` says."""
    dataloader_num_workers: int = 0
    flags: tuple[str, ...] = ()
    """Flags of the scripts (`TrainingArguments`' or any other, e.g. `("--optim", "sgd")`) that win over the
    values above, as `--training_flags` gives them."""

    def training_arguments(self, output_dir: str | Path, run_name: str) -> dict[str, Any]:
        """The `TrainingArguments` fields of this schedule, writing into `output_dir`."""
        values = {
            "output_dir": str(output_dir), "do_train": True, "do_eval": True, "max_steps": self.steps,
            "per_device_train_batch_size": self.batch_size, "per_device_eval_batch_size": self.eval_batch_size,
            "learning_rate": self.learning_rate, "weight_decay": self.weight_decay,
            "warmup_steps": min(100, self.steps // 10), "lr_scheduler_type": "cosine",
            "max_grad_norm": self.max_grad_norm, "logging_steps": 50, "save_strategy": "no", "report_to": "none",
            "seed": self.seed, "run_name": run_name, "dataloader_num_workers": self.dataloader_num_workers,
        }  # fmt: skip
        if self.eval_every > 0:
            values.update(eval_strategy="steps", eval_steps=self.eval_every)
        elif self.evaluations > 0:
            # Rounded up, so the last one falls before the final evaluation rather than a step or two after it.
            values.update(eval_strategy="steps", eval_steps=-(-self.steps // (self.evaluations + 1)))
        return values


def build_arguments(
    classes: Mapping[str, type], values: Mapping[str, Mapping[str, Any]], flags: Sequence[str] = ()
) -> dict[str, Any]:
    """Each of a script's argument dataclasses (`classes`, by keyword name) built from `values`, with the
    command-line `flags` winning over them, parsed as the script parses them."""
    given: dict[str, Any] = {}
    if flags:
        parser = HfArgumentParser(tuple(classes.values()))
        for action in parser._actions:
            # Only what the flags name: every other field keeps the spec's value.
            action.default, action.required = argparse.SUPPRESS, False
        given = vars(parser.parse_args(list(flags)))
    built = {}
    for name, cls in classes.items():
        names = {f.name for f in dataclasses.fields(cls) if f.init}
        built[name] = cls(**{**values.get(name, {}), **{key: v for key, v in given.items() if key in names}})
    return built


@dataclass(frozen=True, kw_only=True)
class DetectorRun:
    """Train a detector (`examples/train_detector.py`'s run), or score a saved one with `train=False`."""

    data: DataSpec
    output_dir: Path
    detector: DetectorSpec | None = None
    model_name_or_path: str | None = None
    schedule: Schedule | None = None
    run_name: str = "GFL detector"

    def run(self) -> dict[str, float]:
        if (self.detector is None) == (self.model_name_or_path is None):
            raise ValueError("DetectorRun: give a detector to train or a model_name_or_path to score")
        if self.detector is not None:
            if self.schedule is None:
                raise ValueError("DetectorRun: a detector to train needs a schedule")
            training = self.schedule.training_arguments(self.output_dir, self.run_name)
            values = {"detector": self.detector.arguments(), "output": {"overwrite_output_dir": True}}
            flags = self.schedule.flags
        else:
            training = {
                "output_dir": str(self.output_dir), "do_eval": True, "per_device_eval_batch_size": 32,
                "report_to": "none", "disable_tqdm": True,
                "dataloader_num_workers": self.schedule.dataloader_num_workers if self.schedule else 0,
            }  # fmt: skip
            values = {"detector": {"model_name_or_path": self.model_name_or_path}}
            flags = self.schedule.flags if self.schedule else ()
        values = {**values, "data": dataclasses.asdict(self.data.arguments()), "training": training}
        return train_detector(**build_arguments(DETECTOR_TRAINING_ARGUMENTS, values, flags))


@dataclass(frozen=True, kw_only=True)
class DistillationRun:
    """Distil `teacher` into a new student with `method` (`examples/distill.py`'s run; `none` trains the
    student alone)."""

    data: DataSpec
    student: DetectorSpec
    schedule: Schedule
    teacher: str
    output_dir: Path
    method: str = "liaf"
    method_options: Mapping[str, Any] = field(default_factory=dict)
    teacher_metrics_file: Path | None = None
    """The teacher's scores on the same evaluation split, for the model card, instead of scoring it again."""
    baseline_metrics_file: Path | None = None
    """The plain student's summary, for the model card's results table."""
    selector_train_images: int = 0
    """Record the selectors' weights on this many training images when training ends (`--selector_train_images`)."""
    run_name: str = "GFL student"

    def run(self) -> dict[str, float]:
        values = {
            "distillation": {
                "teacher_model_name_or_path": self.teacher,
                "method": self.method,
                "method_options": json.dumps(dict(self.method_options)),
                "evaluate_teacher_at_start": False,
                "teacher_metrics_file": str(self.teacher_metrics_file) if self.teacher_metrics_file else None,
                "selector_train_images": self.selector_train_images,
            },
            "student": {f"student_{key}": value for key, value in self.student.arguments().items()},
            "data": dataclasses.asdict(self.data.arguments()),
            "card": {"baseline_metrics_file": str(self.baseline_metrics_file) if self.baseline_metrics_file else None},
            "output": {"overwrite_output_dir": True},
            "training": self.schedule.training_arguments(self.output_dir, self.run_name),
        }
        return distill(**build_arguments(DISTILLATION_ARGUMENTS, values, self.schedule.flags))


# The knobs of a generated set that change its annotations and not its images (`SyntheticSpec`).
_ANNOTATION_KNOBS = frozenset({"annotation_noise", "noise_box_shift", "merged_classes", "unlabelled_classes"})


@dataclass(frozen=True)
class Teacher:
    """The teacher the students learn from, and the file with its scores on the evaluation split."""

    name_or_path: str
    summary_file: Path

    @property
    def metrics(self) -> dict[str, Any]:
        return json.loads(self.summary_file.read_text())


@dataclass(frozen=True, kw_only=True)
class Experiment:
    """One teacher (trained here and cached, or given) and the students distilled from it, all on `data`, with
    `channels`-wide detectors and one schedule per role."""

    data: DataSpec
    output_dir: Path
    teacher_cache_dir: Path
    teacher_backbone: str = "resnet50"
    teacher_steps: int = 600
    teacher_batch_size: int = 16
    teacher_model_name_or_path: str | None = None
    """A trained teacher to use instead of training one: it is scored once, its scores kept in the cache."""
    teacher_num_train: int | None = None
    """Train the teacher on the first N training images only (the students see them all): a teacher that is
    right on the instances it has seen and less so on the others."""
    teacher_difficulty: str | None = None
    """Train the teacher on another generated preset of the same scenes, e.g. `"varied-coarse"` (varied's
    images with a coarser label set), into a folder beside `data.data_dir`; the students train on `data` and
    both are scored on its evaluation split. Only presets that differ from `data`'s in their annotations."""
    student_backbone: str = "resnet18"
    student_steps: int = 400
    batch_size: int = 16
    channels: int = 64
    pretrained: bool = False
    dataloader_num_workers: int = 0
    flags: tuple[str, ...] = ()
    """More script flags for every training and scoring run (`Schedule.flags`)."""

    def data_key(self) -> str:
        """The data and image size as a folder name's part, with what else changes a run (pretrained backbones,
        extra flags), so cached teachers and reused students are never mixed across settings."""
        key = self.data.key()
        if self.pretrained:
            key += "-pretrained"
        if self.flags:
            key += f"-flags{_short_hash(' '.join(self.flags))}"
        return key

    def teacher_key(self) -> str:
        """The teacher as a folder name's part: the one `teacher_model_name_or_path` names, or how it trains."""
        name = self.teacher_model_name_or_path
        if name:
            return f"{_slug(name)}-{_short_hash(str(Path(name).resolve()) if Path(name).exists() else name)}"
        seen = f"-on{self.teacher_num_train}images" if self.teacher_num_train is not None else ""
        if self.teacher_difficulty is not None:
            seen += f"-on-{self.teacher_difficulty}"
        return f"{self.teacher_backbone}-{self.teacher_steps}steps{seen}"

    def __post_init__(self) -> None:
        if self.teacher_num_train is not None and self.teacher_model_name_or_path:
            raise ValueError("teacher_num_train trains the teacher here: it cannot go with teacher_model_name_or_path")
        if self.teacher_difficulty is not None:
            self._check_teacher_difficulty()
        self.teacher_data()  # DataArguments checks the number of images, naming the flag

    def _check_teacher_difficulty(self) -> None:
        """Refuse a `teacher_difficulty` that would not show the teacher the students' scenes, naming why."""
        if self.teacher_model_name_or_path:
            raise ValueError("teacher_difficulty trains the teacher here: it cannot go with teacher_model_name_or_path")
        if self.data.generated is None or self.data.data_dir is None:
            raise ValueError(
                f"teacher_difficulty {self.teacher_difficulty!r} needs generated data in a data_dir (the students "
                "train on a generated set, the teacher on another preset of its scenes)"
            )
        students, teachers = (
            dataclasses.asdict(SyntheticSpec.preset(name)) for name in (self.data.generated, self.teacher_difficulty)
        )
        differing = sorted(key for key in students if key not in _ANNOTATION_KNOBS and students[key] != teachers[key])
        if differing:
            raise ValueError(
                f"teacher_difficulty {self.teacher_difficulty!r} draws other scenes than the students' "
                f"{self.data.generated!r} (it differs in {', '.join(differing)}); only presets that differ in "
                f"their annotations ({', '.join(sorted(_ANNOTATION_KNOBS))}) show the teacher the same images"
            )

    def teacher_data(self) -> DataSpec:
        """The data the teacher trains on: `data`, its first `teacher_num_train` training images, and with
        `teacher_difficulty` the same scenes generated with that preset's annotations beside `data`."""
        data = self.data
        if self.teacher_difficulty is not None:
            data_dir = Path(data.data_dir)
            data = dataclasses.replace(
                data,
                generated=self.teacher_difficulty,
                data_dir=str(data_dir.with_name(f"{data_dir.name}-teacher-{self.teacher_difficulty}")),
            )
        if self.teacher_num_train is None:
            return data
        return dataclasses.replace(data, max_train_samples=self.teacher_num_train)

    def students_dir(self) -> str:
        """The students' folder name under a benchmark's runs: the teacher, student, schedule and data."""
        return (
            f"{self.teacher_key()}-to-{self.student_backbone}-{self.student_steps}steps-"
            f"batch{self.batch_size}-{self.data_key()}-{self.channels}ch"
        )

    def teacher_dir(self) -> Path:
        """Where the teacher trained with these settings is kept."""
        return Path(self.teacher_cache_dir) / (
            f"{self.teacher_key()}-{self.data_key()}-{self.channels}ch"
            + (f"-batch{self.teacher_batch_size}" if self.teacher_batch_size != 16 else "")
        )

    def _schedule(self, steps: int, batch_size: int, *, seed: int = 0, evaluations: int = 0) -> Schedule:
        return Schedule(
            steps=steps,
            batch_size=batch_size,
            seed=seed,
            evaluations=evaluations,
            dataloader_num_workers=self.dataloader_num_workers,
            flags=self.flags,
        )

    def teacher(self) -> Teacher:
        """Train the teacher once (a later run with the same settings reuses it), or score the one
        `teacher_model_name_or_path` names once."""
        if self.teacher_model_name_or_path:
            scores_dir = Path(self.teacher_cache_dir) / f"scores-{self.teacher_key()}-{self.data_key()}"
            teacher = Teacher(name_or_path=self.teacher_model_name_or_path, summary_file=scores_dir / "summary.json")
            if teacher.summary_file.is_file():
                print(f"Reusing the teacher's scores in {scores_dir}")
                return teacher
            DetectorRun(
                data=self.data,
                output_dir=scores_dir,
                model_name_or_path=self.teacher_model_name_or_path,
                schedule=self._schedule(0, self.batch_size),
            ).run()
            return teacher
        teacher_dir = self.teacher_dir()
        teacher = Teacher(name_or_path=str(teacher_dir), summary_file=teacher_dir / "summary.json")
        if teacher.summary_file.is_file() and (teacher_dir / "model.safetensors").is_file():
            print(f"Reusing the teacher in {teacher_dir}")
            return teacher
        DetectorRun(
            data=self.teacher_data(),
            output_dir=teacher_dir,
            detector=DetectorSpec(backbone=self.teacher_backbone, channels=self.channels, pretrained=self.pretrained),
            schedule=self._schedule(self.teacher_steps, self.teacher_batch_size),
            run_name=f"the teacher (GFL {self.teacher_backbone})",
        ).run()
        return teacher

    def student(
        self,
        teacher: Teacher,
        method: str,
        options: Mapping[str, Any],
        *,
        name: str | None = None,
        seed: int = 0,
        evaluations: int = 0,
        baseline_metrics_file: Path | None = None,
        selector_train_images: int = 0,
    ) -> Path:
        """Distil `teacher` into a new student with `method` (`none` trains it alone) into
        `output_dir/student-<backbone>-<name>`; returns that folder. With `selector_train_images`, a method with
        selectors also records their weights on that many training images when training ends."""
        label = name or method
        student_dir = Path(self.output_dir) / f"student-{self.student_backbone}-{label}"
        DistillationRun(
            data=self.data,
            student=DetectorSpec(backbone=self.student_backbone, channels=self.channels, pretrained=self.pretrained),
            schedule=self._schedule(self.student_steps, self.batch_size, seed=seed, evaluations=evaluations),
            teacher=teacher.name_or_path,
            output_dir=student_dir,
            method=method,
            method_options=options,
            teacher_metrics_file=teacher.summary_file,
            baseline_metrics_file=baseline_metrics_file,
            selector_train_images=selector_train_images,
            run_name=f"the student (GFL {self.student_backbone}, {label}, seed {seed})",
        ).run()
        return student_dir


def add_experiment_arguments(parser: argparse.ArgumentParser, *, teacher_cache_dir: str | Path) -> None:
    """The data and model-size flags of an `Experiment`, shared by the demo and benchmarks/distill_gain.py
    (each adds its own schedule's flags)."""
    parser.add_argument("--difficulty", default="easy", help="Preset of the generated set.")
    parser.add_argument("--num_train", type=int, default=2000)
    parser.add_argument("--num_val", type=int, default=500)
    parser.add_argument("--batch_size", type=int, default=16)
    parser.add_argument("--channels", type=int, default=64, help="Width of the FPN and the head.")
    parser.add_argument(
        "--teacher_cache_dir", default=str(teacher_cache_dir), help="Trained teachers, kept by settings."
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
        "--teacher_num_train",
        type=int,
        default=None,
        help="Train the teacher on the first N training images only (the students see them all).",
    )
    data.add_argument(
        "--teacher_difficulty",
        default=None,
        help="Train the teacher on another preset of the same generated scenes (e.g. varied-coarse: varied's "
        "images with a coarser label set), written beside --data_dir; the students train on --difficulty's.",
    )
    data.add_argument(
        "--training_flags",
        default="",
        help='More flags for every training and scoring run, e.g. "--optim sgd --learning_rate 0.01"; they win '
        "over the defaults, and runs with other flags are kept apart.",
    )


def check_experiment_arguments(parser: argparse.ArgumentParser, args: argparse.Namespace) -> argparse.Namespace:
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


def experiment_from_args(args: argparse.Namespace, *, teacher_batch_size: int | None = None) -> Experiment:
    """The `Experiment` the flags of `add_experiment_arguments` (and the caller's schedule flags) describe."""
    generated = args.dataset_format == "generated"
    data = DataSpec(
        data_dir=args.data_dir,
        generated=args.difficulty if generated else None,
        num_train=args.num_train,
        num_val=args.num_val,
        dataset_format="auto" if generated else args.dataset_format,
        dataset_name=args.dataset_name,
        train_split=args.train_split,
        eval_split=args.eval_split,
        shortest_edge=args.shortest_edge,
        longest_edge=args.longest_edge,
    )
    return Experiment(
        data=data,
        output_dir=Path(args.output_dir),
        teacher_cache_dir=Path(args.teacher_cache_dir),
        teacher_backbone=args.teacher_backbone,
        teacher_steps=args.teacher_steps,
        teacher_batch_size=teacher_batch_size or args.batch_size,
        teacher_model_name_or_path=args.teacher_model_name_or_path,
        teacher_num_train=args.teacher_num_train,
        teacher_difficulty=args.teacher_difficulty,
        student_backbone=args.student_backbone,
        student_steps=args.student_steps,
        batch_size=args.batch_size,
        channels=args.channels,
        pretrained=args.backbone_pretrained,
        dataloader_num_workers=args.dataloader_num_workers,
        flags=tuple(shlex.split(args.training_flags)),
    )
