"""The model card a trained or distilled GFL detector is published with.

`write_model_card` fills the packaged Jinja template `liaf_hf/hub/templates/distilled_student.md` from the
saved directory (architecture, classes, input size, parameter count) and from what the run knows (teacher,
method and options, dataset, results), and writes it as the directory's `README.md` with Hub metadata: an
object-detection `EvalResult` per metric, so the Hub shows the student's AP on its page.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import torch
from huggingface_hub import EvalResult, ModelCard, ModelCardData

from .. import __version__
from ..errors import LiafError
from ..models.gfl.configuration_gfl import GFLConfig
from ..models.gfl.modeling_gfl import GFLForObjectDetection
from .saved_folder import PROCESSOR_CONFIG_NAME, check_saved_detector, code_files, read_json_object

CARD_NAME = "README.md"

#: The card's deployment section sits between these lines, so a later export replaces it in place.
EXPORTS_BEGIN, EXPORTS_END = "<!-- liaf-hf exports -->", "<!-- /liaf-hf exports -->"

#: What the deployment section calls each exported file kind (`export_summary.json`'s "files" values).
_EXPORT_KINDS = {
    "onnx": "ONNX, float32",
    "onnx_int8": "ONNX, INT8 (QDQ: convolutions int8)",
    "torch_export": "`torch.export` (.pt2)",
    "onnx_raw": "ONNX, float32, without post-processing",
}

#: Prefixes the Trainer and the example scripts put before metric names (`eval_AP`, `teacher_AP`).
_METRIC_PREFIXES = ("eval_", "teacher_", "test_")


@dataclass(frozen=True)
class ResultRow:
    """One row of the card's results table. AP values are COCO's (0 to 1); None where not measured."""

    model: str
    AP: float | None = None
    AP50: float | None = None
    this_model: bool = False

    @property
    def cells(self) -> tuple[str, str, str]:
        """The row as the card writes it: AP and AP50 in percent, one decimal; "–" where not measured."""
        model = f"**{self.model}**" if self.this_model else self.model
        return model, _percent(self.AP), _percent(self.AP50)


def template_path() -> Path:
    """The packaged card template (`liaf_hf/hub/templates/distilled_student.md`)."""
    return Path(str(resources.files("liaf_hf.hub") / "templates" / "distilled_student.md"))


def normalise_metrics(metrics: Mapping[str, Any] | None) -> dict[str, float]:
    """Numeric metrics keyed without the Trainer's prefixes: `{"eval_AP": 0.4}` -> `{"AP": 0.4}`. Undefined
    COCO values (-1 or NaN) are dropped."""
    normalised = {}
    for key, value in (metrics or {}).items():
        if isinstance(value, bool) or not isinstance(value, (int, float)) or math.isnan(value) or value == -1:
            continue
        for prefix in _METRIC_PREFIXES:
            if key.startswith(prefix):
                key = key[len(prefix) :]
                break
        normalised[key] = float(value)
    return normalised


def read_metrics_file(path: str | os.PathLike) -> dict[str, float]:
    """The metrics in a JSON file the example scripts or the Trainer wrote (`summary.json`,
    `eval_results.json`, `all_results.json`), keyed without prefixes.

    Raises:
        LiafError: the file is missing, is not a JSON object, or has no AP.
    """
    metrics = normalise_metrics(read_json_object(Path(path)))
    if "AP" not in metrics:
        raise LiafError(f"{path} has no AP: expected a key 'AP' or 'eval_AP' as the example scripts write it.")
    return metrics


def backbone_name(config: GFLConfig) -> str:
    """What a card or a run summary calls the backbone: the timm model's name, or for a transformers backbone
    the checkpoint it came from, else its model type (e.g. `resnet`)."""
    if config.backbone_config is None:
        return config.backbone
    return config.pretrained_backbone_checkpoint or config.backbone_config.model_type


def count_parameters(config: GFLConfig) -> int:
    """Number of parameters of a GFL detector with `config`, counted on a model built on the meta device
    (no memory, no weights loaded)."""
    config = GFLConfig.from_dict({**config.to_dict(), "use_pretrained_backbone": False})
    with torch.device("meta"):
        model = GFLForObjectDetection(config)
    return sum(parameter.numel() for parameter in model.parameters())


def training_hyperparameters(training_args: Any) -> dict[str, Any]:
    """The settings of a `transformers.TrainingArguments` that the card lists under "Training"."""
    batch_size = (
        training_args.per_device_train_batch_size * training_args.world_size * training_args.gradient_accumulation_steps
    )
    length = (
        {"steps": training_args.max_steps}
        if training_args.max_steps > 0
        else {"epochs": training_args.num_train_epochs}
    )
    return {
        **length,
        "batch size (total)": batch_size,
        "learning rate": training_args.learning_rate,
        "schedule": str(getattr(training_args.lr_scheduler_type, "value", training_args.lr_scheduler_type)),
        "warmup steps": training_args.warmup_steps,
        "weight decay": training_args.weight_decay,
        "optimizer": str(getattr(training_args.optim, "value", training_args.optim)),
        "seed": training_args.seed,
    }


def write_model_card(
    output_dir: str | os.PathLike,
    *,
    metrics: Mapping[str, Any] | None,
    dataset_name: str,
    method: str = "none",
    method_options: Mapping[str, Any] | None = None,
    inherit: bool = False,
    teacher_name: str | None = None,
    teacher_config: GFLConfig | None = None,
    teacher_metrics: Mapping[str, Any] | None = None,
    baseline_metrics: Mapping[str, Any] | None = None,
    model_id: str | None = None,
    dataset_id: str | None = None,
    dataset_split: str = "val",
    training: Mapping[str, Any] | None = None,
    license: str | None = None,
    limitations: Iterable[str] = (),
    export_summary: Mapping[str, Any] | None = None,
    template: str | os.PathLike | None = None,
) -> ModelCard:
    """Write the model card of the saved detector in `output_dir` as `output_dir/README.md`.

    The architecture (backbone, FPN, head, parameters, classes) and the input size are read from the saved
    `config.json` and `preprocessor_config.json`, so the card describes exactly what is in the directory.

    Args:
        output_dir: a saved GFL detector (`save_pretrained` of the model and its image processor).
        metrics: this model's evaluation metrics (`trainer.evaluate()`'s `eval_AP`, `eval_AP50`, ... or
            unprefixed); None or empty when it was not evaluated.
        dataset_name: the dataset it was trained and evaluated on, as shown in the card.
        method: the distillation method (`"liaf"`, `"liaf+ld"`, ...); `"none"` for a detector trained without
            distillation.
        method_options: the method's options, best with its defaults filled in
            (`liaf_hf.distillation.method_settings`), so the card says what the run used.
        inherit: whether the student's neck and head started from the teacher's.
        teacher_name: the teacher's Hub id or path; required unless `method` is `"none"` (where a given
            teacher is listed in the results for reference).
        teacher_config: the teacher's config, for its backbone and FPN width.
        teacher_metrics: the teacher's metrics on the same evaluation set (`teacher_AP`, ...).
        baseline_metrics: metrics of the same student trained without distillation (see `read_metrics_file`).
        model_id: what the loading snippets name: the Hub repo id it is published under; by default
            `output_dir`.
        dataset_id: the dataset's Hub id, for the card's metadata; by default `dataset_name` names it there.
        dataset_split: the split the metrics were measured on.
        training: training settings to list (see `training_hyperparameters`).
        license: license id for the metadata.
        limitations: extra lines for "Intended use and limitations" (e.g. "trained on synthetic shapes").
        export_summary: what `liaf_hf.export.export_detector` returned (its `export_summary.json`), for a
            "Deployment" section listing the exported formats and their AP; `add_export_section` adds it to a
            card already written.
        template: a Jinja/markdown template to use instead of the packaged one; it receives the same variables.

    Returns:
        The card (also written to `output_dir/README.md`).

    Example:
        >>> card = write_model_card(  # doctest: +SKIP
        ...     "runs/student-liaf", metrics=trainer.evaluate(), dataset_name="shapes-easy", method="liaf",
        ...     teacher_name="runs/teacher", teacher_metrics=trainer.teacher_metrics, model_id="me/gfl-r18-liaf",
        ... )
        >>> card.data.eval_results[0].metric_value  # doctest: +SKIP
        41.3

    Raises:
        LiafError: `output_dir` is not a saved GFL detector, or a distillation method is named without a teacher.
    """
    output_dir = Path(output_dir)
    config = GFLConfig.from_dict(check_saved_detector(output_dir))
    distilled = method != "none"
    if distilled and not teacher_name:
        raise LiafError(f"write_model_card: method {method!r} distils from a teacher, but no teacher_name was given.")
    model_id = model_id or str(output_dir)
    model_name = model_id.rstrip("/").split("/")[-1]
    metrics, teacher_metrics = normalise_metrics(metrics), normalise_metrics(teacher_metrics)
    rows = _result_rows(
        method,
        metrics=metrics,
        teacher_name=teacher_name,
        teacher_metrics=teacher_metrics,
        baseline=normalise_metrics(baseline_metrics),
    )
    dataset = {"name": dataset_name, "id": dataset_id, "split": dataset_split}
    variables = {
        "model_id": model_id,
        "model_name": model_name,
        "distilled": distilled,
        "student": _describe_detector(config, read_json_object(output_dir / PROCESSOR_CONFIG_NAME)),
        "teacher": _describe_teacher(teacher_name, teacher_config, teacher_metrics) if teacher_name else None,
        "method": _describe_method(method, method_options, inherit=inherit),
        "dataset": dataset,
        "results": [row.cells for row in rows],
        "evaluated": "AP" in metrics,
        "training": dict(training or {}),
        "limitations": list(limitations),
        "code_files": code_files(output_dir),
        "liaf_hf_version": __version__,
        "exports_section": export_section(export_summary) if export_summary else "",
    }
    card_data = _card_metadata(model_name, method, metrics, dataset=dataset, license=license)
    card = ModelCard.from_template(card_data, template_path=str(template or template_path()), **variables)
    card.save(output_dir / CARD_NAME)
    return card


def _card_metadata(
    model_name: str, method: str, metrics: dict[str, float], *, dataset: Mapping[str, Any], license: str | None
) -> ModelCardData:
    """The card's Hub metadata: library, task, tags (the method's parts for a distilled model) and an
    `EvalResult` per metric."""
    parts = [] if method == "none" else ["knowledge-distillation", *method.split("+")]
    return ModelCardData(
        model_name=model_name,
        library_name="transformers",
        pipeline_tag="object-detection",
        license=license,
        datasets=[dataset["id"]] if dataset["id"] else None,
        tags=["object-detection", "vision", "gfl", "liaf-hf", *parts],
        eval_results=_eval_results(
            metrics, dataset_name=dataset["name"], dataset_id=dataset["id"], split=dataset["split"]
        ),
    )


def _describe_method(method: str, options: Mapping[str, Any] | None, *, inherit: bool) -> dict[str, Any]:
    """What the card says of the method: its name, each part with its description and reference, the options
    as JSON, and whether the student started from the teacher's neck and head."""
    return {
        "name": method,
        "parts": [(part, *_method_description(part)) for part in method.split("+")],
        "options": json.dumps(dict(options or {}), indent=2, sort_keys=True),
        "inherit": inherit,
    }


