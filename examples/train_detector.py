"""Train, score and save a GFL detector with `transformers.Trainer`.

    python examples/train_detector.py --data_dir data/shapes --backbone resnet18 --output_dir runs/r18 \
        --num_train_epochs 12 --per_device_train_batch_size 16

Runs under `accelerate launch` as well. With `--generate_synthetic easy` the generated benchmark set is
written to `--data_dir` first (nothing is downloaded).
"""

from __future__ import annotations

import json
import logging
import sys
from dataclasses import dataclass, field
from pathlib import Path

from transformers import HfArgumentParser, Trainer, TrainingArguments

from liaf_hf import GFLConfig, GFLForObjectDetection, GFLImageProcessor
from liaf_hf.data import label_maps, load_coco_detection
from liaf_hf.data.collate import DetectionCollator, DetectionTransform
from liaf_hf.data.synthetic import generate_coco_dataset
from liaf_hf.metrics import coco_ground_truth_from_dataset, make_coco_compute_metrics
from liaf_hf.trainer_utils import DetectionsForMetrics

logger = logging.getLogger("train_detector")


@dataclass
class ModelArguments:
    model_name_or_path: str | None = field(
        default=None, metadata={"help": "A saved GFL directory to start from (its config wins over the flags below)."}
    )
    backbone: str = field(default="resnet18", metadata={"help": "Any timm model with features_only support."})
    backbone_pretrained: bool = field(default=False, metadata={"help": "Load timm's pretrained backbone weights."})
    fpn_channels: int = field(default=256, metadata={"help": "FPN width."})
    head_channels: int = field(default=256, metadata={"help": "Width of the head's stacked convs."})
    head_stacked_convs: int = field(default=4, metadata={"help": "Stacked convs per head branch."})
    head_norm_groups: int = field(default=32, metadata={"help": "GroupNorm groups in the head."})
    num_fpn_levels: int = field(default=5, metadata={"help": "FPN outputs (P3-P7 by default)."})
    shortest_edge: int = field(default=800, metadata={"help": "Resize the shorter image edge to this."})
    longest_edge: int = field(default=1333, metadata={"help": "Cap the longer image edge at this."})


@dataclass
class DataArguments:
    data_dir: str = field(metadata={"help": "COCO-layout root: annotations/instances_<split>.json and <split>/."})
    train_split: str = field(default="train")
    eval_split: str = field(default="val")
    generate_synthetic: str | None = field(
        default=None, metadata={"help": "Write the generated set of this difficulty (easy, medium, hard) first."}
    )
    synthetic_num_train: int = field(default=2000)
    synthetic_num_val: int = field(default=500)
    synthetic_seed: int = field(default=0)
    max_eval_samples: int | None = field(default=None, metadata={"help": "Score on the first N eval images."})


def build_model(model_args: ModelArguments, id2label: dict[int, str]) -> GFLForObjectDetection:
    if model_args.model_name_or_path:
        model = GFLForObjectDetection.from_pretrained(model_args.model_name_or_path)
        if model.config.id2label != id2label:
            raise ValueError(
                f"{model_args.model_name_or_path} was trained on classes {model.config.id2label}, "
                f"but the dataset has {id2label}."
            )
        return model
    config = GFLConfig(
        backbone=model_args.backbone,
        backbone_pretrained=model_args.backbone_pretrained,
        fpn_channels=model_args.fpn_channels,
        head_channels=model_args.head_channels,
        head_stacked_convs=model_args.head_stacked_convs,
        head_norm_groups=model_args.head_norm_groups,
        num_fpn_levels=model_args.num_fpn_levels,
        id2label=id2label,
        label2id={name: index for index, name in id2label.items()},
    )
    return GFLForObjectDetection(config)


def main(argv: list[str] | None = None) -> dict[str, float]:
    parser = HfArgumentParser((ModelArguments, DataArguments, TrainingArguments))
    model_args, data_args, training_args = parser.parse_args_into_dataclasses(args=argv)
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)
    # Detection batches are images plus a list of label dicts, which the Trainer must pass through untouched.
    training_args.remove_unused_columns = False
    training_args.eval_do_concat_batches = False

    with training_args.main_process_first(desc="preparing the dataset"):
        if data_args.generate_synthetic:
            # The main process writes the set; the others find it complete and reuse it.
            generate_coco_dataset(
                data_args.data_dir,
                difficulty=data_args.generate_synthetic,
                num_train=data_args.synthetic_num_train,
                num_val=data_args.synthetic_num_val,
                seed=data_args.synthetic_seed,
            )
        train_dataset = load_coco_detection(data_args.data_dir, data_args.train_split)
        eval_dataset = load_coco_detection(data_args.data_dir, data_args.eval_split)
    if data_args.max_eval_samples is not None:
        eval_dataset = eval_dataset.select(range(min(data_args.max_eval_samples, len(eval_dataset))))
    id2label, _ = label_maps(train_dataset)

    model = build_model(model_args, id2label)
    image_processor = GFLImageProcessor.for_model_config(
        model.config, size={"shortest_edge": model_args.shortest_edge, "longest_edge": model_args.longest_edge}
    )
    ground_truth = coco_ground_truth_from_dataset(eval_dataset)
    trainer = Trainer(
        model=model,
        args=training_args,
        train_dataset=train_dataset.with_transform(DetectionTransform(image_processor, train=True)),
        eval_dataset=eval_dataset.with_transform(DetectionTransform(image_processor, train=False)),
        data_collator=DetectionCollator(image_processor),
        processing_class=image_processor,
        compute_metrics=make_coco_compute_metrics(ground_truth),
        preprocess_logits_for_metrics=DetectionsForMetrics(image_processor),
    )
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
    if training_args.process_index == 0:
        summary = {
            "backbone": model.config.backbone,
            "parameters": sum(p.numel() for p in model.parameters()),
            **{k: v for k, v in metrics.items() if isinstance(v, (int, float))},
        }
        Path(training_args.output_dir).mkdir(parents=True, exist_ok=True)
        (Path(training_args.output_dir) / "summary.json").write_text(json.dumps(summary, indent=2))
    trainer.accelerator.end_training()
    return metrics


if __name__ == "__main__":
    main(sys.argv[1:])
