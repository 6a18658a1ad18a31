"""GFL detector: backbone (timm, or any transformers backbone), FPN and GFL head, as a transformers model.

The training loss (ATSS assignment, QFL, DFL, GIoU) is in `loss_gfl.py` beside this file, reached through the
model's `loss_function`. The two files import only torch, timm and transformers, and saving a model copies both
into its folder, so it loads with `trust_remote_code=True` for someone without `liaf_hf`.

The backbone is `GFLTimmBackbone` (a timm `features_only` model) by default, or
`GFLTransformersBackbone` (what transformers' `load_backbone` builds from `config.backbone_config`); both
hold the network as `body` and give the FPN a list of maps, finest first, with their `channels` and `strides`.

Box conventions at the boundaries:
- `labels[i]["boxes"]`, `labels[i]["ignore_boxes"]` and `GFLObjectDetectionOutput.pred_boxes` are
  normalised (cx, cy, w, h), relative to the image's valid (unpadded) region given by `pixel_mask`.
- Inside, boxes are absolute (x1, y1, x2, y2) in pixels of the padded input.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import timm
import torch
import torch.nn.functional as F
from torch import nn
from transformers import PreTrainedModel
from transformers import initialization as init
from transformers.backbone_utils import load_backbone
from transformers.conversion_mapping import register_checkpoint_conversion_mapping
from transformers.core_model_loading import WeightRenaming
from transformers.models.auto.modeling_auto import MODEL_FOR_BACKBONE_MAPPING
from transformers.utils import ModelOutput

from .configuration_gfl import DEFAULT_TIMM_OUT_INDICES, GFLConfig
from .loss_gfl import GFLLoss, box_cxcywh_to_xyxy, box_xyxy_to_cxcywh, group_of_each, host_tensor


def _to_pixels(boxes: torch.Tensor, counts: list[int], scales: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """(N, 4) normalised cxcywh boxes of several images, `counts[i]` of them from image i, to xyxy pixels
    with image i's `scales[i]` (w, h, w, h); returned split per image."""
    image_of_box = group_of_each(counts, device=scales.device)
    return (box_cxcywh_to_xyxy(boxes) * scales[image_of_box]).split(counts)


# Set on a pixel batch found finite, with the tensor's version counter then, so that the other forwards of a
# step on the same unmodified tensor (a distillation teacher's, the student's with prepared targets) do not
# wait for the device again.
_FINITE_VERSION = "_gfl_checked_finite_version"


def _pixels_need_check(pixel_values: torch.Tensor) -> bool:
    """Whether `pixel_values` is still to be checked for NaN and inf: not yet checked in its present state
    (an inference-mode tensor has no version counter, so it always is), and not being traced by torch.compile
    (a data-dependent branch would break the graph)."""
    if torch.compiler.is_compiling():
        return False
    return pixel_values.is_inference() or getattr(pixel_values, _FINITE_VERSION, None) != pixel_values._version


def _mark_pixels_finite(pixel_values: torch.Tensor) -> None:
    if not pixel_values.is_inference():
        setattr(pixel_values, _FINITE_VERSION, pixel_values._version)


def _raise_for_nonfinite_pixels(pixel_values: torch.Tensor) -> None:
    """Name the images of a (B, 3, H, W) batch that hold NaN or inf values (only called when one does)."""
    bad = ~torch.isfinite(pixel_values.detach()).flatten(1)  # (B, 3 * H * W)
    images = bad.any(dim=1).nonzero().flatten().tolist()
    counts = ", ".join(f"image {index}: {int(bad[index].sum())}" for index in images)
    raise ValueError(
        f"pixel_values holds NaN or inf values ({counts} of {bad.shape[1]} values): the image or its "
        "preprocessing is broken (e.g. a float image with NaN pixels, or a division by a zero std); fix or "
        "drop that image."
    )


# --------------------------------------------------------------------------------------------------
# Network parts
# --------------------------------------------------------------------------------------------------


class GFLTimmBackbone(nn.Module):
    """A timm model in `features_only` mode, returning the feature maps chosen by `out_indices`."""

    def __init__(
        self,
        *,
        model_name: str,
        out_indices: tuple[int, ...],
        pretrained: bool = False,
        timm_kwargs: dict | None = None,
    ) -> None:
        super().__init__()
        try:
            self.body = timm.create_model(
                model_name, pretrained=pretrained, features_only=True, out_indices=out_indices, **(timm_kwargs or {})
            )
        except IndexError as error:
            levels = self._feature_levels(model_name, timm_kwargs)
            raise ValueError(
                f"GFLConfig.backbone_out_indices={tuple(out_indices)} names feature levels that the timm model "
                f"{model_name!r} does not have: it has {levels} (indices 0 to {levels - 1}, or -{levels} to -1 "
                "counting back from the coarsest)."
            ) from error
        except RuntimeError as error:
            raise ValueError(
                f"GFLConfig.backbone={model_name!r} cannot serve as a GFL backbone (the timm model must support "
                f"features_only=True with backbone_out_indices={out_indices}): {error!r}"
            ) from error
        self.channels: list[int] = list(self.body.feature_info.channels())
        self.strides: list[int] = list(self.body.feature_info.reduction())
        # The FPN takes its inputs finest first and merges each level into the next finer one.
        if any(coarser <= finer for finer, coarser in zip(self.strides, self.strides[1:])):
            raise ValueError(
                f"GFLConfig.backbone_out_indices={tuple(out_indices)} gives levels of the timm model {model_name!r} "
                f"with strides {self.strides}: name distinct levels from the finest to the coarsest (e.g. "
                f"{tuple(DEFAULT_TIMM_OUT_INDICES)})."
            )

    @staticmethod
    def _feature_levels(model_name: str, timm_kwargs: dict | None) -> int:
        """How many feature levels the timm model has (built on the meta device: no memory, no weights)."""
        with torch.device("meta"):
            model = timm.create_model(model_name, pretrained=False, **(timm_kwargs or {}))
        return len(model.feature_info)

    def forward(self, pixel_values: torch.Tensor) -> list[torch.Tensor]:
        """(B, 3, H, W) -> list of (B, channels[i], H / strides[i], W / strides[i])."""
        return list(self.body(pixel_values))


