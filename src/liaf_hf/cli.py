"""What the command-line scripts share: every argument dataclass they give `HfArgumentParser` (the detector, the
data, the output folder, faults, distillation, the model card), and the steps around the Trainer (building a
detector, preparing the datasets, training and scoring, the run summary).

The Trainer pieces themselves (collator, metrics, callbacks) are in `liaf_hf.trainer`; the scripts are in
`examples/`."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import datasets
import torch
from transformers import TrainingArguments
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR
from transformers.utils import CONFIG_NAME, SAFE_WEIGHTS_INDEX_NAME, SAFE_WEIGHTS_NAME

from .data import load_coco_detection
from .distillation.base import check_method_options, method_parts
from .errors import LiafError
from .models.gfl.configuration_gfl import GFLConfig
from .models.gfl.modeling_gfl import GFLForObjectDetection

#: What `DataArguments.dataset_format` takes: auto finds coco, kitti or hub from the layout.
DATASET_FORMATS = ("auto", "coco", "kitti", "hub")


@dataclass
class DetectorArguments:
    """How to build a GFL detector (ignored when `model_name_or_path` names a saved one)."""

    model_name_or_path: str | None = field(
        default=None, metadata={"help": "A saved GFL directory to start from (its config wins over the flags below)."}
    )
    backbone: str = field(default="resnet18", metadata={"help": "Any timm model with features_only support."})
    backbone_pretrained: bool = field(default=False, metadata={"help": "Load timm's pretrained backbone weights."})
    use_pretrained_backbone: bool = field(
        default=False, metadata={"help": "The same as --backbone_pretrained, by transformers' name (either one does)."}
    )
    fpn_channels: int = field(default=256, metadata={"help": "FPN width."})
    head_channels: int = field(default=256, metadata={"help": "Width of the head's stacked convs."})
    head_stacked_convs: int = field(default=4, metadata={"help": "Stacked convs per head branch."})
    head_norm_groups: int = field(default=32, metadata={"help": "GroupNorm groups in the head."})
    num_fpn_levels: int = field(default=5, metadata={"help": "FPN outputs (P3-P7 by default)."})


def prefixed_arguments(cls: type, prefix: str, name: str) -> type:
    """A copy of an arguments dataclass whose fields are named `<prefix><field>`, so one parser can hold
    two of them (e.g. `--student_backbone` beside a teacher's flags)."""
    fields = [
        (prefix + f.name, f.type, field(default=f.default, metadata={"help": f.metadata.get("help", "")}))
        for f in dataclasses.fields(cls)
    ]
    return dataclasses.make_dataclass(name, fields)


def unprefixed(arguments: Any, prefix: str, cls: type) -> Any:
    """The `cls` instance holding the values of a `prefixed_arguments` instance."""
    return cls(**{f.name: getattr(arguments, prefix + f.name) for f in dataclasses.fields(cls)})


@dataclass
class DataArguments:
    """Where the detection data comes from: a COCO-layout or KITTI-layout folder (`--data_dir`; the format
    is found from its layout) or a Hub-format set (`--dataset_name`)."""

    data_dir: str | None = field(
        default=None,
        metadata={
            "help": "COCO-layout root (annotations/instances_<split>.json and <split>/) or KITTI-layout root "
            "(training/image_2, training/label_2, optional ImageSets/<split>.txt)."
        },
    )
    dataset_name: str | None = field(
        default=None,
        metadata={
            "help": "Instead of --data_dir: a Hub dataset id with the detection schema (e.g. cppe-5; needs the "
            "network), a DatasetDict saved with save_to_disk, or an imagefolder with metadata.jsonl."
        },
    )
    dataset_format: str = field(
        default="auto",
        metadata={
            "help": "auto (hub with --dataset_name or a --data_dir holding a saved DatasetDict or an "
            "imagefolder; kitti when --data_dir has training/label_2 or with --generate_synthetic kitti; else "
            "coco), coco, kitti or hub."
        },
    )
    dataset_bbox_format: str = field(
        default="xywh", metadata={"help": "Boxes of a Hub-format set: xywh (COCO's, as cppe-5) or xyxy."}
    )
    train_split: str = field(default="train")
    eval_split: str = field(default="val")
    kitti_classes: str = field(
        default="Car,Pedestrian,Cyclist", metadata={"help": "KITTI types trained as classes, comma-separated."}
    )
    kitti_type_map: str = field(
        default="{}",
        metadata={
            "help": 'JSON object counting further KITTI types as classes, e.g. \'{"Van": "Car"}\'; types neither '
            "in --kitti_classes nor mapped are ignore regions."
        },
    )
    kitti_skip_invalid: bool = field(
        default=False,
        metadata={
            "help": "Leave out bad KITTI label lines, unknown types and unpaired files, counted in the log, "
            "instead of stopping at the first."
        },
    )
    split_seed: int = field(
        default=0,
        metadata={"help": "Seed of the 80/20 split written to ImageSets/ when a KITTI root has no split files."},
    )
    generate_synthetic: str | None = field(
        default=None,
        metadata={
            "help": "Write the generated set into --data_dir first: easy, medium or hard (COCO layout), or kitti "
            "(the KITTI-layout set: 384x128 frames, Car/Pedestrian/Cyclist, Van and DontCare regions)."
        },
    )
    synthetic_num_train: int = field(default=2000)
    synthetic_num_val: int = field(default=500)
    synthetic_seed: int = field(default=0)
    max_train_samples: int | None = field(
        default=None,
        metadata={"help": "Train on the first N training images only (a quick run, or a teacher that has seen less)."},
    )
    max_eval_samples: int | None = field(default=None, metadata={"help": "Score on the first N eval images."})
    allow_outside_paths: bool = field(
        default=False,
        metadata={
            "help": "Let a COCO file_name be absolute or climb out of the image folder with '..' (refused by "
            "default, naming the record, so an annotation file cannot read files elsewhere unnoticed)."
        },
    )
    shortest_edge: int = field(default=800, metadata={"help": "Resize the shorter image edge to this."})
    longest_edge: int = field(default=1333, metadata={"help": "Cap the longer image edge at this."})

    def __post_init__(self) -> None:
        if (self.data_dir is None) == (self.dataset_name is None):
            raise ValueError("give exactly one of --data_dir and --dataset_name")
        if self.dataset_format not in DATASET_FORMATS:
            raise ValueError(f"--dataset_format must be auto, coco, kitti or hub, got {self.dataset_format!r}")
        if self.dataset_name is not None and self.dataset_format not in ("auto", "hub"):
            raise ValueError("--dataset_name is a Hub-format set: use --data_dir for coco and kitti")
        for name in ("max_train_samples", "max_eval_samples"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
                raise ValueError(f"--{name} must be a whole number of images, at least 1, got {value!r}")
        if self.generate_synthetic is not None and self.data_dir is None:
            raise ValueError("--generate_synthetic writes into --data_dir, which is missing")
        try:
            type_map = json.loads(self.kitti_type_map)
        except json.JSONDecodeError as error:
            raise ValueError(f"--kitti_type_map is not valid JSON: {error}") from error
        if not isinstance(type_map, dict) or not all(isinstance(v, str) for v in type_map.values()):
            raise ValueError(f"--kitti_type_map must be a JSON object of type names, got {self.kitti_type_map!r}")

    @property
    def resolved_format(self) -> str:
        """The dataset format: coco, kitti or hub (`dataset_format`, or found from the layout)."""
        from .data.hub_formats import is_saved_or_imagefolder
        from .data.kitti import is_kitti_root

        if self.dataset_format != "auto":
            return self.dataset_format
        if self.dataset_name is not None or is_saved_or_imagefolder(self.data_dir):
            return "hub"
        if self.generate_synthetic == "kitti" or is_kitti_root(self.data_dir):
            return "kitti"
        return "coco"

    @property
    def display_name(self) -> str:
        """A short name of the data for model cards: the folder's name or the Hub id."""
        return Path(self.data_dir).name if self.data_dir is not None else str(self.dataset_name)

    def load_split(self, split: str) -> datasets.Dataset:
        """One split in the library's detection schema, read in this arguments' format."""
        from .data import load_hub_detection, load_kitti

        if self.resolved_format == "hub":
            return load_hub_detection(self.dataset_name or self.data_dir, split, bbox_format=self.dataset_bbox_format)
        if self.resolved_format == "kitti":
            return load_kitti(
                self.data_dir,
                split,
                classes=[name.strip() for name in self.kitti_classes.split(",") if name.strip()],
                type_map=json.loads(self.kitti_type_map),
                skip_invalid=self.kitti_skip_invalid,
                seed=self.split_seed,
            )
        return load_coco_detection(self.data_dir, split, allow_outside_paths=self.allow_outside_paths)


@dataclass
class OutputArguments:
    """What a training run may do to an `--output_dir` that already holds a trained model or checkpoints.

    transformers 5 dropped `TrainingArguments.overwrite_output_dir`; the example scripts keep its meaning, with
    the safe default: a run refuses to train over a saved model unless told to.
    """

    overwrite_output_dir: bool = field(
        default=False,
        metadata={
            "help": "Train into an --output_dir that already holds a trained model (config.json, "
            "model.safetensors) or checkpoints (checkpoint-*), replacing them. Without it such a run is refused "
            "unless it resumes (--resume_from_checkpoint)."
        },
    )


def check_output_dir(
    training_args: TrainingArguments, *, overwrite: bool, keep: dict[str, str | None] | None = None
) -> None:
    """Refuse a run that would write over a model it was not told to replace; called before any data or model
    loads, so nothing has been written when it stops.

    Args:
        training_args: the run's arguments (`output_dir`, `do_train`, `resume_from_checkpoint`).
        overwrite: `--overwrite_output_dir`: training may replace the model and checkpoints in `output_dir`.
        keep: folders the run reads and must leave intact, by the flag that names them (the teacher). Refused
            whatever `overwrite` says when `output_dir` is one of them, or one lies in a `checkpoint-*` folder of
            `output_dir` (which saving a checkpoint rewrites and `save_total_limit` deletes).

    Raises:
        LiafError: naming the folder, what it holds and the flags that allow the run.
    """
    output_dir = Path(training_args.output_dir)
    resolved = output_dir.resolve()
    for flag, folder in (keep or {}).items():
        if folder is None:
            continue
        kept = Path(folder).resolve()
        inside = kept.relative_to(resolved).parts if kept.is_relative_to(resolved) else None
        if inside == ():
            raise LiafError(
                f"--output_dir {output_dir} is the folder of {flag} {folder}: the run would replace its weights, "
                "config and results with its own. Give another --output_dir."
            )
        if inside and inside[0].startswith(f"{PREFIX_CHECKPOINT_DIR}-"):
            raise LiafError(
                f"{flag} {folder} lies in {output_dir / inside[0]}, a checkpoint folder of --output_dir "
                f"{output_dir}: saving checkpoints would overwrite or delete it. Copy it elsewhere or give "
                "another --output_dir."
            )
    if not training_args.do_train or training_args.resume_from_checkpoint or overwrite or not output_dir.is_dir():
        return
    model_files = [
        name for name in (CONFIG_NAME, SAFE_WEIGHTS_NAME, SAFE_WEIGHTS_INDEX_NAME) if (output_dir / name).is_file()
    ]
    checkpoints = sorted(
        (path.name for path in output_dir.glob(f"{PREFIX_CHECKPOINT_DIR}-*") if path.is_dir()),
        key=lambda name: (len(name), name),
    )
    held = []
    if model_files:
        held.append(f"a trained model ({', '.join(model_files)})")
    if checkpoints:
        held.append(f"checkpoints ({', '.join(checkpoints)})")
    if held:
        resume = (
            f", --resume_from_checkpoint {output_dir / checkpoints[-1]} to continue that run," if checkpoints else ""
        )
        raise LiafError(
            f"--output_dir {output_dir} already holds {' and '.join(held)}, which this run would overwrite. Pass "
            f"--overwrite_output_dir true to replace them{resume} or give another --output_dir."
        )


def build_detector(arguments: DetectorArguments, id2label: dict[int, str]) -> GFLForObjectDetection:
    """A new detector from `arguments`, or the saved one it names (whose classes must be `id2label`)."""
    if arguments.model_name_or_path:
        model = GFLForObjectDetection.from_pretrained(arguments.model_name_or_path, use_safetensors=True)
        if model.config.id2label != id2label:
            raise ValueError(
                f"{arguments.model_name_or_path} was trained on classes {model.config.id2label}, "
                f"but the dataset has {id2label}."
            )
        return model
    config = GFLConfig(
        backbone=arguments.backbone,
        use_pretrained_backbone=arguments.use_pretrained_backbone or arguments.backbone_pretrained,
        fpn_channels=arguments.fpn_channels,
        head_channels=arguments.head_channels,
        head_stacked_convs=arguments.head_stacked_convs,
        head_norm_groups=arguments.head_norm_groups,
        num_fpn_levels=arguments.num_fpn_levels,
        id2label=id2label,
        label2id={name: index for index, name in id2label.items()},
    )
    return GFLForObjectDetection(config)


def prepare_datasets(
    data_args: DataArguments, training_args: TrainingArguments
) -> tuple[datasets.Dataset, datasets.Dataset]:
    """Generate the synthetic set if asked, then load the train and eval splits (main process first) in the
    format `data_args` names or its layout shows (COCO, KITTI or Hub)."""
    from .data.synthetic import generate_coco_dataset, generate_kitti_dataset

    with training_args.main_process_first(desc="preparing the dataset"):
        # The main process writes the set; the others find it complete and reuse it.
        if data_args.generate_synthetic == "kitti":
            generate_kitti_dataset(
                data_args.data_dir,
                num_train=data_args.synthetic_num_train,
                num_val=data_args.synthetic_num_val,
                seed=data_args.synthetic_seed,
            )
        elif data_args.generate_synthetic:
            generate_coco_dataset(
                data_args.data_dir,
                difficulty=data_args.generate_synthetic,
                num_train=data_args.synthetic_num_train,
                num_val=data_args.synthetic_num_val,
                seed=data_args.synthetic_seed,
            )
        train_dataset = data_args.load_split(data_args.train_split)
        eval_dataset = data_args.load_split(data_args.eval_split)
    if data_args.max_train_samples is not None:
        train_dataset = train_dataset.select(range(min(data_args.max_train_samples, len(train_dataset))))
    if data_args.max_eval_samples is not None:
        eval_dataset = eval_dataset.select(range(min(data_args.max_eval_samples, len(eval_dataset))))
    return train_dataset, eval_dataset


def train_and_evaluate(trainer, training_args: TrainingArguments) -> dict[str, float]:
    """What the example scripts do with a built Trainer: train (resuming when asked) and save the model,
    metrics and state with `--do_train`; score with `--do_eval`. Returns the eval metrics ({} without)."""
    metrics: dict[str, float] = {}
    if training_args.do_train:
        train_result = trainer.train(resume_from_checkpoint=training_args.resume_from_checkpoint)
        trainer.save_model()
        trainer.log_metrics("train", train_result.metrics)
        trainer.save_metrics("train", train_result.metrics)
        trainer.save_state()
    if training_args.do_eval:
        metrics = trainer.evaluate()
        trainer.log_metrics("eval", metrics)
        trainer.save_metrics("eval", metrics)
    return metrics


def write_run_summary(output_dir: str, *, model: torch.nn.Module, metrics: dict, **fields: Any) -> dict:
    """Write `summary.json` into `output_dir`: `fields`, the model's parameter count and every numeric
    metric (what the demo and the benchmarks read back). Returns what was written."""
    summary = {
        **fields,
        "parameters": sum(parameter.numel() for parameter in model.parameters()),
        **{key: value for key, value in metrics.items() if isinstance(value, (int, float))},
    }
    Path(output_dir).mkdir(parents=True, exist_ok=True)
    (Path(output_dir) / "summary.json").write_text(json.dumps(summary, indent=2))
    return summary


@dataclass
class FaultArguments:
    """What a run does when it meets bad numbers or bad data (flags of the example scripts)."""

    nonfinite_loss: Literal["error", "skip"] = field(
        default="error",
        metadata={
            "help": "On a NaN or inf loss: 'error' stops naming the component and the step; 'skip' leaves the "
            "weights, optimizer and buffers (BatchNorm statistics) untouched for that step and counts it "
            "(nonfinite_steps_skipped)."
        },
    )
    skip_bad_images: bool = field(
        default=False,
        metadata={
            "help": "Drop an unreadable or truncated image from its batch, log and count it (bad_images_skipped) "
            "instead of stopping with an error naming the file."
        },
    )


@dataclass
class DistillationArguments:
    """What a distillation run distils from and how: the teacher, the method and its options, and what the run
    reports about them."""

    teacher_model_name_or_path: str = field(metadata={"help": "Saved GFL teacher directory (loaded strictly)."})
    method: str = field(
        default="liaf",
        metadata={
            "help": "Distillation method: 'none', 'liaf', 'mimic', 'fgd', 'pkd', 'ld', 'aid', or several joined by "
            "'+' (e.g. 'liaf+ld')."
        },
    )
    method_options: str = field(
        default="{}",
        metadata={
            "help": 'JSON object of method options, e.g. \'{"alpha": 2.0, "objective": "robust"}\'; for a combined '
            "method one object per part, keyed by the part's name: "
            '\'{"liaf": {"alpha": 2.0}, "ld": {"weight": 0.5}}\'.'
        },
    )
    inherit: bool = field(default=False, metadata={"help": "Start the student's neck and head from the teacher's."})
    evaluate_teacher_at_start: bool = field(default=True, metadata={"help": "Score the teacher before training."})
    compile_distiller: bool = field(
        default=False,
        metadata={
            "help": "Compile the distillation loss with torch.compile: the same values, fewer kernel launches on a "
            "GPU, a slower start while it compiles."
        },
    )
    teacher_metrics_file: str | None = field(
        default=None,
        metadata={
            "help": "JSON of the teacher's metrics on the same eval set (its run's eval_results.json or "
            "summary.json), for the model card when the teacher is not scored at start."
        },
    )
    selector_pictures: bool = field(
        default=True,
        metadata={
            "help": "When the method has instance selectors (liaf, liaf+...), draw their weights over fixed eval "
            "images at the start and at every evaluation into <output_dir>/selector_weights/ (and TensorBoard)."
        },
    )
    selector_picture_images: int = field(default=6, metadata={"help": "How many eval images the pictures show."})
    selector_train_images: int = field(
        default=0,
        metadata={
            "help": "When the method has instance selectors: once training ends, record their weights on the first "
            "N training images (not augmented, with their training annotations) into "
            "<output_dir>/selector_weights/train_weights.json. 0: none."
        },
    )

    def __post_init__(self) -> None:
        try:
            method_parts(self.method)
        except ValueError as error:
            raise ValueError(f"--method: {error}") from error
        try:
            options = json.loads(self.method_options)
        except json.JSONDecodeError as error:
            raise ValueError(f"--method_options is not valid JSON: {error}") from error
        if not isinstance(options, dict):
            raise ValueError(f"--method_options must be a JSON object, got {self.method_options!r}.")
        # Checked here, at parse time, so a misspelt or mistyped option stops the run before the data and the
        # teacher load.
        try:
            check_method_options(self.method, options)
        except ValueError as error:
            raise ValueError(f"--method_options: {error}") from error
        if self.selector_picture_images < 1:
            raise ValueError(f"--selector_picture_images must be at least 1, got {self.selector_picture_images}.")
        if self.selector_train_images < 0:
            raise ValueError(f"--selector_train_images must be 0 or more, got {self.selector_train_images}.")

    @property
    def options(self) -> dict:
        return json.loads(self.method_options)


@dataclass
class ModelCardArguments:
    """Command-line flags for the model card the example scripts write into the output directory."""

    card_dataset_name: str | None = field(
        default=None,
        metadata={"help": "Dataset name shown in the card and its metadata (default: the data_dir name or Hub id)."},
    )
    dataset_id: str | None = field(
        default=None, metadata={"help": "Hub id of the dataset (e.g. 'detection-datasets/coco'), for the metadata."}
    )
    baseline_metrics_file: str | None = field(
        default=None,
        metadata={
            "help": "summary.json (or eval_results.json) of the same student trained without distillation, for the "
            "card's results table."
        },
    )
    license: str | None = field(
        default=None, metadata={"help": "License id for the card's metadata (e.g. apache-2.0)."}
    )
