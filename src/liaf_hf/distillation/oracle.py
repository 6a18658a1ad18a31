"""Oracle instance weightings: how much could weighting the instances of the instance feature loss gain at all?

Before a learned weighting (LIAF-KD's selectors) can be expected to beat uniform instance weights, some
weighting must: these weigh the same loss as `aid` (masked instance MSE on Gaussian masks) by what is known
of each instance, including what no method can know, at the strength of uniform weights
(`aid.normalise_over_batch`: the images' mean weights average 1). The sources:

* `"noise"`: 0 on the annotations the generator corrupted, 1 on the others, read from the generated set's
  `instance_facts_train.json` (`liaf_hf.data.synthetic.read_instance_facts`), which no method sees.
* `"teacher_quality"`: the teacher's correctness on the instance, its best score x IoU there
  (`GFLObjectDetectionOutput.instance_quality`): imitate the teacher where it is right.
* `"student_loss"`: the student's own current loss on the instance (`instance_losses`): imitate where the
  student is wrong.
* `"teacher_right_student_wrong"`: the product of the two, teacher quality x the student's loss.

`power` sharpens (> 1) or flattens (< 1) every source but `"noise"`.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from ..models.gfl.configuration_gfl import GFLConfig
from ..models.gfl.loss_gfl import host_tensor
from ..models.gfl.modeling_gfl import GFLObjectDetectionOutput
from ._instances import InstanceLayout, per_instance_output
from .aid import InstanceImitation, normalise_over_batch
from .base import DistillationBatch, DistillationResult, register_distiller

__all__ = ["OracleDistiller"]

SOURCES = ("noise", "teacher_quality", "student_loss", "teacher_right_student_wrong")


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


@register_distiller("oracle")
class OracleDistiller(InstanceImitation):
    """The instance feature loss weighted by an oracle's instance weights, normalised to uniform strength.

    Args:
        student_config, teacher_config, weight, feature_scale: as for `InstanceImitation` (`loss_oracle`).
        source: one of `"noise"`, `"teacher_quality"`, `"student_loss"`, `"teacher_right_student_wrong"`
            (module docstring).
        facts_file: for `"noise"`: the generated training split's `instance_facts_train.json`.
        power: each weight is the source's value to this power before the normalisation.
    """

    loss_name = "oracle"

    def __init__(
        self,
        *,
        student_config: GFLConfig,
        teacher_config: GFLConfig,
        weight: float = 10.0,
        source: str = "teacher_quality",
        facts_file: str | None = None,
        power: float = 1.0,
        feature_scale: str = "teacher",
    ) -> None:
        super().__init__(
            student_config=student_config,
            teacher_config=teacher_config,
            weight=weight,
            feature_scale=feature_scale,
            method_name="The oracle weighting",
        )
        if source not in SOURCES:
            raise ValueError(f"source must be one of {SOURCES}, got {source!r}.")
        if power <= 0:
            raise ValueError(f"power must be positive, got {power}.")
        if source == "noise" and facts_file is None:
            raise ValueError("oracle source 'noise' needs facts_file: the generated set's instance_facts_train.json.")
        self.source = source
        self.facts_file = facts_file
        self.power = power
        self._clean = _clean_flags(facts_file) if source == "noise" else None
        self.needs_image_ids = source == "noise"
        self.needs_teacher_instance_losses = source in ("teacher_quality", "teacher_right_student_wrong")
        self.needs_student_instance_losses = source in ("student_loss", "teacher_right_student_wrong")

    def instance_weights(
        self,
        *,
        student: GFLObjectDetectionOutput,
        teacher: GFLObjectDetectionOutput,
        batch: DistillationBatch,
        layout: InstanceLayout,
        result: DistillationResult,
    ) -> torch.Tensor:
        if self.source == "noise":
            raw = self._noise_weights(batch, layout)
        else:
            raw = torch.ones(layout.num_instances, device=layout.counts.device)
            if self.needs_teacher_instance_losses:
                raw = raw * per_instance_output(
                    teacher, "instance_quality", model="teacher", needed_by="The oracle weighting", layout=layout
                )
            if self.needs_student_instance_losses:
                raw = raw * per_instance_output(
                    student, "instance_losses", model="student", needed_by="The oracle weighting", layout=layout
                )
            raw = raw.clamp(min=0).pow(self.power)
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
                    f"{'none' if known is None else len(known)} in {self.facts_file}: the facts belong to another set."
                )
            flags.extend(known)
        return host_tensor([float(flag) for flag in flags], dtype=torch.float32, device=layout.counts.device)