class GFLTransformersBackbone(nn.Module):
    """A transformers backbone (any model `AutoBackbone` builds from `config.backbone_config`, made by
    `load_backbone`), returning its `feature_maps`."""

    #: Side of the square blank image whose forward measures the strides (a multiple of every power-of-two
    #: stride up to 256).
    PROBE_SIZE = 256

    def __init__(self, config: GFLConfig) -> None:
        super().__init__()
        self.body = load_backbone(config)
        self.channels: list[int] = list(self.body.channels)
        self.strides: list[int] = self._measured_strides()

    @torch.no_grad()
    def _measured_strides(self) -> list[int]:
        # The backbone API tells no reductions, so one forward measures them: on the meta device when
        # from_pretrained builds the model there (shapes without arithmetic), in eval mode so that batch
        # normalisation keeps its statistics.
        weight = next(self.body.parameters())
        channels = getattr(self.body.config, "num_channels", 3)
        probe = torch.zeros(1, channels, self.PROBE_SIZE, self.PROBE_SIZE, device=weight.device, dtype=weight.dtype)
        training = self.body.training
        feature_maps = self.body.eval()(probe, return_dict=True).feature_maps
        self.body.train(training)
        return [round(self.PROBE_SIZE / feature_map.shape[-1]) for feature_map in feature_maps]

    def forward(self, pixel_values: torch.Tensor) -> list[torch.Tensor]:
        """(B, 3, H, W) -> list of (B, channels[i], H / strides[i], W / strides[i])."""
        return list(self.body(pixel_values, return_dict=True).feature_maps)


class GFLFeaturePyramidNetwork(nn.Module):
    """FPN (Lin et al. 2017) with extra levels made by stride-2 convs on the last output."""

    def __init__(self, *, in_channels: list[int], out_channels: int, num_levels: int) -> None:
        super().__init__()
        self.lateral_convs = nn.ModuleList(nn.Conv2d(c, out_channels, 1) for c in in_channels)
        self.output_convs = nn.ModuleList(nn.Conv2d(out_channels, out_channels, 3, padding=1) for _ in in_channels)
        self.extra_convs = nn.ModuleList(
            nn.Conv2d(out_channels, out_channels, 3, stride=2, padding=1) for _ in range(num_levels - len(in_channels))
        )
        for conv in self.modules():
            if isinstance(conv, nn.Conv2d):
                conv._init_scheme = "xavier"

    def forward(self, features: list[torch.Tensor]) -> list[torch.Tensor]:
        """Backbone maps, finest first -> `num_levels` maps of `out_channels`, finest first."""
        laterals = [conv(feature) for conv, feature in zip(self.lateral_convs, features)]
        for level in range(len(laterals) - 1, 0, -1):
            laterals[level - 1] = laterals[level - 1] + F.interpolate(
                laterals[level], size=laterals[level - 1].shape[-2:], mode="nearest"
            )
        outputs = [conv(lateral) for conv, lateral in zip(self.output_convs, laterals)]
        for conv in self.extra_convs:
            outputs.append(conv(outputs[-1]))
        return outputs


