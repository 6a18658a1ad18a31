"""Command-line arguments of distillation runs, for `HfArgumentParser`."""

from __future__ import annotations

import json
from dataclasses import dataclass, field

from .base import check_method_options, method_parts


@dataclass
class DistillationArguments:
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

    @property
    def options(self) -> dict:
        return json.loads(self.method_options)
