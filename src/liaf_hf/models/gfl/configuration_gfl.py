"""Configuration of the GFL (Generalized Focal Loss) detector."""

from transformers import PreTrainedConfig


class GFLConfig(PreTrainedConfig):
    r"""
    Configuration of a [`GFLForObjectDetection`]: a timm backbone, an FPN and the GFL head of
    "Generalized Focal Loss" (Li et al., NeurIPS 2020), trained with ATSS assignment.

    The defaults are those of the published GFL (mmdetection's `gfl_r50_fpn_1x_coco`): five FPN outputs
    P3-P7 of 256 channels, a head of four 3x3 convs with GroupNorm per branch, `reg_max` 16, ATSS top-k 9,
    loss weights QFL 1, DFL 0.25, GIoU 2, and test settings score 0.05, NMS IoU 0.6, 100 detections.

    Args:
        backbone (`str`, defaults to `"resnet50"`):
            Name of a timm model that supports `features_only=True` (ResNet, MobileNet, EfficientNet,
            ConvNeXt, ...). The model is built with `timm.create_model`, never through the Hub.
        backbone_out_indices (`tuple[int, ...]`, defaults to `(-3, -2, -1)`):
            Which of timm's feature levels feed the FPN. The default, the last three, gives strides
            8, 16 and 32 for every common timm family.
        backbone_pretrained (`bool`, defaults to `False`):
            Load timm's pretrained weights into the backbone when the model is built from this config
            (not when it is loaded from a checkpoint, which carries its own weights). Needs the network
            unless `backbone_kwargs` points timm at a local file
            (`{"pretrained_cfg_overlay": {"file": "/path/weights.safetensors"}}`).
        backbone_kwargs (`dict`, *optional*):
            Extra keyword arguments for `timm.create_model` (e.g. `drop_path_rate`).
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

    backbone: str = "resnet50"
    backbone_out_indices: list[int] | tuple[int, ...] = (-3, -2, -1)
    backbone_pretrained: bool = False
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
        super().__post_init__(**kwargs)
        self.backbone_out_indices = tuple(self.backbone_out_indices)
        if len(self.backbone_out_indices) < 1:
            raise ValueError("GFLConfig.backbone_out_indices must name at least one timm feature level.")
        if self.num_fpn_levels < len(self.backbone_out_indices):
            raise ValueError(
                f"GFLConfig.num_fpn_levels ({self.num_fpn_levels}) must be at least the number of backbone "
                f"levels ({len(self.backbone_out_indices)})."
            )
        if self.head_channels % self.head_norm_groups != 0:
            raise ValueError(
                f"GFLConfig.head_norm_groups ({self.head_norm_groups}) must divide head_channels "
                f"({self.head_channels})."
            )
        if self.reg_max < 1:
            raise ValueError(f"GFLConfig.reg_max must be at least 1, got {self.reg_max}.")


__all__ = ["GFLConfig"]
