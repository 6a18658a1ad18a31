"""LD: localization distillation of the box-edge distributions, on the student's positive locations.

Zheng et al., "Localization Distillation for Dense Object Detection", CVPR 2022. A GFL head predicts each of
a box's four edges as a distribution over the distances 0..R (R = `reg_max`, in strides). At each anchor p
that the student's ATSS assignment makes positive, with student logits z_S and teacher logits z_T of edge e
and temperature tau:

    k_pe = tau^2 KL( softmax(z_T / tau) || softmax(z_S / tau) ) / (R + 1)
    loss_ld = weight * m * mean_images [ sum_{p positive in the image} q_p * mean_e k_pe ]

with q_p the student's own detached quality score at p (the highest class sigmoid), the weight GFL's box
losses use. This is mmdetection's `LDHead` loss (`KnowledgeDistillationKLDivLoss`, which averages the KL
terms over the R + 1 bins, and its sum over positives weighted by q with an average factor of 4 edges).
mmdetection sums over the positives of the images one GPU holds, without a normaliser, 2 images in its LD
configs; the loss here averages the per-image sums over the batch and multiplies by m =
`summed_images` = 2, so its strength relative to the GFL losses matches the published one whatever the
batch size.

The two detectors must share `reg_max` and the strides of their levels, so that the same anchor and bin
mean the same box and distance.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..models.gfl.configuration_gfl import GFLConfig
from ..models.gfl.modeling_gfl import GFLObjectDetectionOutput
from ._features import flat_class_logits
from .base import (
    DistillationBatch,
    DistillationResult,
    Distiller,
    MethodConfig,
    check_pair,
    non_negative,
    positive,
    register_distiller,
)

__all__ = ["LDConfig", "LDDistiller", "localization_distillation_kl"]


def localization_distillation_kl(
    student_logits: torch.Tensor, teacher_logits: torch.Tensor, *, temperature: float
) -> torch.Tensor:
    """(M, R + 1) student and teacher logits of M edge distributions -> (M,) tau^2 KL(teacher || student) at
    temperature tau, averaged over the R + 1 bins (mmdetection's normalisation, which LD's weight assumes)."""
    teacher_log_probs = F.log_softmax(teacher_logits.detach() / temperature, dim=1)
    student_log_probs = F.log_softmax(student_logits / temperature, dim=1)
    kl = (teacher_log_probs.exp() * (teacher_log_probs - student_log_probs)).sum(dim=1)
    return kl * temperature**2 / student_logits.shape[1]


def _flatten_levels(maps: tuple[torch.Tensor, ...]) -> torch.Tensor:
    """Per-level (B, K, H_l, W_l) maps -> (B, A, K), anchors in the order of `GFLObjectDetectionOutput.logits`."""
    return torch.cat([level_map.flatten(2).transpose(1, 2) for level_map in maps], dim=1)


@dataclass(frozen=True)
class LDConfig(MethodConfig):
    """The options of `ld` (`LDDistiller`), the keys of `--method_options` for `--method ld`."""

    weight: float = 0.25
    """Weight of `loss_ld`; 0.25 as in mmdetection's LD configs (`configs/ld`, with the KL averaged over the bins;
    one revision of those configs divides the weight by reg_max + 1 once more)."""
    temperature: float = 10.0
    """tau; 10 as in mmdetection's LD configs."""
    summed_images: float = 2.0
    """m, the number of images whose positives the published loss sums over (2 per GPU in mmdetection's LD
    configs); the per-image sums are averaged over the batch and multiplied by it."""

    def __post_init__(self) -> None:
        super().__post_init__()
        non_negative(self, "weight")
        positive(self, "temperature", "summed_images")