class GFLScale(nn.Module):
    """A learnable scalar per FPN level, so each level's box regression finds its own range."""

    def __init__(self, value: float = 1.0) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.tensor(float(value)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.scale


def _conv_norm_act_stack(*, in_channels: int, channels: int, depth: int, norm_groups: int) -> nn.Sequential:
    layers: list[nn.Module] = []
    for index in range(depth):
        layers += [
            nn.Conv2d(in_channels if index == 0 else channels, channels, 3, padding=1, bias=False),
            nn.GroupNorm(norm_groups, channels),
            nn.ReLU(inplace=True),
        ]
    return nn.Sequential(*layers)


class GFLHead(nn.Module):
    """The GFL head, shared across levels: a classification branch giving per-class quality scores and a
    box branch giving, for each of the four box edges, a distribution over distances 0..reg_max."""

    def __init__(
        self,
        *,
        in_channels: int,
        channels: int,
        num_classes: int,
        stacked_convs: int,
        norm_groups: int,
        reg_max: int,
        num_levels: int,
    ) -> None:
        super().__init__()
        self.cls_convs = _conv_norm_act_stack(
            in_channels=in_channels, channels=channels, depth=stacked_convs, norm_groups=norm_groups
        )
        self.reg_convs = _conv_norm_act_stack(
            in_channels=in_channels, channels=channels, depth=stacked_convs, norm_groups=norm_groups
        )
        last_channels = channels if stacked_convs > 0 else in_channels
        self.class_logits = nn.Conv2d(last_channels, num_classes, 3, padding=1)
        self.box_distribution = nn.Conv2d(last_channels, 4 * (reg_max + 1), 3, padding=1)
        self.scales = nn.ModuleList(GFLScale(1.0) for _ in range(num_levels))
        for conv in self.modules():
            if isinstance(conv, nn.Conv2d):
                conv._init_scheme = "normal"
        self.class_logits._init_scheme = "class_prior"

    def forward(self, features: list[torch.Tensor]) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """FPN maps (B, F, H_l, W_l) -> class logits (B, C, H_l, W_l) and box-edge distribution logits
        (B, 4 * (reg_max + 1), H_l, W_l) per level."""
        class_logits, box_distributions = [], []
        for feature, scale in zip(features, self.scales):
            class_logits.append(self.class_logits(self.cls_convs(feature)))
            box_distributions.append(scale(self.box_distribution(self.reg_convs(feature))).float())
        return class_logits, box_distributions


# --------------------------------------------------------------------------------------------------
# Model
# --------------------------------------------------------------------------------------------------


@dataclass
class GFLTargets:
    """A batch's labels checked and converted to input pixels once, by
    [`GFLForObjectDetection.prepare_targets`]. Passed as `labels` to `forward` (or to `positive_anchor_mask`)
    it saves their conversion, a few dozen kernel launches and a wait for the device per call: for a caller
    that needs the boxes in pixels too, such as the distillation trainer.

    Attributes:
        valid_sizes: (B, 2) unpadded (height, width) of each image.
        instances: per image `(class_labels (n,), boxes (n, 4) xyxy input pixels, ignore_boxes (m, 4) or
            None)`, as `labels_in_pixels` returns them.
    """

    valid_sizes: torch.Tensor
    instances: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]]


@dataclass
class GFLObjectDetectionOutput(ModelOutput):
    """Output of [`GFLForObjectDetection`]. A = number of anchor points over all levels, C = classes,
    R = `config.reg_max`, F = `config.fpn_channels`.

    Args:
        loss (`torch.FloatTensor` of shape `()`, *optional*):
            Weighted sum of the GFL losses, when `labels` are given.
        loss_dict (`dict[str, torch.FloatTensor]`, *optional*):
            The weighted components `loss_qfl`, `loss_dfl`, `loss_giou`.
        logits (`torch.FloatTensor` of shape `(B, A, C)`):
            Classification logits; their sigmoid is the predicted localisation quality (IoU) per class.
        pred_boxes (`torch.FloatTensor` of shape `(B, A, 4)`):
            Predicted boxes, normalised (cx, cy, w, h) relative to each image's unpadded region.
        fpn_features (`tuple[torch.FloatTensor]`):
            One `(B, F, H_l, W_l)` map per FPN level, finest first (what feature distillation compares).
        class_logits (`tuple[torch.FloatTensor]`):
            One `(B, C, H_l, W_l)` map of raw classification logits per level.
        box_distributions (`tuple[torch.FloatTensor]`):
            One `(B, 4 * (R + 1), H_l, W_l)` map of box-edge distribution logits per level (edges in the
            order left, top, right, bottom; distances in units of the level's stride).
        positive_mask (`torch.BoolTensor` of shape `(B, A)`, *optional*):
            When `labels` are given: True at the anchors the loss's ATSS assignment made positive, the
            locations the box losses regress from (what localization distillation reads; the same as
            `positive_anchor_mask` returns, without assigning the anchors a second time).
        instance_losses (`torch.FloatTensor` of shape `(N,)`, *optional*):
            With `output_instance_losses=True` and `labels`: each ground-truth instance's own GFL loss, without
            gradient, the instances of every image one after another in the order of `labels`. It is the mean
            over the instance's positive anchors of the QFL (summed over classes) plus the weighted GIoU and
            DFL losses; an instance that no anchor is assigned to gets the batch's highest instance loss (the
            detector cannot learn it under this assignment).
        instance_quality (`torch.FloatTensor` of shape `(N,)`, *optional*):
            With `output_instance_losses=True` and `labels`: how right the detector is on each instance, the
            best score x IoU over its positive anchors (the predicted probability of its class times the IoU
            of the predicted box with its box), in [0, 1]; 0 for an instance without positive anchors.
        hidden_states (`tuple[torch.FloatTensor]`, *optional*):
            With `output_hidden_states=True`: the backbone's feature maps that feed the FPN, finest first.
    """

    loss: torch.FloatTensor | None = None
    loss_dict: dict | None = None
    logits: torch.FloatTensor | None = None
    pred_boxes: torch.FloatTensor | None = None
    fpn_features: tuple[torch.FloatTensor, ...] | None = None
    class_logits: tuple[torch.FloatTensor, ...] | None = None
    box_distributions: tuple[torch.FloatTensor, ...] | None = None
    positive_mask: torch.BoolTensor | None = None
    instance_losses: torch.FloatTensor | None = None
    instance_quality: torch.FloatTensor | None = None
    hidden_states: tuple[torch.FloatTensor, ...] | None = None


