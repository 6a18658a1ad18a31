"""Oracle instance weightings: how much could weighting the instances of the instance feature loss gain at all?

Before a learned weighting (LIAF-KD's selectors) can be expected to beat uniform instance weights, some
weighting must: these weigh the same loss as `aid` (masked instance MSE on Gaussian masks) by what is known
of each instance, including what no method can know, at the strength of uniform weights
(`aid.normalise_over_batch`: the images' mean weights average 1). The sources:

* `"noise"`: 0 on the annotations the generator corrupted, 1 on the others, read from the generated set's
  `instance_facts_train.json` (`liaf_hf.data.synthetic.read_instance_facts`), which no method sees.
* `"teacher_quality"`: the teacher's correctness on the instance, its best score x IoU there
  (`GFLObjectDetectionOutput.instance_quality`): imitate the teacher where it is right.
* `"teacher_error"`: one less the teacher's correctness: imitate the teacher where it is wrong, the opposite
  direction (it is where the small and faint objects are, and AID's per-instance factor leans away from them).
* `"student_loss"`: the student's own current loss on the instance (`instance_losses`): imitate where the
  student is wrong.
* `"teacher_right_student_wrong"`: the product of the two, teacher quality x the student's loss.
* `"classes"`: 0 on the instances of the classes named in `classes`, 1 on the others: e.g. the classes the
  teacher was never taught (a teacher trained on a set that leaves them unannotated).

`power` sharpens (> 1) or flattens (< 1) every source but `"noise"` and `"classes"`.
"""

from __future__ import annotations

import json
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch

from ..models.gfl.configuration_gfl import GFLConfig
from ..models.gfl.loss_gfl import host_tensor
from ..models.gfl.modeling_gfl import GFLObjectDetectionOutput
from ._instances import InstanceLayout, per_instance_output
from .aid import InstanceImitation, InstanceImitationConfig, normalise_over_batch
from .base import DistillationBatch, DistillationResult, positive, register_distiller

__all__ = ["OracleConfig", "OracleDistiller"]

Source = Literal["noise", "teacher_quality", "teacher_error", "student_loss", "teacher_right_student_wrong", "classes"]
SOURCES = typing.get_args(Source)
_TEACHER_SOURCES = ("teacher_quality", "teacher_error", "teacher_right_student_wrong")
_STUDENT_SOURCES = ("student_loss", "teacher_right_student_wrong")


def _clean_flags(facts_file: str) -> dict[int, list[bool]]:
    """Per image id, whether each of its annotations (in file order) is clean, from an instance facts file."""
    path = Path(facts_file)
    if not path.is_file():
        raise FileNotFoundError(
            f"oracle source 'noise': facts_file {path} does not exist (liaf_hf.data.synthetic writes "
            "instance_facts_train.json beside a generated set's annotations)."
        )
    flags: dict[int, list[bool]] = {}
    for record in json.loads(path.read_text(encoding="utf-8"))["annotations"]:
        flags.setdefault(int(record["image_id"]), []).append(record["noise"] == "none")
    return flags


def _class_labels(names: tuple[str, ...], config: GFLConfig) -> torch.Tensor:
    """The class indices of `names` in the student's `id2label`, refusing a name it does not have."""
    label_of = {name: int(label) for label, name in config.id2label.items()}
    unknown = [name for name in names if name not in label_of]
    if unknown:
        raise ValueError(
            f"oracle source 'classes': {unknown} not among the student's classes {sorted(label_of)} (its id2label)"
        )
    return torch.tensor([label_of[name] for name in names], dtype=torch.long)