def _result_rows(
    method: str,
    *,
    metrics: dict[str, float],
    teacher_name: str | None,
    teacher_metrics: dict[str, float],
    baseline: dict[str, float],
) -> list[ResultRow]:
    """The card's results table: the teacher (when named), the student without distillation (when its metrics
    are given for a distilled model) and this model."""
    distilled = method != "none"
    rows = []
    if teacher_name:
        label = f"teacher `{teacher_name}`" + ("" if distilled else " (for reference; not distilled from)")
        rows.append(ResultRow(label, teacher_metrics.get("AP"), teacher_metrics.get("AP50")))
    if distilled and baseline:
        rows.append(ResultRow("student without distillation", baseline.get("AP"), baseline.get("AP50")))
    this_model = f"this model ({'distilled, ' + method if distilled else 'no distillation'})"
    rows.append(ResultRow(this_model, metrics.get("AP"), metrics.get("AP50"), this_model=True))
    return rows


def _describe_teacher(name: str, config: GFLConfig | None, metrics: dict[str, float]) -> dict[str, Any]:
    """What the card says of the teacher: its name, backbone and FPN width (when its config is known), its AP."""
    return {
        "name": name,
        "backbone": backbone_name(config) if config is not None else None,
        "fpn_channels": config.fpn_channels if config is not None else None,
        "AP": _percent(metrics["AP"]) if "AP" in metrics else None,
    }