@register_distiller("ld")
class LDDistiller(Distiller):
    """KL divergence between the teacher's and the student's box-edge distributions at the student's
    positive anchors (`DistillationBatch.positive_mask`, which the trainer fills for this method).

    Args:
        student_config, teacher_config: the two detectors' configs. They must have the same `reg_max`, the
            same number of FPN levels (and, checked on the first batch, the same strides) and the same label
            set.
        config: the options (`LDConfig`); the defaults when None.
    """

    config_class = LDConfig
    description = "KL divergence between the teacher's and the student's box-edge distributions at positive anchors"
    reference = "LD, Zheng et al., CVPR 2022"
    needs_positive_mask = True

    def __init__(self, *, student_config: GFLConfig, teacher_config: GFLConfig, config: LDConfig | None = None) -> None:
        super().__init__(config)
        if student_config.reg_max != teacher_config.reg_max:
            raise ValueError(
                f"LD needs the same box-edge distributions in the student and the teacher: student "
                f"reg_max={student_config.reg_max}, teacher reg_max={teacher_config.reg_max}."
            )
        check_pair("LD", student_config, teacher_config)
        self.reg_max = student_config.reg_max

    def _check_batch(
        self, student: GFLObjectDetectionOutput, teacher: GFLObjectDetectionOutput, batch: DistillationBatch
    ) -> None:
        if batch.teacher_strides is not None and list(batch.teacher_strides) != list(batch.strides):
            raise ValueError(
                f"LD needs the same FPN strides in the student and the teacher: student "
                f"strides={list(batch.strides)}, teacher strides={list(batch.teacher_strides)}."
            )
        if batch.positive_mask is None:
            raise ValueError(
                "LD needs the student's positive anchors in DistillationBatch.positive_mask (the trainer fills it "
                "for methods with needs_positive_mask; elsewhere use GFLForObjectDetection.positive_anchor_mask)."
            )
        if len(student.box_distributions) != len(teacher.box_distributions):
            raise ValueError(
                f"The student has {len(student.box_distributions)} FPN levels and the teacher "
                f"{len(teacher.box_distributions)}."
            )
        for level, (student_map, teacher_map) in enumerate(zip(student.box_distributions, teacher.box_distributions)):
            if student_map.shape != teacher_map.shape:
                raise ValueError(
                    f"FPN level {level}: the student's box distributions have shape {tuple(student_map.shape)} but "
                    f"the teacher's have {tuple(teacher_map.shape)}; LD needs equal strides and reg_max."
                )

    def forward(
        self, *, student: GFLObjectDetectionOutput, teacher: GFLObjectDetectionOutput, batch: DistillationBatch
    ) -> DistillationResult:
        self._check_batch(student, teacher, batch)
        result = DistillationResult()
        with torch.autocast(device_type=student.box_distributions[0].device.type, enabled=False):
            student_distributions = _flatten_levels(student.box_distributions).float()  # (B, A, 4 (R + 1))
            teacher_distributions = _flatten_levels(teacher.box_distributions).float()
            positive = batch.positive_mask.to(student_distributions.device)
            if positive.shape != student_distributions.shape[:2]:
                raise ValueError(
                    f"positive_mask has shape {tuple(positive.shape)}; the outputs have "
                    f"{tuple(student_distributions.shape[:2])} (images, anchors)."
                )
            # Every anchor's KL, the negatives' weighted 0, rather than the positives picked out: picking them
            # (boolean indexing, a count) made the host wait for the device four times a step. The price is a
            # few (B, A, 4 (R + 1)) float tensors, each the size of the student's distributions.
            image_count, anchor_count = positive.shape
            bins = self.reg_max + 1
            edge_kl = localization_distillation_kl(
                student_distributions.reshape(-1, bins),
                teacher_distributions.reshape(-1, bins),
                temperature=self.config.temperature,
            ).reshape(image_count, anchor_count, 4)
            quality = flat_class_logits(student).detach().float().sigmoid().amax(dim=2)  # (B, A)
            positive_weights = positive.to(quality.dtype)
            anchor_kl = edge_kl.mean(dim=2)  # (B, A)
            weighted_sum = (quality * positive_weights * anchor_kl).sum()
            result.losses["loss_ld"] = self.config.weight * self.config.summed_images * weighted_sum / image_count
            num_positives = positive_weights.sum()
            result.stats["ld/num_positives"] = num_positives.detach()
            # Mean over the positives; 0 in a batch without any.
            result.stats["ld/edge_kl"] = (positive_weights * anchor_kl.detach()).sum() / num_positives.clamp(min=1.0)
        return result