@dataclass(frozen=True)
class OracleConfig(InstanceImitationConfig):
    """The options of `oracle` (`OracleDistiller`), the keys of `--method_options` for `--method oracle`."""

    source: Source = "teacher_quality"
    """Where each instance's weight comes from: `"noise"`, `"teacher_quality"`, `"teacher_error"`,
    `"student_loss"`, `"teacher_right_student_wrong"` or `"classes"` (module docstring)."""
    facts_file: str | None = None
    """For `"noise"`: the generated training split's `instance_facts_train.json`."""
    classes: tuple[str, ...] = ()
    """For `"classes"`: the names (the student's `id2label`) of the classes whose instances get weight 0."""
    power: float = 1.0
    """Each weight is the source's value to this power before the normalisation."""

    def __post_init__(self) -> None:
        super().__post_init__()
        positive(self, "power")
        if self.source == "noise" and self.facts_file is None:
            raise ValueError("oracle source 'noise' needs facts_file: the generated set's instance_facts_train.json.")
        if (self.source == "classes") != bool(self.classes):
            raise ValueError(
                "oracle option 'classes' names the classes weighted 0 by source 'classes', and only by it: got "
                f"source {self.source!r} with classes {list(self.classes)}"
            )


@register_distiller("oracle")
class OracleDistiller(InstanceImitation):
    """The instance feature loss weighted by an oracle's instance weights, normalised to uniform strength.

    Args:
        student_config, teacher_config: as for `InstanceImitation` (`loss_oracle`).
        config: the options (`OracleConfig`); the defaults when None.
    """

    config_class = OracleConfig
    description = "the instance feature loss weighted by what is known of each instance, including what no method knows"
    loss_name = "oracle"
    method_name = "The oracle weighting"

    def __init__(
        self, *, student_config: GFLConfig, teacher_config: GFLConfig, config: OracleConfig | None = None
    ) -> None:
        super().__init__(student_config=student_config, teacher_config=teacher_config, config=config)
        source, facts_file = self.config.source, self.config.facts_file
        self._clean = _clean_flags(facts_file) if source == "noise" else None
        self.needs_image_ids = source == "noise"
        self._zeroed_labels = _class_labels(self.config.classes, student_config) if source == "classes" else None
        self.needs_teacher_instance_losses = source in _TEACHER_SOURCES
        self.needs_student_instance_losses = source in _STUDENT_SOURCES

    def instance_weights(
        self,
        *,
        student: GFLObjectDetectionOutput,
        teacher: GFLObjectDetectionOutput,
        batch: DistillationBatch,
        layout: InstanceLayout,
        result: DistillationResult,
    ) -> torch.Tensor:
        if self.config.source == "noise":
            raw = self._noise_weights(batch, layout)
        elif self.config.source == "classes":
            labels = torch.cat([labels.reshape(-1) for labels in batch.class_labels]).to(layout.counts.device)
            raw = (~torch.isin(labels, self._zeroed_labels.to(labels.device))).float()
        else:
            raw = torch.ones(layout.num_instances, device=layout.counts.device)
            if self.needs_teacher_instance_losses:
                quality = per_instance_output(
                    teacher, "instance_quality", model="teacher", needed_by="The oracle weighting", layout=layout
                )
                raw = raw * (1.0 - quality.clamp(0.0, 1.0) if self.config.source == "teacher_error" else quality)
            if self.needs_student_instance_losses:
                raw = raw * per_instance_output(
                    student, "instance_losses", model="student", needed_by="The oracle weighting", layout=layout
                )
            raw = raw.clamp(min=0).pow(self.config.power)
        weights = layout.real(normalise_over_batch(layout.pad(raw), layout)[None])[0]
        result.stats["oracle/weight_min"] = weights.amin()
        result.stats["oracle/weight_max"] = weights.amax()
        return weights

    def _noise_weights(self, batch: DistillationBatch, layout: InstanceLayout) -> torch.Tensor:
        if batch.image_ids is None:
            raise ValueError("oracle source 'noise' needs DistillationBatch.image_ids (set needs_image_ids).")
        flags: list[bool] = []
        for image_id, boxes in zip(batch.image_ids, batch.boxes):
            if boxes.shape[0] == 0:
                continue
            known = self._clean.get(image_id)
            if known is None or len(known) != boxes.shape[0]:
                raise ValueError(
                    f"oracle source 'noise': image {image_id} has {boxes.shape[0]} instances in the batch but "
                    f"{'none' if known is None else len(known)} in {self.config.facts_file}: the facts belong to "
                    "another set."
                )
            flags.extend(known)
        return host_tensor([float(flag) for flag in flags], dtype=torch.float32, device=layout.counts.device)
