"""Configuration of the GFL (Generalized Focal Loss) detector.

The backbone is named the way transformers' detectors name theirs (`backbone_config`, `backbone`,
`use_timm_backbone`, `use_pretrained_backbone`, `backbone_kwargs`): a timm model by default, or any
transformers backbone (a config `AutoBackbone` can build) given as `backbone_config`.
"""

import timm
from transformers import AutoConfig, PreTrainedConfig
from transformers.configuration_utils import SubConfigSpec
from transformers.models.auto.configuration_auto import CONFIG_MAPPING
from transformers.models.auto.modeling_auto import MODEL_FOR_BACKBONE_MAPPING

#: The timm levels that feed the FPN unless `backbone_out_indices` says otherwise.
DEFAULT_TIMM_OUT_INDICES = (-3, -2, -1)


class GFLConfig(PreTrainedConfig):
    r"""
    Configuration of a [`GFLForObjectDetection`]: a backbone, an FPN and the GFL head of
    "Generalized Focal Loss" (Li et al., NeurIPS 2020), trained with ATSS assignment.

    The defaults are those of the published GFL (mmdetection's `gfl_r50_fpn_1x_coco`): a ResNet-50, five FPN
    outputs P3-P7 of 256 channels, a head of four 3x3 convs with GroupNorm per branch, `reg_max` 16, ATSS top-k
    9, loss weights QFL 1, DFL 0.25, GIoU 2, and test settings score 0.05, NMS IoU 0.6, 100 detections.

    The backbone is a timm model in `features_only` mode (`backbone`, `backbone_out_indices`,
    `backbone_kwargs`) unless `backbone_config` (or `use_timm_backbone=False`) asks for a transformers
    backbone, which transformers' `load_backbone` builds and whose `feature_maps` feed the FPN.

    Args:
        backbone_config (`PreTrainedConfig` or `dict`, *optional*):
            Config of a transformers backbone, any model type `AutoBackbone` builds (`ResNetConfig`,
            `ConvNextConfig`, `SwinConfig`, `TimmBackboneConfig`, ...); a dict needs its `model_type`. Its
            `out_features` / `out_indices` choose the maps that feed the FPN, finest first. Setting it sets
            `use_timm_backbone` to `False`. Without it the backbone is the timm model `backbone`.
        backbone (`str`, *optional*):
            With a timm backbone (the default), the name of a timm model that supports `features_only=True`
            (ResNet, MobileNet, EfficientNet, ConvNeXt, ...), built with `timm.create_model`, never through the
            Hub; `"resnet50"` when not given. With `use_timm_backbone=False`, a transformers checkpoint (Hub id
            or folder): without `backbone_config` its config becomes `backbone_config` (updated with
            `backbone_kwargs`), and `use_pretrained_backbone` loads its weights. A timm name beside a
            `backbone_config` is refused.
        use_timm_backbone (`bool`, defaults to `True`):
            Whether `backbone` names a timm model. `False` with a `backbone_config`.
        use_pretrained_backbone (`bool`, defaults to `False`):
            Load pretrained weights into the backbone when the model is built from this config (not when it is
            loaded from a checkpoint, which carries its own weights): timm's weights of `backbone`, or those of
            the transformers checkpoint `backbone` (for a `TimmBackboneConfig`, timm's weights of the model it
            names). Needs the network unless the weights are local (a checkpoint folder, or for timm
            `backbone_kwargs={"pretrained_cfg_overlay": {"file": "/path/weights.safetensors"}}`).
            `backbone_pretrained`, its name before the backbone API, is accepted as an alias, in
            `config.json`, as a keyword and as an attribute.
        backbone_out_indices (`tuple[int, ...]`, defaults to `(-3, -2, -1)`):
            Which of a timm backbone's feature levels feed the FPN. The default, the last three, gives
            strides 8, 16 and 32 for every common timm family. A transformers backbone takes them from
            `backbone_config` instead, so another value beside it is refused.
        backbone_kwargs (`dict`, *optional*):
            Extra keyword arguments for `timm.create_model` (e.g. `drop_path_rate`); with
            `use_timm_backbone=False` and no `backbone_config`, overrides of the checkpoint's config (e.g.
            `{"out_features": ["stage2", "stage3", "stage4"]}`), folded into `backbone_config` (and then
            cleared). Refused beside a `backbone_config`.
        fpn_channels (`int`, defaults to 256):
            Width of every FPN output.
        num_fpn_levels (`int`, defaults to 5):
            Number of FPN outputs. Levels beyond the backbone's are made by stride-2 3x3 convs on the last
            FPN output (mmdetection's `add_extra_convs="on_output"`).
        head_channels (`int`, defaults to 256):
            Width of the head's stacked convs.
        head_stacked_convs (`int`, defaults to 4):
            Number of 3x3 conv + GroupNorm + ReLU blocks in each of the classification and box branches.
        head_norm_groups (`int`, defaults to 32):
            GroupNorm groups in the head; must divide `head_channels`.
        reg_max (`int`, defaults to 16):
            Each box edge is predicted as a distribution over the distances 0..reg_max (in units of the
            level's stride).
        anchor_scale (`float`, defaults to 8.0):
            Size of the square anchor ATSS uses on each level, in units of the level's stride.
        atss_topk (`int`, defaults to 9):
            Candidates per level and ground-truth box in ATSS assignment.
        ignore_iof_threshold (`float`, defaults to 0.5):
            Anchors whose box overlaps an ignore region (COCO crowd, KITTI DontCare) by more than this share of
            the anchor's own area are neither positives nor negatives.
        prior_prob (`float`, defaults to 0.01):
            Initial foreground probability of the classification branch.
        qfl_beta (`float`, defaults to 2.0):
            Focusing exponent of the Quality Focal Loss.
        loss_qfl_weight (`float`, defaults to 1.0):
            Weight of the Quality Focal Loss.
        loss_dfl_weight (`float`, defaults to 0.25):
            Weight of the Distribution Focal Loss.
        loss_giou_weight (`float`, defaults to 2.0):
            Weight of the GIoU loss.
        score_threshold (`float`, defaults to 0.05):
            Detections scoring below this are dropped before NMS.
        nms_iou_threshold (`float`, defaults to 0.6):
            IoU above which class-aware NMS suppresses the lower-scoring box.
        pre_nms_top_k (`int`, defaults to 1000):
            Highest-scoring candidates per level kept before NMS.
        max_detections (`int`, defaults to 100):
            Detections kept per image after NMS.

    Example:

    ```python
    >>> from liaf_hf import GFLConfig, GFLForObjectDetection
    >>> config = GFLConfig(backbone="resnet18", id2label={0: "circle", 1: "square"})
    >>> model = GFLForObjectDetection(config)
    >>> from transformers import ResNetConfig
    >>> resnet = ResNetConfig(layer_type="basic", depths=[2, 2, 2, 2], hidden_sizes=[64, 128, 256, 512],
    ...                       out_features=["stage2", "stage3", "stage4"])
    >>> model = GFLForObjectDetection(GFLConfig(backbone_config=resnet, id2label={0: "circle", 1: "square"}))
    >>> model.backbone.channels, model.strides
    ([128, 256, 512], [8, 16, 32, 64, 128])
    ```
    """

    model_type = "gfl"
    # What Trainer's evaluation drops from the outputs it gathers (Trainer reads it from the config): the
    # dense maps are large (tens of MB an image at COCO size) and no metric reads them; `loss_dict`, `logits`
    # and `pred_boxes` stay, in that order.
    keys_to_ignore_at_inference = [
        "fpn_features",
        "class_logits",
        "box_distributions",
        "positive_mask",
        "instance_losses",
        "instance_quality",
        "hidden_states",
    ]
    sub_configs_defaults = {
        "backbone_config": SubConfigSpec(config_class=AutoConfig, model_type="resnet", optional=True),
    }
    attribute_map = {"backbone_pretrained": "use_pretrained_backbone"}

    backbone_config: dict | PreTrainedConfig | None = None
    backbone: str | None = None
    use_timm_backbone: bool = True
    use_pretrained_backbone: bool = False
    backbone_out_indices: list[int] | tuple[int, ...] = DEFAULT_TIMM_OUT_INDICES
    backbone_kwargs: dict | None = None
    fpn_channels: int = 256
    num_fpn_levels: int = 5
    head_channels: int = 256
    head_stacked_convs: int = 4
    head_norm_groups: int = 32
    reg_max: int = 16
    anchor_scale: float = 8.0
    atss_topk: int = 9
    ignore_iof_threshold: float = 0.5
    prior_prob: float = 0.01
    qfl_beta: float = 2.0
    loss_qfl_weight: float = 1.0
    loss_dfl_weight: float = 0.25
    loss_giou_weight: float = 2.0
    score_threshold: float = 0.05
    nms_iou_threshold: float = 0.6
    pre_nms_top_k: int = 1000
    max_detections: int = 100

    def __post_init__(self, **kwargs):
        if isinstance(self.backbone_config, dict) and self.backbone_config.get("model_type") not in CONFIG_MAPPING:
            raise ValueError(
                f"GFLConfig.backbone_config has model_type={self.backbone_config.get('model_type')!r}, which is no "
                "transformers model type; a dict needs the model_type of a backbone (e.g. 'resnet')."
            )
        # Also maps the old `backbone_pretrained` key or keyword onto `use_pretrained_backbone` (attribute_map).
        super().__post_init__(**kwargs)
        if self.num_labels < 1:
            raise ValueError(
                f"GFLConfig has no classes (id2label={self.id2label}): a detector needs at least one; pass "
                "id2label={0: 'name', ...}, e.g. the label maps of the training set (liaf_hf.data.label_maps)."
            )
        self.backbone_out_indices = tuple(self.backbone_out_indices)
        if self.backbone_config is None and not self.use_timm_backbone:
            self._backbone_config_from_checkpoint()
        if self.backbone_config is None:
            self._check_timm_backbone()
        else:
            self._check_transformers_backbone()
        if self.head_channels % self.head_norm_groups != 0:
            raise ValueError(
                f"GFLConfig.head_norm_groups ({self.head_norm_groups}) must divide head_channels "
                f"({self.head_channels})."
            )
        if self.reg_max < 1:
            raise ValueError(f"GFLConfig.reg_max must be at least 1, got {self.reg_max}.")

    def _backbone_config_from_checkpoint(self) -> None:
        if self.backbone is None:
            raise ValueError(
                "GFLConfig.use_timm_backbone=False needs a backbone_config, or a backbone naming a transformers "
                "checkpoint."
            )
        try:
            self.backbone_config = AutoConfig.from_pretrained(self.backbone, **(self.backbone_kwargs or {}))
        except (OSError, ValueError) as error:
            raise ValueError(
                f"GFLConfig.backbone={self.backbone!r} (with use_timm_backbone=False) names no transformers "
                f"checkpoint whose config could be read: {error}"
            ) from error
        # Folded into backbone_config; kept, they would be applied twice and refused on reload.
        self.backbone_kwargs = None

    def _check_timm_backbone(self) -> None:
        if self.backbone is None:
            self.backbone = "resnet50"
        # Names with a source prefix (hf-hub:, local-dir:) point at files that timm reads when building.
        if ":" not in self.backbone and not timm.is_model(self.backbone):
            raise ValueError(
                f"GFLConfig.backbone={self.backbone!r} is not a timm model name. For a transformers backbone pass "
                "backbone_config=..., or use_timm_backbone=False with backbone naming a transformers checkpoint."
            )
        if len(self.backbone_out_indices) < 1:
            raise ValueError("GFLConfig.backbone_out_indices must name at least one timm feature level.")
        self._check_fpn_levels(len(self.backbone_out_indices))

    def _check_transformers_backbone(self) -> None:
        model_type = self.backbone_config.model_type
        if self.use_timm_backbone and self.backbone is not None:
            raise ValueError(
                f"GFLConfig got both backbone_config (model_type {model_type!r}) and the timm backbone="
                f"{self.backbone!r}; pass one of them (a checkpoint name for use_pretrained_backbone goes with "
                "use_timm_backbone=False)."
            )
        self.use_timm_backbone = False
        if type(self.backbone_config) not in MODEL_FOR_BACKBONE_MAPPING:
            raise ValueError(
                f"GFLConfig.backbone_config has model_type {model_type!r}, which AutoBackbone cannot build; give "
                "the config of a backbone (resnet, convnext, swin, timm_backbone, ...)."
            )
        if self.backbone_kwargs:
            raise ValueError(
                f"GFLConfig.backbone_kwargs={self.backbone_kwargs!r} cannot go with a backbone_config: set those "
                "fields in backbone_config."
            )
        if self.backbone_out_indices != DEFAULT_TIMM_OUT_INDICES:
            raise ValueError(
                f"GFLConfig.backbone_out_indices={self.backbone_out_indices} picks timm levels; with a "
                "backbone_config, choose the levels with its out_features or out_indices."
            )
        if self.use_pretrained_backbone and self.pretrained_backbone_checkpoint is None:
            raise ValueError(
                "GFLConfig.use_pretrained_backbone=True with a backbone_config needs backbone naming the "
                "transformers checkpoint whose weights to load."
            )
        out_indices = getattr(self.backbone_config, "out_indices", None)
        if out_indices is not None:
            self._check_fpn_levels(len(out_indices))

    def _check_fpn_levels(self, backbone_levels: int) -> None:
        if self.num_fpn_levels < backbone_levels:
            raise ValueError(
                f"GFLConfig.num_fpn_levels ({self.num_fpn_levels}) must be at least the number of backbone "
                f"levels ({backbone_levels})."
            )

    @property
    def pretrained_backbone_checkpoint(self) -> str | None:
        """Where `use_pretrained_backbone` takes a transformers backbone's weights from: `backbone`, or for a
        `TimmBackboneConfig` the timm model it names; None for a timm backbone or when nothing says."""
        if self.backbone_config is None:
            return None
        return self.backbone or getattr(self.backbone_config, "backbone", None)


__all__ = ["GFLConfig"]