class GFLPreTrainedModel(PreTrainedModel):
    config_class = GFLConfig
    config: GFLConfig
    base_model_prefix = "model"
    main_input_name = "pixel_values"
    input_modalities = ("image",)
    # The loss is already a per-batch mean; Trainer must divide it by the gradient-accumulation steps.
    accepts_loss_kwargs = False

    @torch.no_grad()
    def _init_weights(self, module: nn.Module) -> None:
        if getattr(module, "_keeps_timm_init", False):
            # timm initialised (or loaded) the backbone; only buffers timm does not save need rebuilding
            # when the model was created on the meta device by from_pretrained.
            if hasattr(module, "init_non_persistent_buffers"):
                module.init_non_persistent_buffers()
            return
        # transformers 5 initialises leaf modules one by one (a parent without parameters of its own is
        # skipped), so each conv carries the scheme its parent chose for it.
        scheme = getattr(module, "_init_scheme", None)
        if scheme == "xavier":
            init.xavier_uniform_(module.weight)
            init.zeros_(module.bias)
        elif scheme in ("normal", "class_prior"):
            init.normal_(module.weight, mean=0.0, std=0.01)
            if module.bias is not None:
                prior_prob = self.config.prior_prob
                bias = -math.log((1 - prior_prob) / prior_prob) if scheme == "class_prior" else 0.0
                init.constant_(module.bias, bias)
        elif isinstance(module, nn.GroupNorm):
            init.ones_(module.weight)
            init.zeros_(module.bias)
        elif isinstance(module, GFLScale):
            init.ones_(module.scale)


@dataclass
class GFLModelOutput(ModelOutput):
    """What `GFLModel` returns: the FPN's maps, finest first, `(B, F, H_l, W_l)` each, and with
    `output_hidden_states` the backbone's own maps."""

    fpn_features: tuple[torch.FloatTensor, ...] | None = None
    hidden_states: tuple[torch.FloatTensor, ...] | None = None


class GFLModel(GFLPreTrainedModel):
    """The GFL detector without its head: the backbone (timm's, or a transformers one from
    `config.backbone_config`) and the feature pyramid, as `GFLForObjectDetection.model`. What feature
    distillation reads of a detector, and a multi-scale feature extractor of its own."""

    # Loaded from a detector's checkpoint, the head's weights are not this model's.
    _keys_to_ignore_on_load_unexpected = [r"^head\."]

    def __init__(self, config: GFLConfig, *, initialise: bool = True) -> None:
        """`initialise=False` leaves the neck's initialisation to the model holding this one (its `post_init`),
        as `GFLForObjectDetection` does: it then draws its random weights in the order the detector always has
        (backbone, neck, head built, then the neck and head initialised), so a seed gives the same detector."""
        super().__init__(config)
        if config.backbone_config is None:
            self.backbone = GFLTimmBackbone(
                model_name=config.backbone,
                out_indices=tuple(config.backbone_out_indices),
                timm_kwargs=config.backbone_kwargs,
            )
            for module in self.backbone.modules():
                module._keeps_timm_init = True
        else:
            # A PreTrainedModel: post_init (its own, and then ours, which hands its modules to its
            # `_init_weights`) initialises it the way transformers does, untouched by GFL's schemes.
            self.backbone = GFLTransformersBackbone(config)
        # The config counts the levels where it can; a backbone config without out_indices is counted only here.
        if len(self.backbone.channels) > config.num_fpn_levels:
            raise ValueError(
                f"GFLConfig.num_fpn_levels ({config.num_fpn_levels}) must be at least the number of backbone "
                f"levels ({len(self.backbone.channels)})."
            )
        self.neck = GFLFeaturePyramidNetwork(
            in_channels=self.backbone.channels, out_channels=config.fpn_channels, num_levels=config.num_fpn_levels
        )
        extra_levels = config.num_fpn_levels - len(self.backbone.strides)
        self.strides: list[int] = self.backbone.strides + [
            self.backbone.strides[-1] * 2 ** (i + 1) for i in range(extra_levels)
        ]
        if initialise:
            self.post_init()
            if _loads_pretrained_backbone_now(self):
                self.load_pretrained_backbone()

    def load_pretrained_backbone(self) -> None:
        """Load the backbone's pretrained weights (after `post_init`, so they are kept): timm's for a timm
        backbone, those of the checkpoint `config.pretrained_backbone_checkpoint` names for a transformers one."""
        if self.config.backbone_config is None:
            pretrained = timm.create_model(
                self.config.backbone,
                pretrained=True,
                features_only=True,
                out_indices=tuple(self.config.backbone_out_indices),
                **(self.config.backbone_kwargs or {}),
            )
        else:
            # The backbone's own class: AutoBackbone.from_pretrained asks the Hub whether the name is a repository
            # (and takes it for a timm model if not), which a local folder must not need.
            backbone_class = MODEL_FOR_BACKBONE_MAPPING[type(self.config.backbone_config)]
            pretrained = backbone_class.from_pretrained(
                self.config.pretrained_backbone_checkpoint, config=self.config.backbone_config
            )
        self.backbone.body.load_state_dict(pretrained.state_dict(), strict=True)

    def forward(
        self,
        pixel_values: torch.FloatTensor,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
    ) -> GFLModelOutput | tuple:
        r"""
        Args:
            pixel_values (`torch.FloatTensor` of shape `(B, 3, H, W)`):
                Normalised images.
            output_hidden_states (`bool`, *optional*):
                Also return the backbone's feature maps as `hidden_states`.
        """
        return_dict = return_dict if return_dict is not None else self.config.return_dict
        if output_hidden_states is None:
            output_hidden_states = self.config.output_hidden_states
        backbone_features = self.backbone(pixel_values)
        output = GFLModelOutput(
            fpn_features=tuple(self.neck(backbone_features)),
            hidden_states=tuple(backbone_features) if output_hidden_states else None,
        )
        return output if return_dict else output.to_tuple()


