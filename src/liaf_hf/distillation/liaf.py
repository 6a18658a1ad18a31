"""LIAF-KD: feature distillation on ground-truth instances, each weighted by learnable instance selectors.

This is our reconstruction of the selector (docs/method.md, section (c)); every choice the paper leaves
open is an option of `LIAFDistiller`. For FPN level l, teacher map T_l, aligned student map S_l and the
Gaussian mask G_lj of instance j (see `masks.gaussian_instance_masks`, sums to 1):

    d_lj = sum_p G_lj(p) |T_l(:, p) - S_l(:, p)|^2 / (C E_l)            (instance discrepancy)
    u_lj = [e_T, e_S, log(1 + d_lj), t, q_lj, extras_lj]                (detached selector input)
    a_klj = sigmoid(s_k . mlp(u_lj) / sqrt(D)),  k = 1..K                (selector scores)
    w_lj = normalise(mean_k a_klj)                 (weights average 1 per image, or over the batch's images)
    loss_liaf = alpha * mean_l mean_images mean_j w_lj d_lj

with e_T, e_S the mask-weighted mean teacher and student features of the instance, t the training
progress, q_lj the student's own predicted quality for the instance's class inside its mask, and as options
what the instance-level detection losses tell (the teacher's correctness and loss on the instance, the
student's loss on it) and the instance's scale and class. E_l is the teacher's mean squared activation on
the level (`feature_scale="teacher"`, the default) or 1 (`"none"`, the paper's plain squared error): trained
FPNs grow their coarse levels' activations an order of magnitude or more above the finest level's, so without
it the coarsest maps, a few cells each, would dominate the loss and the right `alpha` would depend on the
teacher. The selectors (MLP, K vectors s_k) and the align convs exist only in training: the student keeps the
architecture of a student trained alone.
"""

from __future__ import annotations

import math
import typing
from dataclasses import dataclass
from functools import partial
from typing import Literal

import torch
from torch import nn

from ..models.gfl.configuration_gfl import GFLConfig
from ..models.gfl.loss_gfl import host_scalar, host_tensor
from ..models.gfl.modeling_gfl import GFLObjectDetectionOutput
from ._features import FeatureDistiller, FeatureScale, flat_class_logits
from ._instances import (
    InstanceDiscrepancy,
    InstanceLayout,
    LevelGrid,
    cell_errors,
    per_instance_output,
    take_part_in_level_scales,
)
from ._masks import multi_level_background_masks
from .base import (
    DistillationBatch,
    DistillationResult,
    MethodConfig,
    check_batch,
    non_negative,
    register_distiller,
    zero_with_graph,
)

__all__ = ["InstanceSelector", "LIAFConfig", "LIAFDistiller", "LevelSelection"]

Objective = Literal["joint", "robust", "task", "lookahead"]
OBJECTIVES = typing.get_args(Objective)
# The objectives whose selectors are kept from piling every weight on one instance by an entropy term.
_ENTROPY_OBJECTIVES = ("robust", "task", "lookahead")
# The objectives whose selectors maximise the instances' alignment with a direction of the student's maps.
_ALIGNMENT_OBJECTIVES = ("task", "lookahead")
Normalisation = Literal["mean", "softmax"]
NORMALISATIONS = typing.get_args(Normalisation)
# Over what the weights average 1: each image's instances, or the batch (the images' mean weights average 1).
NormalisationGroup = Literal["image", "batch"]
NORMALISATION_GROUPS = typing.get_args(NormalisationGroup)


class _ReverseGradient(torch.autograd.Function):
    """Identity forward, negated gradient backward: what receives it ascends the loss it feeds."""

    @staticmethod
    def forward(ctx, tensor: torch.Tensor) -> torch.Tensor:
        return tensor.view_as(tensor)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        return -grad