def export_section(summary: Mapping[str, Any]) -> str:
    """The card's "Deployment" section (markdown, between `EXPORTS_BEGIN` and `EXPORTS_END`) from an export
    summary: each exported file, its AP and AP change against PyTorch on the evaluation set, and its parity."""
    evaluation = summary.get("evaluation") or {}
    parity = summary.get("parity") or {}
    base = evaluation.get("pytorch", {}).get("AP")
    lines = [
        EXPORTS_BEGIN,
        "## Deployment",
        "",
        f"Exported with liaf-hf {summary.get('liaf_hf_version', __version__)} (`examples/export.py`); the files, "
        "their inputs and outputs are described in the export folder's README.md.",
        "",
        "| format | file | AP | AP change | detections against PyTorch |",
        "|---|---|---|---|---|",
    ]
    if base is not None:
        lines.append(f"| PyTorch (this model) | model.safetensors | {_percent(base)} | | |")
    for file, kind in (summary.get("files") or {}).items():
        ap = evaluation.get(kind, {}).get("AP")
        change = "" if ap is None or base is None else f"{100 * (ap - base):+.1f}"
        name, parity_text = _EXPORT_KINDS.get(kind, kind), _parity(parity.get(kind))
        lines.append(f"| {name} | `{file}` | {_percent(ap)} | {change} | {parity_text} |")
    if evaluation:
        lines += [
            "",
            f"AP: COCO box AP (pycocotools) in percent on {summary.get('evaluation_images')} evaluation images; "
            "AP change: the file's AP minus the PyTorch model's on the same images.",
        ]
    lines.append(EXPORTS_END)
    return "\n".join(lines)