def _loads_pretrained_backbone_now(model: GFLPreTrainedModel) -> bool:
    """Whether a new model loads its pretrained backbone now: when its config asks, unless from_pretrained is
    building it on the meta device (it loads the checkpoint afterwards)."""
    return model.config.use_pretrained_backbone and next(model.parameters()).device.type != "meta"


def _move_base_model_keys(module, state_dict, prefix, *args) -> None:
    """Before `load_state_dict`: the keys of a checkpoint saved in the original layout (`backbone.*`, `neck.*`,
    as `save_pretrained` still writes them) moved under `model.`, where `GFLModel` holds them. transformers'
    `from_pretrained` renames them itself (the conversion mapping below); `Trainer` resumes through a plain
    `load_state_dict`, which would otherwise load nothing into the base model."""
    for key in [key for key in state_dict if key.startswith((prefix + "backbone.", prefix + "neck."))]:
        state_dict[prefix + "model." + key[len(prefix) :]] = state_dict.pop(key)


class GFLForObjectDetection(GFLPreTrainedModel):
    """GFL detector with a timm backbone, or a transformers one (`config.backbone_config`).

    Example:

    ```python
    >>> import torch
    >>> from liaf_hf import GFLConfig, GFLForObjectDetection
    >>> model = GFLForObjectDetection(GFLConfig(backbone="resnet18", id2label={0: "a", 1: "b"}))
    >>> labels = [{"class_labels": torch.tensor([1]), "boxes": torch.tensor([[0.5, 0.5, 0.2, 0.3]])}]
    >>> out = model(pixel_values=torch.randn(1, 3, 128, 128), labels=labels)
    >>> sorted(out.loss_dict)
    ['loss_dfl', 'loss_giou', 'loss_qfl']
    ```
    """

    def __init__(self, config: GFLConfig) -> None:
        super().__init__(config)
        self.model = GFLModel(config, initialise=False)
        self.head = GFLHead(
            in_channels=config.fpn_channels,
            channels=config.head_channels,
            num_classes=config.num_labels,
            stacked_convs=config.head_stacked_convs,
            norm_groups=config.head_norm_groups,
            reg_max=config.reg_max,
            num_levels=config.num_fpn_levels,
        )
        self.strides: list[int] = self.model.strides
        self.loss_function = GFLLoss(config)
        self._register_load_state_dict_pre_hook(_move_base_model_keys, with_module=True)
        self.post_init()
        if _loads_pretrained_backbone_now(self):
            self.load_pretrained_backbone()

    @property
    def backbone(self) -> nn.Module:
        """The backbone (`model.backbone`)."""
        return self.model.backbone

    @property
    def neck(self) -> GFLFeaturePyramidNetwork:
        """The feature pyramid (`model.neck`)."""
        return self.model.neck

    def load_pretrained_backbone(self) -> None:
        """Load the backbone's pretrained weights (`GFLModel.load_pretrained_backbone`)."""
        self.model.load_pretrained_backbone()

    # ---------------------------------------------------------------------------------------- forward

    def forward(
        self,
        pixel_values: torch.FloatTensor,
        pixel_mask: torch.LongTensor | None = None,
        labels: list[dict] | GFLTargets | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        output_instance_losses: bool = False,
    ) -> GFLObjectDetectionOutput | tuple:
        r"""
        Args:
            pixel_values (`torch.FloatTensor` of shape `(B, 3, H, W)`):
                Normalised images, padded at the bottom and right.
            pixel_mask (`torch.LongTensor` of shape `(B, H, W)`, *optional*):
                1 for real pixels, 0 for padding. Without it, each image's unpadded size is its label's `size`
                when `labels` carry one (as `GFLImageProcessor`'s do), else every pixel is real.
            labels (`list[dict]`, *optional*):
                One dict per image: `class_labels` (LongTensor `(n,)`), `boxes` (FloatTensor `(n, 4)`,
                normalised cxcywh relative to the unpadded image), optionally `ignore_boxes` (FloatTensor
                `(k, 4)`, same units): regions (crowds, DontCare) that are neither positives nor negatives,
                and `size` (the unpadded (height, width)). Or the `GFLTargets` that `prepare_targets` made of
                them for this batch.
            output_hidden_states (`bool`, *optional*):
                Also return the backbone's feature maps as `hidden_states`.
            output_instance_losses (`bool`, *optional*, defaults to `False`):
                With `labels`, also return each instance's own loss and quality (`instance_losses`,
                `instance_quality`), e.g. for distillation methods that weigh instances by them.
        """
        return_dict = return_dict if return_dict is not None else self.config.return_dict
        if output_hidden_states is None:
            output_hidden_states = self.config.output_hidden_states
        valid_sizes, labels = self._checked_inputs(pixel_values, pixel_mask, labels)
        base_output = self.model(pixel_values, output_hidden_states=output_hidden_states, return_dict=True)
        fpn_features = list(base_output.fpn_features)
        class_logits, box_distributions = self.head(fpn_features)
        anchor_points, anchor_strides, _ = self._anchor_points(fpn_features)

        flat_logits = torch.cat([logit.flatten(2).transpose(1, 2) for logit in class_logits], dim=1)
        flat_distributions = torch.cat(
            [dist.flatten(2).transpose(1, 2) for dist in box_distributions], dim=1
        )  # (B, A, 4 * (R + 1))
        boxes_xyxy = self._decode_boxes(flat_distributions, anchor_points, anchor_strides)  # (B, A, 4)

        scale = valid_sizes.flip(-1).repeat(1, 2)[:, None, :].to(boxes_xyxy.dtype)  # (B, 1, 4) as (w, h, w, h)
        pred_boxes = box_xyxy_to_cxcywh((boxes_xyxy / scale).clamp(0.0, 1.0))

        loss, loss_dict, positive_mask, instance_terms = None, None, None, (None, None)
        if labels is not None:
            computed = self.loss_function(
                flat_logits=flat_logits,
                flat_distributions=flat_distributions,
                boxes_xyxy=boxes_xyxy,
                anchor_points=anchor_points,
                anchor_strides=anchor_strides,
                num_anchors_per_level=[f.shape[-2] * f.shape[-1] for f in fpn_features],
                valid_sizes=valid_sizes,
                targets=self._targets(labels, valid_sizes),
                output_instance_terms=output_instance_losses,
            )
            loss_dict, positive_mask = computed.losses, computed.positive_mask
            loss = sum(loss_dict.values())
            instance_terms = (computed.instance_losses, computed.instance_quality)

        output = GFLObjectDetectionOutput(
            loss=loss,
            loss_dict=loss_dict,
            logits=flat_logits,
            pred_boxes=pred_boxes,
            fpn_features=tuple(fpn_features),
            class_logits=tuple(class_logits),
            box_distributions=tuple(box_distributions),
            positive_mask=positive_mask,
            instance_losses=instance_terms[0],
            instance_quality=instance_terms[1],
            hidden_states=base_output.hidden_states,
        )
        if not return_dict:
            return output.to_tuple()
        return output

    def _checked_inputs(
        self, pixel_values: torch.Tensor, pixel_mask: torch.Tensor | None, labels: list[dict] | GFLTargets | None
    ) -> tuple[torch.Tensor, GFLTargets | None]:
        """The (B, 2) valid sizes and the prepared targets of `forward`'s arguments, after checking the labels
        and the pixels (NaN or inf pixels would give NaN logits and no detection, or a NaN loss, without a word)
        before any compute, in one wait for the device."""
        if isinstance(labels, GFLTargets):
            if labels.valid_sizes.shape[0] != pixel_values.shape[0]:
                raise ValueError(
                    f"The prepared targets describe {labels.valid_sizes.shape[0]} images but pixel_values holds "
                    f"{pixel_values.shape[0]}."
                )
            valid_sizes = labels.valid_sizes
        else:
            valid_sizes = self.valid_sizes(pixel_values, pixel_mask, labels)  # (B, 2) as (height, width)
            if labels is not None:
                labels = self.prepare_targets(labels, pixel_values, pixel_mask, valid_sizes=valid_sizes)
        if _pixels_need_check(pixel_values):
            if not bool(torch.isfinite(pixel_values).all()):
                _raise_for_nonfinite_pixels(pixel_values)
            _mark_pixels_finite(pixel_values)
        return valid_sizes, labels

    def forward_features(self, pixel_values: torch.FloatTensor) -> list[torch.Tensor]:
        """The backbone and the FPN alone (no head, no decoding): one `(B, F, H_l, W_l)` map per level,
        finest first, the `fpn_features` of `forward`'s output. What feature distillation needs of a teacher.

        Args:
            pixel_values: `(B, 3, H, W)` normalised images.
        """
        return list(self.model(pixel_values, output_hidden_states=False, return_dict=True).fpn_features)

    @staticmethod
    def valid_sizes(
        pixel_values: torch.Tensor, pixel_mask: torch.Tensor | None, labels: list[dict] | None = None
    ) -> torch.Tensor:
        """(B, 2) height and width of each image's unpadded region (images sit at the top left).

        From `pixel_mask` when it is given; else from each label's `size` (what `GFLImageProcessor` returns:
        the resized, unpadded size), so that a collator that drops the mask, as transformers' object-detection
        example does, still gives the targets their own images' sizes; else every pixel is real.
        """
        batch_size, _, height, width = pixel_values.shape
        if pixel_mask is not None:
            mask = pixel_mask.bool()
            return torch.stack([mask[:, :, 0].sum(dim=1), mask[:, 0, :].sum(dim=1)], dim=1).float()
        if labels is not None and len(labels) == batch_size and all("size" in label for label in labels):
            sizes = [[int(v) for v in torch.as_tensor(label["size"]).reshape(-1)[-2:].tolist()] for label in labels]
            for index, (image_height, image_width) in enumerate(sizes):
                if not (0 < image_height <= height and 0 < image_width <= width):
                    raise ValueError(
                        f"labels[{index}]['size'] is {image_height}x{image_width}, which does not fit the "
                        f"{height}x{width} pixel_values: it must be the image's resized, unpadded (height, width)."
                    )
            return host_tensor(sizes, dtype=torch.float32, device=pixel_values.device)
        return host_tensor([[height, width]], dtype=torch.float32, device=pixel_values.device).expand(batch_size, 2)

    def _anchor_points(
        self, fpn_features: list[torch.Tensor]
    ) -> tuple[torch.Tensor, torch.Tensor, list[tuple[int, int]]]:
        """Centres of every level's grid cells in input pixels: (A, 2) as (x, y), their strides (A,), and
        each level's (H_l, W_l). Kept per input shape and device: they depend on nothing else, and building
        them costs a few kernel launches per level on every forward (read-only: callers must not modify
        them in place)."""
        key = (tuple(tuple(feature.shape[-2:]) for feature in fpn_features), fpn_features[0].device)
        cache = self.__dict__.setdefault("_anchor_point_cache", {})
        if key not in cache:
            if len(cache) >= 16:  # many input sizes (multi-scale training): keep the memory bounded
                cache.clear()
            cache[key] = self._build_anchor_points(fpn_features)
        return cache[key]

    def _build_anchor_points(
        self, fpn_features: list[torch.Tensor]
    ) -> tuple[torch.Tensor, torch.Tensor, list[tuple[int, int]]]:
        points, strides, shapes = [], [], []
        for feature, stride in zip(fpn_features, self.strides):
            height, width = feature.shape[-2:]
            ys = (torch.arange(height, device=feature.device, dtype=torch.float32) + 0.5) * stride
            xs = (torch.arange(width, device=feature.device, dtype=torch.float32) + 0.5) * stride
            grid_y, grid_x = torch.meshgrid(ys, xs, indexing="ij")
            points.append(torch.stack([grid_x.reshape(-1), grid_y.reshape(-1)], dim=1))
            strides.append(torch.full((height * width,), float(stride), device=feature.device))
            shapes.append((height, width))
        return torch.cat(points), torch.cat(strides), shapes

    def _expected_distances(self, distributions: torch.Tensor) -> torch.Tensor:
        """(..., 4 * (R + 1)) distribution logits -> (..., 4) expected distances in bins (stride units)."""
        probs = distributions.float().reshape(*distributions.shape[:-1], 4, self.config.reg_max + 1).softmax(-1)
        # Built here rather than kept as a buffer: from_pretrained leaves non-persistent buffers uninitialised.
        bins = torch.arange(self.config.reg_max + 1, device=probs.device, dtype=probs.dtype)
        return probs @ bins

    def _decode_boxes(
        self, distributions: torch.Tensor, anchor_points: torch.Tensor, anchor_strides: torch.Tensor
    ) -> torch.Tensor:
        """(B, A, 4 * (R + 1)) logits -> (B, A, 4) boxes, xyxy in input pixels."""
        distances = self._expected_distances(distributions) * anchor_strides[None, :, None]
        return torch.cat([anchor_points[None] - distances[..., :2], anchor_points[None] + distances[..., 2:]], dim=-1)

    # ------------------------------------------------------------------------------------------- loss

    def prepare_targets(
        self,
        labels: list[dict],
        pixel_values: torch.Tensor,
        pixel_mask: torch.Tensor | None = None,
        *,
        valid_sizes: torch.Tensor | None = None,
    ) -> GFLTargets:
        """`labels` (the `forward` argument) checked and converted once for the batch of `pixel_values`
        (and `pixel_mask`); pass the result as `labels` to share the conversion between several calls.
        `pixel_values` is checked for NaN and inf in the same wait for the device as the labels.

        Args:
            valid_sizes: (B, 2) what `valid_sizes` gives for this batch, when the caller has it already.
        """
        if valid_sizes is None:
            valid_sizes = self.valid_sizes(pixel_values, pixel_mask, labels)
        instances = self.labels_in_pixels(labels, valid_sizes, pixel_values)
        return GFLTargets(valid_sizes=valid_sizes, instances=instances)

    def _targets(self, labels: list[dict] | GFLTargets, valid_sizes: torch.Tensor) -> list[tuple]:
        """Per image (classes, boxes in pixels, ignore boxes), converted unless `labels` already are."""
        if isinstance(labels, GFLTargets):
            return labels.instances
        return self.labels_in_pixels(labels, valid_sizes)

    def labels_in_pixels(
        self, labels: list[dict], valid_sizes: torch.Tensor, pixel_values: torch.Tensor | None = None
    ) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]]:
        """Check each image's labels and convert their boxes to xyxy input pixels.

        The values are checked and converted for the whole batch at once: a check per image would stop a GPU
        once per image (each `if tensor` waits for it), and a conversion per image costs a few kernel
        launches per image. With `pixel_values` (B, 3, H, W), the images are checked for NaN and inf in the
        same wait.

        Returns:
            per image `(class_labels (n,), boxes (n, 4) xyxy pixels, ignore_boxes (m, 4) xyxy pixels or None)`.
        """
        num_classes = self.config.num_labels
        device = valid_sizes.device
        if len(labels) != valid_sizes.shape[0]:
            raise ValueError(f"Got {len(labels)} label dicts for a batch of {valid_sizes.shape[0]} images.")
        class_list, box_list, ignore_list = [], [], []
        for index, target in enumerate(labels):
            if "class_labels" not in target or "boxes" not in target:
                raise ValueError(
                    f"labels[{index}] needs 'class_labels' and 'boxes' (normalised cxcywh); got keys {sorted(target)}."
                )
            class_labels = torch.as_tensor(target["class_labels"], device=device).long().reshape(-1)
            boxes = torch.as_tensor(target["boxes"], device=device).float().reshape(-1, 4)
            if class_labels.shape[0] != boxes.shape[0]:
                raise ValueError(
                    f"labels[{index}] has {class_labels.shape[0]} class_labels but {boxes.shape[0]} boxes."
                )
            ignore = target.get("ignore_boxes")
            class_list.append(class_labels)
            box_list.append(boxes)
            if ignore is not None:
                ignore = torch.as_tensor(ignore, device=device).float().reshape(-1, 4)
            ignore_list.append(ignore)
        all_classes, all_boxes = torch.cat(class_list), torch.cat(box_list)
        faults = []
        if all_classes.numel():
            bad = (all_classes < 0) | (all_classes >= num_classes) | ~torch.isfinite(all_boxes).all(dim=1)
            faults.append(bad.any())
        check_pixels = pixel_values is not None and _pixels_need_check(pixel_values)
        if check_pixels:
            faults.append(~torch.isfinite(pixel_values).all())
        if faults and bool(torch.stack(faults).any()):  # the batch's only wait for the device
            if check_pixels and not bool(torch.isfinite(pixel_values).all()):
                _raise_for_nonfinite_pixels(pixel_values)
            self._raise_for_bad_labels(class_list, box_list)
        if check_pixels:
            _mark_pixels_finite(pixel_values)
        scales = valid_sizes.float().flip(1).repeat(1, 2)  # (B, 4): (w, h, w, h)
        boxes = _to_pixels(all_boxes, [len(b) for b in box_list], scales)
        given = [index for index, ignore in enumerate(ignore_list) if ignore is not None]
        ignores: list[torch.Tensor | None] = [None] * len(labels)
        if given:
            converted = _to_pixels(
                torch.cat([ignore_list[i] for i in given]), [len(ignore_list[i]) for i in given], scales[given]
            )
            for index, ignore in zip(given, converted):
                ignores[index] = ignore
        return list(zip(class_list, boxes, ignores))

    def _raise_for_bad_labels(self, class_list: list[torch.Tensor], box_list: list[torch.Tensor]) -> None:
        """Name the first image whose class labels or boxes are unusable (only called when one is)."""
        num_classes = self.config.num_labels
        for index, (class_labels, boxes) in enumerate(zip(class_list, box_list)):
            if class_labels.numel() and (class_labels.min() < 0 or class_labels.max() >= num_classes):
                bad = class_labels[(class_labels < 0) | (class_labels >= num_classes)].unique().tolist()
                raise ValueError(
                    f"labels[{index}] has class label(s) {bad}, outside this model's {num_classes} classes "
                    f"(config.id2label = {self.config.id2label})."
                )
            if not torch.isfinite(boxes).all():
                raise ValueError(f"labels[{index}]['boxes'] contains NaN or infinite values.")

    def positive_anchor_mask(
        self, fpn_features: Sequence[torch.Tensor], valid_sizes: torch.Tensor, labels: list[dict] | GFLTargets
    ) -> torch.Tensor:
        """The anchors that ATSS makes positive for `labels`: the locations the training loss regresses
        boxes from, assigned exactly as the loss (`loss_function`) assigns them (e.g. for localization distillation).

        Args:
            fpn_features: the batch's FPN maps, finest first, `(B, F, H_l, W_l)` each; only their sizes and
                device are used.
            valid_sizes: (B, 2) unpadded (height, width) per image, as `valid_sizes` returns.
            labels: the `labels` argument of `forward` (boxes normalised cxcywh, or prepared `GFLTargets`).

        Returns:
            (B, A) bool, True at positive anchors; anchors in the order of `GFLObjectDetectionOutput.logits`
            (levels finest first, each level's cells row by row).
        """
        anchor_points, anchor_strides, shapes = self._anchor_points(list(fpn_features))
        assignments = self.loss_function.assign_anchors(
            anchor_points=anchor_points,
            anchor_strides=anchor_strides,
            num_anchors_per_level=[height * width for height, width in shapes],
            valid_sizes=valid_sizes,
            targets=self._targets(labels, valid_sizes),
        )
        return assignments.gt_index >= 0


__all__ = [
    "GFLFeaturePyramidNetwork",
    "GFLForObjectDetection",
    "GFLHead",
    "GFLObjectDetectionOutput",
    "GFLPreTrainedModel",
    "GFLScale",
    "GFLTargets",
    "GFLTimmBackbone",
    "GFLTransformersBackbone",
]


# Saved checkpoints keep the layout from before `GFLModel` (`backbone.*`, `neck.*`, `head.*`): from_pretrained
# moves the base model's keys under `model.`, and save_pretrained moves them back.
register_checkpoint_conversion_mapping(
    "GFLForObjectDetection",
    [WeightRenaming(r"^backbone\.", "model.backbone."), WeightRenaming(r"^neck\.", "model.neck.")],
    overwrite=True,
)