class InstanceSelector(nn.Module):
    """K learnable selectors scoring instances from their descriptors.

    The concatenated teacher and student descriptors are layer-normalised (their scale follows the FPN's
    and changes as the student learns), the scalar inputs (log discrepancy, progress, quality) pass as
    they are, already of order 1; a two-layer MLP embeds them to D dimensions and each selector vector
    s_k scores the embedding.
    """

    def __init__(self, *, descriptor_channels: int, num_scalars: int, embed_dim: int, num_selectors: int) -> None:
        super().__init__()
        self.descriptor_norm = nn.LayerNorm(2 * descriptor_channels)
        self.embed = nn.Sequential(
            nn.Linear(2 * descriptor_channels + num_scalars, embed_dim),
            nn.ReLU(),
            nn.Linear(embed_dim, embed_dim),
        )
        self.selector_vectors = nn.Parameter(torch.randn(num_selectors, embed_dim))
        self.embed_dim = embed_dim

    def forward(
        self, teacher_descriptors: torch.Tensor, student_descriptors: torch.Tensor, scalars: torch.Tensor
    ) -> torch.Tensor:
        """(N, C), (N, C), (N, m) -> (N, K) selector logits (their sigmoid is the score a_kj)."""
        descriptors = self.descriptor_norm(torch.cat([teacher_descriptors, student_descriptors], dim=1))
        embedding = self.embed(torch.cat([descriptors, scalars], dim=1))
        return embedding @ self.selector_vectors.t() / math.sqrt(self.embed_dim)


@dataclass
class LevelSelection:
    """The selectors' view of one FPN level. Instance j of image i sits at [i, j], in the order of
    `DistillationBatch.boxes[i]`; padding slots (j >= n_i) hold zeros.

    Attributes:
        discrepancy: (B, n_max) d_lj, differentiable with respect to the student (and the align conv).
        scores: (B, n_max, K) selector scores a_kj in (0, 1).
        weights: (B, n_max) normalised instance weights w_lj (they average 1 over an image's instances).
        instance_mask: (B, n_max) bool, True for real instances.
    """

    discrepancy: torch.Tensor
    scores: torch.Tensor
    weights: torch.Tensor
    instance_mask: torch.Tensor


@dataclass
class _Selection:
    """Every level's selection, levels stacked first (see `LevelSelection` for one level's fields)."""

    instances: InstanceDiscrepancy  # its discrepancy: (L, B, n_max)
    scores: torch.Tensor  # (L, N, K) a_klj, the instances flat (`InstanceLayout`'s order)
    weights: torch.Tensor  # (L, B, n_max)
    log_shares: torch.Tensor  # (L, B, n_max) log p_j, the weights as a distribution's logs (see `_weights`)
    real_discrepancy: torch.Tensor  # (L, N) d_lj without gradient, the instances flat

    @property
    def discrepancy(self) -> torch.Tensor:
        return self.instances.discrepancy


def _image_entropy(log_shares: torch.Tensor) -> torch.Tensor:
    """(..., B) entropy of each image's weights as a distribution p_j = w_j / n_i, from (..., B, n_max) log p_j
    (padding slots far below any real one, so that their p_j is exactly 0; an image without instances gets
    the entropy of its padding, to be left out)."""
    return -(log_shares.exp() * log_shares).sum(dim=-1)


def _dice_overlap(scores: torch.Tensor) -> torch.Tensor:
    """Mean over selector pairs k < k' of 2 sum a_k a_k' / (sum a_k^2 + sum a_k'^2); (M, K) scores -> ()."""
    num_selectors = scores.shape[1]
    products = scores.t() @ scores  # (K, K)
    squares = products.diagonal()
    dice = products / (squares[:, None] + squares[None, :]).clamp(min=1e-12)
    # The pairs above the diagonal, 2 * dice each, averaged: one kernel for the selection, not an index list.
    return dice.triu(diagonal=1).sum() * (4.0 / (num_selectors * (num_selectors - 1)))