def _parity(report: Mapping[str, Any] | None) -> str:
    if not report:
        return "–"
    if "passed" not in report:  # the variant without post-processing: dense outputs compared
        return f"max score difference {report['max_score_difference']:.1e} on {report['images']} images"
    if report["passed"]:
        return (
            f"the same {report['reference_detections']} detections on {report['images']} images (scores within "
            f"{report['max_score_difference']:.0e})"
        )
    differing, total = len(report["mismatches"]), report["reference_detections"]
    return f"{differing} differences in {total} detections on {report['images']} images"


def add_export_section(model_dir: str | os.PathLike, summary: Mapping[str, Any]) -> Path | None:
    """Put the "Deployment" section of `summary` into the model card already in `model_dir` (replacing an
    earlier one, else before "How to use"); returns the card's path, or None when `model_dir` has no card."""
    card_path = Path(model_dir) / CARD_NAME
    if not card_path.is_file():
        return None
    text = card_path.read_text(encoding="utf-8")
    section = export_section(summary)
    if EXPORTS_BEGIN in text and EXPORTS_END in text:
        before, rest = text.split(EXPORTS_BEGIN, 1)
        text = before + section + rest.split(EXPORTS_END, 1)[1]
    elif "\n## How to use" in text:
        before, after = text.split("\n## How to use", 1)
        text = f"{before}\n{section}\n\n## How to use{after}"
    else:
        text = f"{text.rstrip()}\n\n{section}\n"
    card_path.write_text(text, encoding="utf-8")
    return card_path


def _eval_results(
    metrics: Mapping[str, float], *, dataset_name: str, dataset_id: str | None, split: str
) -> list[EvalResult] | None:
    """The Hub metadata of this model's AP and AP50 (in percent), so the Hub shows them; None if not measured."""
    results = [
        EvalResult(
            task_type="object-detection",
            task_name="Object Detection",
            dataset_type=dataset_id or dataset_name,
            dataset_name=dataset_name,
            dataset_split=split,
            metric_type=metric_type,
            metric_name=metric_name,
            metric_value=round(100 * metrics[key], 2),
        )
        for key, metric_type, metric_name in (("AP", "mAP", "AP@[.50:.95] (%)"), ("AP50", "mAP@0.5", "AP50 (%)"))
        if key in metrics
    ]
    return results or None


def _describe_detector(config: GFLConfig, processor_config: Mapping[str, Any]) -> dict[str, Any]:
    """What the card says about the saved detector: architecture, size, classes, input size, post-processing."""
    size = processor_config.get("size") or {}
    return {
        "backbone": backbone_name(config),
        "backbone_library": "timm" if config.backbone_config is None else "transformers",
        "fpn_channels": config.fpn_channels,
        "num_fpn_levels": config.num_fpn_levels,
        "head_channels": config.head_channels,
        "head_stacked_convs": config.head_stacked_convs,
        "reg_max": config.reg_max,
        "parameters": f"{count_parameters(config) / 1e6:.2f} M",
        "classes": [config.id2label[index] for index in sorted(config.id2label)],
        "shortest_edge": size.get("shortest_edge"),
        "longest_edge": size.get("longest_edge"),
        "score_threshold": processor_config.get("score_threshold", config.score_threshold),
        "nms_iou_threshold": processor_config.get("nms_iou_threshold", config.nms_iou_threshold),
        "max_detections": processor_config.get("max_detections", config.max_detections),
    }


def _method_description(name: str) -> tuple[str, str | None]:
    """What the card says of method `name`: its one-line description and the work it follows, as the method
    declares them (`Distiller.description`, `Distiller.reference`); a generic line for a method this process
    has not registered."""
    from ..distillation import Distiller, method_class

    try:
        method = method_class(name)
    except ValueError:
        return Distiller.description, None
    return method.description, method.reference


def _percent(value: float | None) -> str:
    return "–" if value is None else f"{100 * value:.1f}"


__all__ = [
    "CARD_NAME",
    "EXPORTS_BEGIN",
    "EXPORTS_END",
    "ResultRow",
    "add_export_section",
    "backbone_name",
    "count_parameters",
    "export_section",
    "normalise_metrics",
    "read_metrics_file",
    "template_path",
    "training_hyperparameters",
    "write_model_card",
]
