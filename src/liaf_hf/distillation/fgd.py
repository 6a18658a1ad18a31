"""FGD: Focal and Global Distillation, on every FPN level.

Yang et al., "Focal and Global Knowledge Distillation for Detectors", CVPR 2022. For FPN level l with
teacher map T (B, C, H, W) and aligned student map S, the attention of a map X at temperature tau is

    A_S(X)(p) = H W softmax_p( mean_c |X(c, p)| / tau )          (spatial, averages 1 over cells)
    A_C(X)(c) = C softmax_c( mean_p |X(c, p)| / tau )            (channel, averages 1 over channels)

and with the teacher's attentions A_S = A_S(T), A_C = A_C(T), the foreground mask M_fg and background
mask M_bg of each image, the four terms, each summed over the level's cells and channels, averaged over
the batch's images and summed over levels, are

    loss_fgd_fg        = alpha  sum_{c, p} M_fg(p) A_S(p) A_C(c) (S(c, p) - T(c, p))^2
    loss_fgd_bg        = beta   sum_{c, p} M_bg(p) A_S(p) A_C(c) (S(c, p) - T(c, p))^2
    loss_fgd_attention = gamma  ( sum_c |A_C(S)(c) - A_C(T)(c)| + sum_p |A_S(S)(p) - A_S(T)(p)| )
    loss_fgd_global    = lambda sum_{c, p} (G_S(S)(c, p) - G_T(T)(c, p))^2

With `feature_scale="teacher"` (the default) both maps of a level are first divided by the teacher's RMS
activation on it, sqrt(E_l) (over the batch, every process included, no gradient), so the terms, the
attention's temperature and the published weights see features of unit mean square whatever the teacher;
`"none"` uses the raw maps, as FGD's code does. Why: FGD's weights were set for one trained R101 teacher's
256-channel FPN. Another trained teacher's maps can be large enough that the raw foreground term is thousands
of times the GFL loss, and the student then learns little else than to imitate; the temperature of 0.5 on
such maps also turns the attention into a one-hot. The other feature methods scale the same way.

where G_S and G_T are two GcBlock-style global context modules (`GlobalContextBlock`, one pair per level,
trained with the student; the teacher's map itself gets no gradient). M_fg(p) = 1 / (cells of the box) for
the cells of each ground-truth box (the maximum where boxes overlap), 0 elsewhere; M_bg = 1 / (background
cells) on the valid cells outside every box and ignore region. Cells are those of `masks.box_cell_masks`
(centre inside the box); FGD's code rounds the box outwards to whole cells instead, which adds a ring of
partly covered cells to each box.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ..models.gfl.configuration_gfl import GFLConfig
from ..models.gfl.loss_gfl import group_of_each
from ..models.gfl.modeling_gfl import GFLObjectDetectionOutput
from ._features import FeatureDistiller, FeatureScale, teacher_mean_square
from ._masks import LevelGrid, multi_level_background_masks, multi_level_box_cells
from .base import (
    DistillationBatch,
    DistillationResult,
    MethodConfig,
    check_batch,
    non_negative,
    positive,
    register_distiller,
)

__all__ = [
    "FGDConfig",
    "FGDDistiller",
    "GlobalContextBlock",
    "fgd_attention",
    "fgd_batch_masks",
    "fgd_masks",
    "fgd_multi_level_masks",
]


def fgd_attention(features: torch.Tensor, *, temperature: float) -> tuple[torch.Tensor, torch.Tensor]:
    """FGD's spatial and channel attention of a map: (B, C, H, W) -> (B, H, W) averaging 1 over the cells and
    (B, C) averaging 1 over the channels, both from the mean absolute activation."""
    batch_size, channels, height, width = features.shape
    magnitude = features.abs()
    spatial = magnitude.mean(dim=1).flatten(1).div(temperature).softmax(dim=1) * (height * width)
    channel = magnitude.mean(dim=(2, 3)).div(temperature).softmax(dim=1) * channels
    return spatial.reshape(batch_size, height, width), channel


def fgd_masks(
    boxes: torch.Tensor,
    ignore_boxes: torch.Tensor,
    *,
    feature_size: tuple[int, int],
    stride: int,
    valid_size: tuple[float, float] | torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """FGD's scale masks of one image on one level.

    Args:
        boxes: (n, 4) ground-truth boxes, xyxy in pixels of the padded input; n may be 0.
        ignore_boxes: (k, 4) regions that are neither foreground nor background, same units.
        feature_size: (H, W) of the level.
        stride: the level's stride in input pixels.
        valid_size: (height, width) of the unpadded image; padding cells are not background.

    Returns:
        foreground: (H, W) float32, 1 / (number of the box's cells) on each box's cells (the largest value
            where boxes overlap: small objects keep their weight), 0 elsewhere.
        background: (H, W) float32, uniform over the valid cells outside every box and ignore region, summing
            to 1 (all zeros when there is none).
    """
    valid_sizes = None
    if valid_size is not None:
        valid_sizes = torch.as_tensor(valid_size, dtype=torch.float32, device=boxes.device).reshape(1, 2)
    foreground, background = fgd_batch_masks(
        [boxes], [ignore_boxes], feature_size=feature_size, stride=stride, valid_sizes=valid_sizes
    )
    return foreground[0], background[0]


def fgd_batch_masks(
    boxes: list[torch.Tensor],
    ignore_boxes: list[torch.Tensor],
    *,
    feature_size: tuple[int, int],
    stride: int,
    valid_sizes: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """`fgd_masks` of every image of a batch at once on one level of (H, W) `feature_size`: foreground and
    background, (B, H, W) float32 each (arguments as `fgd_multi_level_masks`'s, for one level)."""
    foreground, background = fgd_multi_level_masks(
        boxes, ignore_boxes, feature_sizes=[feature_size], strides=[stride], valid_sizes=valid_sizes
    )
    return foreground.view(-1, *feature_size), background.view(-1, *feature_size)


def fgd_multi_level_masks(
    boxes: list[torch.Tensor],
    ignore_boxes: list[torch.Tensor],
    *,
    feature_sizes: list[tuple[int, int]],
    strides: list[int],
    valid_sizes: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """`fgd_masks` of every image on every level at once, the levels' cells side by side: all images' boxes in
    one pass, each cell then taking the largest value among its own image's boxes (a pass per image or per
    level would launch a kernel on a GPU for each of its many small operations).

    Args:
        boxes: per image, (n_i, 4) ground-truth boxes, xyxy in pixels of the padded input.
        ignore_boxes: per image, (k_i, 4) ignore regions, same units.
        feature_sizes: (H_l, W_l) of each level.
        strides: each level's stride in input pixels.
        valid_sizes: (B, 2) (height, width) of each unpadded image; None: the whole grid is valid.

    Returns:
        foreground and background, (B, sum_l H_l W_l) float32 each: per image, each level's block (its cells
        row by row) as `fgd_masks` describes it.
    """
    device = boxes[0].device
    boxes = [image_boxes.reshape(-1, 4).to(device=device, dtype=torch.float32) for image_boxes in boxes]
    objects = torch.cat(boxes)
    cells = multi_level_box_cells(objects, feature_sizes=feature_sizes, strides=strides).float()  # (n, P)
    # Each box's cells on a level share 1 / (its cells on that level).
    grid = LevelGrid.of_sizes(feature_sizes, device)
    per_box = cells / (cells @ grid.indicator).clamp(min=1.0)[:, grid.level_of_cell]
    owner = group_of_each([len(image_boxes) for image_boxes in boxes], device=device)
    empty = torch.zeros(len(boxes), cells.shape[1], device=device)
    foreground = empty.scatter_reduce(0, owner[:, None].expand_as(per_box), per_box, reduce="amax")
    background = multi_level_background_masks(
        boxes, feature_sizes=feature_sizes, strides=strides, valid_sizes=valid_sizes, ignore_boxes=ignore_boxes
    )
    return foreground, background


class GlobalContextBlock(nn.Module):
    """GcBlock-style global context module (Cao et al., "GCNet", 2019) as FGD uses it: attention pooling of
    the map into one context vector, a bottleneck transform of it, added to every cell.

        context = sum_p softmax_p(w . X(:, p) + b) X(:, p)                 (C,)
        output = X + W_2 ReLU(LayerNorm(W_1 context))                      broadcast over the cells

    The bottleneck is C / 2 wide. The last layer starts at zero, so the block starts as the identity.
    """

    def __init__(self, channels: int) -> None:
        super().__init__()
        hidden = max(channels // 2, 1)
        self.attention_logits = nn.Conv2d(channels, 1, kernel_size=1)
        self.transform = nn.Sequential(
            nn.Linear(channels, hidden),
            nn.LayerNorm(hidden),
            nn.ReLU(),
            nn.Linear(hidden, channels),
        )
        nn.init.kaiming_normal_(self.attention_logits.weight, mode="fan_in", nonlinearity="relu")
        nn.init.zeros_(self.attention_logits.bias)
        nn.init.zeros_(self.transform[-1].weight)
        nn.init.zeros_(self.transform[-1].bias)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) -> (B, C, H, W)."""
        attention = self.attention_logits(features).flatten(2).softmax(dim=2)  # (B, 1, P)
        context = (features.flatten(2) * attention).sum(dim=2)  # (B, C)
        return features + self.transform(context)[:, :, None, None]


@dataclass(frozen=True)
class FGDConfig(MethodConfig):
    """The options of `fgd` (`FGDDistiller`), the keys of `--method_options` for `--method fgd`. The default
    weights are FGD's for GFL (yzd-v/FGD, `fgd_gfl_r101_distill_gfl_r50_fpn_1x_coco.py`), calibrated there for
    256-channel FPNs."""

    temperature: float = 0.5
    """tau of the spatial and channel attention."""
    foreground_weight: float = 1e-3
    """alpha, weight of `loss_fgd_fg`."""
    background_weight: float = 5e-4
    """beta, weight of `loss_fgd_bg`."""
    attention_weight: float = 5e-4
    """gamma, weight of `loss_fgd_attention`."""
    global_weight: float = 5e-6
    """lambda, weight of `loss_fgd_global`."""
    feature_scale: FeatureScale = "teacher"
    """`"teacher"`: divide both maps of a level by the teacher's RMS activation on it before every term;
    `"none"`: FGD's raw maps (set the weights from the teacher's activations then)."""

    def __post_init__(self) -> None:
        super().__post_init__()
        positive(self, "temperature")
        non_negative(self, "foreground_weight", "background_weight", "attention_weight", "global_weight")


@register_distiller("fgd")
class FGDDistiller(FeatureDistiller):
    """Focal (foreground/background, attention-weighted) and global (context relation) feature distillation.

    The default weights are FGD's for GFL (yzd-v/FGD, `fgd_gfl_r101_distill_gfl_r50_fpn_1x_coco.py`: alpha
    1e-3, beta 5e-4, gamma 5e-4, lambda 5e-6, temperature 0.5), calibrated there for 256-channel FPNs: the
    terms are sums over channels, so they scale with the FPN width. With `feature_scale="teacher"` they apply to
    maps in units of the teacher's RMS activation (see the module docstring).

    Args:
        student_config, teacher_config: the two detectors' configs; same number of FPN levels and same label
            set. A 1x1 align conv per level maps the student's FPN width to the teacher's when they differ.
        config: the options (`FGDConfig`); the defaults when None.
    """

    config_class = FGDConfig
    description = (
        "foreground/background feature distillation weighted by the teacher's attention, with a global context "
        "relation term"
    )
    reference = "FGD, Yang et al., CVPR 2022"
    method_name = "FGD"
    compiled_part = "_masked_losses"

    def __init__(
        self, *, student_config: GFLConfig, teacher_config: GFLConfig, config: FGDConfig | None = None
    ) -> None:
        super().__init__(student_config=student_config, teacher_config=teacher_config, config=config)
        num_levels, channels = teacher_config.num_fpn_levels, teacher_config.fpn_channels
        self.student_context = nn.ModuleList(GlobalContextBlock(channels) for _ in range(num_levels))
        self.teacher_context = nn.ModuleList(GlobalContextBlock(channels) for _ in range(num_levels))

    def forward(
        self, *, student: GFLObjectDetectionOutput, teacher: GFLObjectDetectionOutput, batch: DistillationBatch
    ) -> DistillationResult:
        check_batch(student, batch, num_levels=self.aligner.num_levels)
        with torch.autocast(device_type=student.fpn_features[0].device.type, enabled=False):
            grid = LevelGrid.of(list(teacher.fpn_features))
            # Every level's masks in one pass (B, P), each level then taking its block of cells.
            all_foreground, all_background = fgd_multi_level_masks(
                [boxes.to(grid.indicator.device) for boxes in batch.boxes],
                batch.ignore_boxes,
                feature_sizes=grid.sizes,
                strides=batch.strides,
                valid_sizes=batch.valid_sizes,
            )
            return self._masked_losses(
                student=student,
                teacher=teacher,
                foreground_masks=all_foreground,
                background_masks=all_background,
                grid=grid,
            )

    def _masked_losses(
        self,
        *,
        student: GFLObjectDetectionOutput,
        teacher: GFLObjectDetectionOutput,
        foreground_masks: torch.Tensor,
        background_masks: torch.Tensor,
        grid: LevelGrid,
    ) -> DistillationResult:
        """The four losses from every level's (B, P) foreground and background masks (the levels' cells side
        by side, in `grid`'s order): the step's tensor work after the masks, what `compile_losses` compiles."""
        foreground_loss = background_loss = attention_loss = global_loss = 0.0
        levels = self.aligner.levels(student, teacher)
        for level, ((teacher_map, student_map), (start, end)) in enumerate(zip(levels, grid.spans)):
            batch_size, _, height, width = teacher_map.shape
            if self.config.feature_scale == "teacher":
                teacher_rms = teacher_mean_square(teacher_map).clamp(min=1e-12).sqrt()
                teacher_map, student_map = teacher_map / teacher_rms, student_map / teacher_rms
            foreground = foreground_masks[:, start:end].view(batch_size, height, width)
            background = background_masks[:, start:end].view(batch_size, height, width)
            teacher_spatial, teacher_channel = fgd_attention(teacher_map, temperature=self.config.temperature)
            student_spatial, student_channel = fgd_attention(student_map, temperature=self.config.temperature)
            # The teacher's attention weighs the error: cells and channels the teacher finds salient count more.
            weighted_error = (
                (student_map - teacher_map).square() * teacher_channel[:, :, None, None] * teacher_spatial[:, None]
            ).sum(dim=1)  # (B, H, W)
            foreground_loss = foreground_loss + (weighted_error * foreground).sum() / batch_size
            background_loss = background_loss + (weighted_error * background).sum() / batch_size
            channel_gap = (student_channel - teacher_channel).abs().sum()
            spatial_gap = (student_spatial - teacher_spatial).abs().sum()
            attention_loss = attention_loss + (channel_gap + spatial_gap) / batch_size
            student_global = self.student_context[level](student_map)
            teacher_global = self.teacher_context[level](teacher_map)
            global_loss = global_loss + (student_global - teacher_global).square().sum() / batch_size
        return DistillationResult(
            losses={
                "loss_fgd_fg": self.config.foreground_weight * foreground_loss,
                "loss_fgd_bg": self.config.background_weight * background_loss,
                "loss_fgd_attention": self.config.attention_weight * attention_loss,
                "loss_fgd_global": self.config.global_weight * global_loss,
            }
        )