@dataclass(frozen=True)
class LIAFConfig(MethodConfig):
    """The options of `liaf` (`LIAFDistiller`), the keys of `--method_options` for `--method liaf`; docs/method.md
    writes out what each changes in the formulation."""

    alpha: float = 10.0
    """Weight of the instance feature loss `loss_liaf` (averaged over levels). With `feature_scale="teacher"`,
    d_lj is the squared error relative to the teacher's own energy on the level, about 1 while the student's
    features are still unrelated to the teacher's, so the term starts near alpha whatever the FPN width. The
    default, 10.0, makes it pull about as hard as the strongest baselines do at their published weights; at 1, a
    term the size of the GFL loss, the student gains much less (docs/benchmarks.md, "Why the default weight is
    10"). With `feature_scale="none"` set alpha from the teacher's activations (a trained teacher's plain d can
    run into the thousands on its coarsest level)."""
    beta: float = 0.0
    """Weight of the background term `loss_liaf_bg` (the same relative squared error, uniform over the valid
    cells outside every box and ignore region, averaged over images and levels); 0 turns it off."""
    diversity_weight: float = 0.1
    """Lambda, weight of `loss_liaf_div`, the mean Dice overlap between the K selectors' score vectors over all
    (level, instance) pairs of the batch."""
    entropy_weight: float = 1.0
    """`robust`, `task` and `lookahead`: `loss_liaf_entropy` is alpha * entropy_weight * (log n - H(w / n)), the
    gap between the weights' entropy and the uniform one per image and level (averaged over levels and images, like
    `loss_liaf`). The selector's optimum is then w_j proportional to exp(d_j / entropy_weight): with the default
    1.0, instances whose d differ by 1 (d is about 1 at the start) get weights in the ratio e. The term scales
    with alpha so that alpha sets how strongly the student is pulled and entropy_weight how sharply the
    selectors pick, apart. The default, 1.0, is gentle selection: sharper selection (0.1) fell behind uniform
    instance weights at the same strength on the generated sets, and 1.0 did not (docs/benchmarks.md, "What the
    selectors add"). Lower it on data whose instances differ more than those sets' do."""
    num_selectors: int = 6
    """K."""
    embed_dim: int = 64
    """D, width of the selectors' embedding."""
    objective: Objective = "robust"
    """`"robust"` (default): the selectors receive the reversed gradient of `loss_liaf`, so they seek the
    instances the student has not learned, balanced by the entropy term. `"joint"`: the selectors minimise
    `loss_liaf` with the student; they then collapse onto the easiest instance of each image (weight entropy
    near 0). The student minimises the same weighted loss either way; `joint`'s collapse costs the student AP
    against `robust` (docs/benchmarks.md). `"task"` (liaf-hf's own addition, docs/method.md): the selectors seek
    the instances whose imitation also serves the student's own detection loss. For each instance, b_lj =
    <dd_lj/dS_l, g_l>, with g_l the gradient of the student's GFL loss with respect to its map on level l, is
    the first-order drop of that loss when the student's map takes a step down the instance's imitation
    gradient; scaled to unit RMS per level, the selectors maximise mean_j w_lj b_lj (under the same entropy
    term, so w_lj is proportional to exp(b_lj / entropy_weight) at their optimum) and the student minimises
    `loss_liaf` with the weights as given. The student's learning state enters through g_l, which costs a second
    backward pass through the head each step. `"lookahead"` (liaf-hf's own, after learning-to-reweight methods):
    as `task`, with g_l replaced by how a step for the student's detection loss on *other images* moves its map:
    J v / |v|, v the gradient of that loss on the other half of the batch with respect to the student's backbone
    and FPN (`DistillationBatch.held_out_directions`). The selectors then seek the instances whose imitation
    lowers the detection loss on images they are not in, the held-out test that separates an instance worth
    imitating from one that only fits its own, perhaps wrong, annotation. It costs a further forward and
    backward pass of the student and two of its backbone and FPN each step, and needs at least 2 images per
    device batch."""
    use_progress: bool = True
    """Give the selector the training progress t = step / total steps."""
    use_student_quality: bool = True
    """Give the selector the student's predicted quality for the instance's class, the mask-weighted mean of
    sigmoid(class logit) on the level."""
    normalise: Normalisation = "mean"
    """`"mean"`: w_j = m_j / mean_i m_i with m_j the mean score over selectors; `"softmax"`: w_j = n
    softmax_j(mean_k logit_kj) over the image's instances."""
    normalise_over: NormalisationGroup = "image"
    """`"image"` (default): the weights of each image's instances average 1, so an image's lone instance always
    weighs 1 and the selectors choose only within images; `"batch"`: the images' mean weights average 1 over the
    batch, so the selectors may also favour one image's instances over another's (the entropy term then measures
    the weights' spread over the whole batch)."""
    use_teacher_quality: bool = False
    """Give the selectors what the teacher's own detection says of the instance: its correctness there (best
    class score x IoU, `GFLObjectDetectionOutput.instance_quality`) and log(1 + its loss on the instance)
    (`instance_losses`). The teacher then runs its head and loss."""
    use_student_loss: bool = False
    """Give the selectors log(1 + the student's own detection loss on the instance)."""
    use_scale: bool = False
    """Give the selectors the instance's scale on each level, log2(sqrt(box area) / stride) / 4."""
    use_class: bool = False
    """Give the selectors the instance's class, one-hot."""
    feature_scale: FeatureScale = "teacher"
    """`"teacher"`: divide the squared errors of a level by the teacher's mean squared activation on it (over
    the batch, all cells and channels, no gradient); `"none"`: plain squared error per channel."""

    def __post_init__(self) -> None:
        super().__post_init__()
        non_negative(self, "alpha", "beta", "diversity_weight", "entropy_weight")
        if self.num_selectors < 1 or self.embed_dim < 1:
            raise ValueError(
                f"num_selectors ({self.num_selectors}) and embed_dim ({self.embed_dim}) must be at least 1."
            )


@register_distiller("liaf")
class LIAFDistiller(FeatureDistiller):
    """Instance-level feature distillation weighted by learnable instance selectors (LIAF-KD).

    Args:
        student_config, teacher_config: the two detectors' configs. They must have the same number of FPN
            levels and the same label set; when their FPN widths differ, a 1x1 conv per level maps the
            student's maps to the teacher's width.
        config: the options (`LIAFConfig`); the defaults when None.

    Example:

    ```python
    >>> import torch
    >>> from liaf_hf import GFLConfig
    >>> from liaf_hf.distillation.base import DistillationBatch, build_distiller
    >>> from liaf_hf.models.gfl.modeling_gfl import GFLObjectDetectionOutput
    >>> config = GFLConfig(backbone="resnet18", fpn_channels=8, num_fpn_levels=3, id2label={0: "a"})
    >>> distiller = build_distiller("liaf", student_config=config, teacher_config=config)
    >>> def output():
    ...     features = tuple(torch.randn(1, 8, size, size) for size in (8, 4, 2))
    ...     return GFLObjectDetectionOutput(
    ...         fpn_features=features, class_logits=tuple(torch.randn(1, 1, s, s) for s in (8, 4, 2)))
    >>> batch = DistillationBatch(
    ...     boxes=[torch.tensor([[4.0, 4.0, 30.0, 20.0]])], class_labels=[torch.tensor([0])],
    ...     ignore_boxes=[torch.zeros(0, 4)], input_size=(64, 64), valid_sizes=torch.tensor([[64.0, 64.0]]),
    ...     strides=[8, 16, 32])
    >>> sorted(distiller(student=output(), teacher=output(), batch=batch).losses)
    ['loss_liaf', 'loss_liaf_div', 'loss_liaf_entropy']
    ```
    """

    config_class = LIAFConfig
    description = (
        "instance-level feature distillation with Gaussian instance masks, each instance's share of the loss set by "
        "learnable instance selectors that train with the student and are dropped afterwards"
    )
    reference = "LIAF-KD, arXiv 2603.26088, as reconstructed in liaf-hf"
    selects_instances = True
    method_name = "LIAF"
    compiled_part = "_instance_terms"

    def __init__(
        self, *, student_config: GFLConfig, teacher_config: GFLConfig, config: LIAFConfig | None = None
    ) -> None:
        super().__init__(student_config=student_config, teacher_config=teacher_config, config=config)
        config = self.config
        self.needs_teacher_instance_losses = config.use_teacher_quality
        self.needs_student_instance_losses = config.use_student_loss
        self.needs_held_out_directions = config.objective == "lookahead"
        self.num_classes = teacher_config.num_labels
        self.selector = InstanceSelector(
            descriptor_channels=teacher_config.fpn_channels,
            num_scalars=1
            + int(config.use_progress)
            + int(config.use_student_quality)
            + 2 * int(config.use_teacher_quality)
            + int(config.use_student_loss)
            + int(config.use_scale)
            + self.num_classes * int(config.use_class),
            embed_dim=config.embed_dim,
            num_selectors=config.num_selectors,
        )

    # ----------------------------------------------------------------------------------------- selection

    def _weights(self, logits: torch.Tensor, layout: InstanceLayout) -> tuple[torch.Tensor, torch.Tensor]:
        """(L, N, K) selector logits -> (L, B, n_max) weights, and the logs of their shares p_j (exact where a
        share underflows, for the entropy term).

        With `normalise_over="image"`, p_j = w_j / n_i is each image's distribution: w_j = n_i softmax_j(s_j)
        over the image's instances, with s_j = log mean_k sigmoid(logit_kj) for `"mean"` (that is
        m_j / mean_i m_i) and s_j = mean_k logit_kj for `"softmax"`. With `"batch"`, p_j = w_j / (n_i B') is one
        distribution over the batch's instances (B' images with instances): a softmax of s_j - log n_i over
        them, so that equal scores give every weight 1 as before. Computing in log space matters: selectors
        trained with `objective="joint"` push every score towards 0, and the ratio of underflowed sigmoids is
        0 / 0.
        """
        if self.config.normalise == "mean":
            instance_scores = torch.logsumexp(nn.functional.logsigmoid(logits), dim=2) - math.log(logits.shape[2])
        else:
            instance_scores = logits.mean(dim=2)
        padded = layout.pad(instance_scores.t(), fill=-1e9).permute(2, 0, 1)  # (L, B, n_max)
        scale = layout.instance_mask * layout.counts[:, None]  # (B, n_max): n_i on real slots
        if self.config.normalise_over == "image":
            log_shares = padded.log_softmax(dim=2)
            return log_shares.exp() * scale, log_shares
        log_counts = layout.counts.clamp(min=1).log()[:, None]  # (B, 1)
        log_shares = (padded - log_counts).flatten(1).log_softmax(dim=1).view_as(padded)
        return log_shares.exp() * (scale * layout.images_with_instances.shape[0]), log_shares

    def _uniformity_gap(self, log_shares: torch.Tensor, layout: InstanceLayout) -> tuple[torch.Tensor, torch.Tensor]:
        """(L,) each level's KL divergence of the weights' distribution from the one uniform weights give, and
        (L,) its entropy: per image and averaged over the images with instances (`"image"`), or over the
        batch's instances at once (`"batch"`)."""
        if self.config.normalise_over == "image":
            entropy = _image_entropy(log_shares)[:, layout.images_with_instances]  # (L, B')
            image_counts = layout.counts[layout.images_with_instances]
            return (image_counts.log() - entropy).mean(dim=1), entropy.mean(dim=1)
        shares = log_shares.exp()
        # Uniform weights give p_j = 1 / (n_i B'); padding slots have p_j = 0 and add nothing.
        log_uniform = -(layout.counts.clamp(min=1).log() + math.log(layout.images_with_instances.shape[0]))
        entropy = -(shares * log_shares).flatten(1).sum(dim=1)
        return (shares * (log_shares - log_uniform[:, None])).flatten(1).sum(dim=1), entropy

    def select(
        self, *, student: GFLObjectDetectionOutput, teacher: GFLObjectDetectionOutput, batch: DistillationBatch
    ) -> list[LevelSelection]:
        """The instance weights and discrepancies of every FPN level (finest first), e.g. to draw them.

        Requires at least one instance in the batch.
        """
        layout = InstanceLayout.from_boxes(batch.boxes, batch.class_labels, device=teacher.fpn_features[0].device)
        with torch.autocast(device_type=layout.counts.device.type, enabled=False):
            levels = self.aligner.levels(student, teacher)
            selection = self._select(
                levels=levels,
                student=student,
                teacher=teacher,
                strides=batch.strides,
                layout=layout,
                progress=host_scalar(float(batch.progress), device=layout.counts.device),
            )
        return [
            LevelSelection(discrepancy=discrepancy, scores=scores, weights=weights, instance_mask=layout.instance_mask)
            for discrepancy, scores, weights in zip(
                selection.discrepancy.unbind(),
                layout.pad(selection.scores.transpose(0, 1)).permute(2, 0, 1, 3).unbind(),
                selection.weights.unbind(),
            )
        ]

    def _select(
        self,
        *,
        levels: list[tuple[torch.Tensor, torch.Tensor]],
        student: GFLObjectDetectionOutput,
        teacher: GFLObjectDetectionOutput,
        strides: list[int],
        layout: InstanceLayout,
        progress: torch.Tensor,
        directions: list[torch.Tensor] | None = None,
    ) -> _Selection:
        """Every level's selection, computed for all levels together.

        `levels`: every level's (teacher map, aligned student map), as `FeatureAligner.levels` gives them;
        `progress`: () the training progress, a tensor so that a compiled step does not specialise on it;
        `directions`: for `objective="task"` or `"lookahead"`, `InstanceDiscrepancy.of`'s, to take the instances'
        alignment.
        The levels' cells are laid side by side (P = sum_l H_l W_l) and the selectors score every level's
        instances in one pass: a pass per level cost some hundred tensor operations per level, forward and
        backward, each a kernel launch on a GPU, where launches rather than arithmetic set a step's time.
        """
        if layout.max_count == 0:
            raise ValueError("The batch has no instances to select from.")
        num_levels = len(levels)
        instances = InstanceDiscrepancy.of(
            levels,
            layout=layout,
            strides=strides,
            feature_scale=self.config.feature_scale,
            feature_means=True,
            directions=directions,
        )
        discrepancy, grid = instances.discrepancy, instances.grid
        # e_T and e_S of every level (without gradient), each (L N, C).
        teacher_descriptors, student_descriptors = layout.real(instances.feature_means).flatten(0, 1).chunk(2, dim=1)
        real_discrepancy = layout.real(discrepancy.detach())  # (L, N)
        scalars = [real_discrepancy.log1p()]
        if self.config.use_progress:
            scalars.append(progress.to(scalars[0].dtype).expand_as(scalars[0]))
        if self.config.use_student_quality:
            if student.logits is None and student.class_logits is None:
                raise ValueError("use_student_quality needs the student's logits or class_logits in its output.")
            class_probabilities = flat_class_logits(student).detach().float().sigmoid()  # (B, P, C)
            class_scores = class_probabilities[layout.image_index, :, layout.class_labels]  # (N, P)
            scalars.append(((class_scores * instances.masks) @ grid.indicator).t())
        per_instance = []  # (N,) each, the same on every level
        if self.config.use_teacher_quality:
            teacher_field = partial(
                per_instance_output, teacher, model="teacher", needed_by="LIAF-KD's use_teacher_quality", layout=layout
            )
            per_instance += [teacher_field("instance_quality"), teacher_field("instance_losses").log1p()]
        if self.config.use_student_loss:
            per_instance.append(
                per_instance_output(
                    student, "instance_losses", model="student", needed_by="LIAF-KD's use_student_loss", layout=layout
                ).log1p()
            )
        scalars.extend(values.expand(num_levels, -1) for values in per_instance)
        if self.config.use_scale:
            sizes = (layout.boxes[:, 2:] - layout.boxes[:, :2]).clamp(min=1.0).prod(dim=1).sqrt()  # (N,)
            level_strides = host_tensor(list(strides), dtype=sizes.dtype, device=sizes.device)
            scalars.append((sizes[None, :] / level_strides[:, None]).log2() / 4.0)
        columns = torch.stack(scalars, dim=2)  # (L, N, m)
        if self.config.use_class:
            # A comparison, not `one_hot`, which checks the labels' range and so waits for the device.
            classes = torch.arange(self.num_classes, device=columns.device)
            one_hot = (layout.class_labels[:, None] == classes).to(columns.dtype)  # (N, C)
            columns = torch.cat([columns, one_hot.expand(num_levels, -1, -1)], dim=2)
        logits = self.selector(teacher_descriptors, student_descriptors, columns.flatten(0, 1)).view(
            num_levels, layout.num_instances, -1
        )  # (L, N, K), level by level
        weights, log_shares = self._weights(logits, layout)
        return _Selection(
            instances=instances,
            scores=logits.sigmoid(),
            weights=weights,
            log_shares=log_shares,
            real_discrepancy=real_discrepancy,
        )

    # --------------------------------------------------------------------------------------------- losses

    def _background_loss(
        self, *, cell_errors: torch.Tensor, levels: list[tuple[torch.Tensor, torch.Tensor]], batch: DistillationBatch
    ) -> torch.Tensor:
        """Mean over levels and images of sum_p bg(p) |T - S|^2 / (C E_l); `cell_errors` (B, P) are every
        level's relative squared errors side by side (`instances.cell_errors`), `levels` the aligned maps."""
        grid = LevelGrid.of([teacher_map for teacher_map, _ in levels])
        background = multi_level_background_masks(
            [boxes.to(cell_errors.device) for boxes in batch.boxes],
            feature_sizes=grid.sizes,
            strides=batch.strides,
            valid_sizes=batch.valid_sizes,
            ignore_boxes=batch.ignore_boxes,
        )  # (B, P)
        return ((background * cell_errors) @ grid.indicator).mean()  # each image's sum per level, averaged

    def forward(
        self, *, student: GFLObjectDetectionOutput, teacher: GFLObjectDetectionOutput, batch: DistillationBatch
    ) -> DistillationResult:
        check_batch(student, batch, num_levels=self.aligner.num_levels)
        device = teacher.fpn_features[0].device
        layout = InstanceLayout.from_boxes(batch.boxes, batch.class_labels, device=device)
        result = DistillationResult()
        with torch.autocast(device_type=device.type, enabled=False):
            if layout.max_count == 0:
                levels = self.aligner.levels(student, teacher)
                if self.config.beta > 0:
                    errors = cell_errors(levels, feature_scale=self.config.feature_scale)
                else:
                    take_part_in_level_scales(levels, feature_scale=self.config.feature_scale)
                # Nothing to weigh; zero losses that still touch every parameter (DDP needs their gradients).
                zero = zero_with_graph(*self.parameters())
                result.losses["loss_liaf"] = zero
                result.losses["loss_liaf_div"] = zero.clone()
                if self.config.objective in _ENTROPY_OBJECTIVES:
                    result.losses["loss_liaf_entropy"] = zero.clone()
            else:
                levels, errors = self._instance_terms(
                    student=student,
                    teacher=teacher,
                    strides=list(batch.strides),
                    layout=layout,
                    progress=host_scalar(float(batch.progress), device=device),
                    task_gradients=self._alignment_directions(student, batch),
                    result=result,
                )
            if self.config.beta > 0:
                background_loss = self._background_loss(cell_errors=errors, levels=levels, batch=batch)
                result.losses["loss_liaf_bg"] = self.config.beta * background_loss
        return result

    def _alignment_directions(
        self, student: GFLObjectDetectionOutput, batch: DistillationBatch
    ) -> tuple[torch.Tensor, ...] | None:
        """The directions of the student's maps whose alignment the selectors maximise: `task`'s gradient of its
        loss on the batch, `lookahead`'s held-out directions; None for the other objectives."""
        if self.config.objective == "task":
            return self._task_gradients(student)
        if self.config.objective == "lookahead":
            if batch.held_out_directions is None:
                raise ValueError(
                    'objective="lookahead" needs DistillationBatch.held_out_directions, which '
                    "LIAFDistillationTrainer fills for methods with needs_held_out_directions "
                    "(liaf_hf.trainer._held_out.held_out_directions computes them)."
                )
            return batch.held_out_directions
        return None

    @staticmethod
    def _task_gradients(student: GFLObjectDetectionOutput) -> tuple[torch.Tensor, ...]:
        """g_l, the gradient of the student's GFL loss with respect to each of its FPN maps, (B, C_S, H_l, W_l)
        each: the way the student's next step moves them for its own task (`objective="task"`)."""
        if student.loss is None or not student.loss.requires_grad:
            raise ValueError(
                'objective="task" needs the student\'s own detection loss with its graph '
                "(GFLObjectDetectionOutput.loss): run the student with labels and gradients, as the trainer does."
            )
        return torch.autograd.grad(
            student.loss, student.fpn_features, retain_graph=True, allow_unused=True, materialize_grads=True
        )

    def _instance_terms(
        self,
        *,
        student: GFLObjectDetectionOutput,
        teacher: GFLObjectDetectionOutput,
        strides: list[int],
        layout: InstanceLayout,
        progress: torch.Tensor,
        task_gradients: tuple[torch.Tensor, ...] | None,
        result: DistillationResult,
    ) -> tuple[list[tuple[torch.Tensor, torch.Tensor]], torch.Tensor]:
        """The step's tensor work for a batch with instances, from the aligned maps to every instance loss
        and statistic (put in `result`): what `compile_losses` compiles. The layout is built before it, on
        the host, so that a compiled step sees the instance counts only as tensor sizes (the background term
        stays eager too: its masks start from the lists of boxes).

        `task_gradients`: the directions of `_alignment_directions` (`task`, `lookahead`), else None.

        Returns every level's (teacher map, aligned student map) and the (B, P) cell errors, which the
        background term reuses.
        """
        levels = self.aligner.levels(student, teacher)
        directions = None
        if task_gradients is not None:
            # A_l g_l: how a step along g_l moves the aligned map.
            directions = [
                self.aligner.align_direction(gradient, level=level) for level, gradient in enumerate(task_gradients)
            ]
        selection = self._select(
            levels=levels,
            student=student,
            teacher=teacher,
            strides=strides,
            layout=layout,
            progress=progress,
            directions=directions,
        )
        self._instance_losses(selection, layout, result)
        return levels, selection.instances.cell_errors

    def _instance_losses(self, selection: _Selection, layout: InstanceLayout, result: DistillationResult) -> None:
        """Fill `result` with the weighted feature loss, the diversity (and entropy) terms and the stats."""
        num_levels = selection.weights.shape[0]
        weights = selection.weights
        if self.config.objective == "robust":
            weights = _ReverseGradient.apply(weights)
        elif self.config.objective in _ALIGNMENT_OBJECTIVES:
            weights = weights.detach()
        feature_loss = selection.instances.image_means(layout, weights).mean(dim=1).sum()
        alignment = selection.instances.alignment
        if alignment is not None:
            # b_lj = <dd_lj/dS_l, g_l>: dd_lj/dS_l is sum_p G_lj(p) 2 (S_l - T_l)(p) / (C E_l) pulled back through
            # the align conv, so b_lj is the instances' `alignment` times a constant of the level. Scaling each
            # level to unit RMS over its real instances removes that constant, E_l with it.
            real_alignment = layout.real(alignment)  # (L, N)
            scale = real_alignment.square().mean(dim=1).sqrt().clamp(min=1e-30)[:, None]  # (L, 1)
            alignment, real_alignment = alignment / scale[:, :, None], real_alignment / scale
            # Worth 0, so loss_liaf keeps its value; its gradient, -b_lj per weight, reaches the selectors only.
            weight_steps = selection.weights - selection.weights.detach()
            per_image = (weight_steps * alignment).sum(dim=2) / layout.counts.clamp(min=1)  # (L, B)
            feature_loss = feature_loss - per_image[:, layout.images_with_instances].mean(dim=1).sum()
        uniformity_gap, entropy = self._uniformity_gap(selection.log_shares, layout)  # (L,) each
        # Constants folded into one factor per term: each operation is a kernel launch on a GPU.
        result.losses["loss_liaf"] = feature_loss * (self.config.alpha / num_levels)
        all_scores = selection.scores.flatten(0, 1)  # (L * N, K), level by level
        if all_scores.shape[1] > 1:
            result.losses["loss_liaf_div"] = self.config.diversity_weight * _dice_overlap(all_scores)
        else:
            result.losses["loss_liaf_div"] = zero_with_graph(all_scores)
        if self.config.objective in _ENTROPY_OBJECTIVES:
            result.losses["loss_liaf_entropy"] = uniformity_gap.sum() * (
                self.config.alpha * self.config.entropy_weight / num_levels
            )

        real_weights = layout.real(selection.weights).detach()  # (L, N)
        per_level = {
            "weight_mean": real_weights.mean(dim=1),
            "weight_min": real_weights.amin(dim=1),
            "weight_max": real_weights.amax(dim=1),
            "weight_entropy": entropy.detach(),
            "discrepancy": selection.real_discrepancy.mean(dim=1),
        }
        if alignment is not None:
            # Above 0 when the selectors weigh up the instances whose imitation serves the detection loss.
            per_level["alignment_gain"] = ((real_weights - 1.0) * real_alignment).mean(dim=1)
        per_level = {name: values.unbind() for name, values in per_level.items()}
        for level in range(num_levels):
            for name, values in per_level.items():
                result.stats[f"liaf/{name}_l{level}"] = values[level]
