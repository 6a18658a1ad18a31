"""The GFL detector as a transformers model: backbones, outputs, saving, Auto classes, pipeline."""

import json
import math
import os
import re
import subprocess
import sys

import pytest
import timm
import torch
from PIL import Image
from safetensors.torch import load_file, save_file
from transformers import (
    AutoImageProcessor,
    AutoModel,
    AutoModelForObjectDetection,
    BertConfig,
    ResNetBackbone,
    ResNetConfig,
    TimmBackboneConfig,
    pipeline,
)
from transformers.backbone_utils import load_backbone

from liaf_hf import GFLConfig, GFLForObjectDetection, GFLImageProcessor, GFLModel
from tiny import FIXTURES, tiny_detector

ID2LABEL = {0: "circle", 1: "square", 2: "triangle"}


def small_config(**overrides) -> GFLConfig:
    settings = dict(
        backbone="resnet18",
        fpn_channels=32,
        head_channels=32,
        head_stacked_convs=1,
        head_norm_groups=8,
        id2label=ID2LABEL,
    )
    settings.update(overrides)
    return GFLConfig(**settings)


def tiny_resnet_config(**overrides) -> ResNetConfig:
    """A transformers ResNet of one basic block per stage, 16 to 128 channels."""
    settings = dict(
        embedding_size=16,
        hidden_sizes=[16, 32, 64, 128],
        depths=[1, 1, 1, 1],
        layer_type="basic",
        out_features=["stage2", "stage3", "stage4"],
    )
    settings.update(overrides)
    return ResNetConfig(**settings)


def example_labels():
    return [
        {"class_labels": torch.tensor([1, 2]), "boxes": torch.tensor([[0.5, 0.5, 0.4, 0.3], [0.2, 0.3, 0.2, 0.2]])},
        {"class_labels": torch.tensor([], dtype=torch.long), "boxes": torch.zeros(0, 4)},
    ]


@pytest.mark.parametrize("backbone", ["resnet18", "mobilenetv3_small_100", "convnext_atto"])
def test_any_timm_family_trains(backbone):
    model = GFLForObjectDetection(small_config(backbone=backbone))
    assert model.strides == [8, 16, 32, 64, 128]
    out = model(pixel_values=torch.randn(2, 3, 96, 128), labels=example_labels())
    assert set(out.loss_dict) == {"loss_qfl", "loss_dfl", "loss_giou"}
    assert torch.isfinite(out.loss)
    out.loss.backward()
    # 96x128 input: levels of 12x16, 6x8, 3x4, 2x2 and 1x1 cells.
    assert out.logits.shape == (2, 12 * 16 + 6 * 8 + 3 * 4 + 2 * 2 + 1, 3)
    assert out.pred_boxes.shape[:2] == out.logits.shape[:2]
    assert [f.shape[1] for f in out.fpn_features] == [32] * 5
    assert out.box_distributions[0].shape == (2, 4 * 17, 12, 16)
    assert out.class_logits[2].shape == (2, 3, 3, 4)
    assert all(p.grad is not None for p in model.head.parameters())


def test_pred_boxes_are_normalised_to_the_unpadded_image():
    model = GFLForObjectDetection(small_config()).eval()
    mask = torch.zeros(1, 64, 128, dtype=torch.long)
    mask[:, :64, :64] = 1  # the image is the left half; the rest is padding
    with torch.no_grad():
        out = model(pixel_values=torch.randn(1, 3, 64, 128), pixel_mask=mask)
    x1 = out.pred_boxes[..., 0] - out.pred_boxes[..., 2] / 2
    assert out.pred_boxes.min() >= 0 and out.pred_boxes.max() <= 1
    # Anchors in the padding decode beyond x = 1 of the unpadded image and are clamped there.
    assert (x1[0, -1] >= 0).item()


def test_unknown_class_label_is_refused_with_its_value():
    model = GFLForObjectDetection(small_config())
    labels = [{"class_labels": torch.tensor([7]), "boxes": torch.tensor([[0.5, 0.5, 0.2, 0.2]])}]
    with pytest.raises(ValueError, match=r"labels\[0\].*\[7\].*3 classes"):
        model(pixel_values=torch.randn(1, 3, 64, 64), labels=labels)
    # The batch is checked at once; the message still names the image at fault.
    labels = example_labels() + [{"class_labels": torch.tensor([0, -1]), "boxes": torch.full((2, 4), 0.2)}]
    with pytest.raises(ValueError, match=r"labels\[2\].*\[-1\]"):
        model(pixel_values=torch.randn(3, 3, 64, 64), labels=labels)
    nan_box = torch.tensor([[0.5, math.nan, 0.2, 0.2]])
    labels = example_labels() + [{"class_labels": torch.tensor([0]), "boxes": nan_box}]
    with pytest.raises(ValueError, match=r"labels\[2\]\['boxes'\] contains NaN"):
        model(pixel_values=torch.randn(3, 3, 64, 64), labels=labels)


def test_assignment_in_chunks_of_images_matches_one_pass(monkeypatch):
    """Large batches are assigned a few images at a time to bound memory; that must not change the result."""
    from liaf_hf.models.gfl import loss_gfl

    torch.manual_seed(0)
    model = GFLForObjectDetection(small_config()).train()
    labels = example_labels() + [
        {
            "class_labels": torch.tensor([0, 2, 1]),
            "boxes": torch.tensor([[0.3, 0.3, 0.3, 0.4], [0.7, 0.6, 0.4, 0.3], [0.5, 0.5, 0.1, 0.1]]),
            "ignore_boxes": torch.tensor([[0.8, 0.2, 0.3, 0.3]]),
        }
    ]
    pixels = torch.randn(3, 3, 64, 96)
    mask = torch.ones(3, 64, 96, dtype=torch.long)
    mask[1, :, 64:] = 0  # the second image is narrower
    with torch.no_grad():
        one_pass = model(pixel_values=pixels, pixel_mask=mask, labels=labels)
        sizes = model.valid_sizes(pixels, mask)
        positives = model.positive_anchor_mask(one_pass.fpn_features, sizes, labels)
        monkeypatch.setattr(loss_gfl, "ASSIGNMENT_CHUNK_ELEMENTS", 1)  # one image per pass
        chunked = model(pixel_values=pixels, pixel_mask=mask, labels=labels)
        chunked_positives = model.positive_anchor_mask(chunked.fpn_features, sizes, labels)
    assert positives[0].any() and positives[2].any() and not positives[1].any()
    assert torch.equal(positives, chunked_positives)
    # The forward reports the loss's own assignment: the same anchors, without assigning them again.
    assert torch.equal(one_pass.positive_mask, positives) and torch.equal(chunked.positive_mask, positives)
    for name, value in one_pass.loss_dict.items():
        assert torch.equal(value, chunked.loss_dict[name]), name


def test_mismatched_labels_are_refused():
    model = GFLForObjectDetection(small_config())
    labels = [{"class_labels": torch.tensor([0, 1]), "boxes": torch.tensor([[0.5, 0.5, 0.2, 0.2]])}]
    with pytest.raises(ValueError, match="2 class_labels but 1 boxes"):
        model(pixel_values=torch.randn(1, 3, 64, 64), labels=labels)


def test_prepared_targets_give_the_same_loss_and_must_fit_the_batch():
    torch.manual_seed(0)
    model = GFLForObjectDetection(small_config())
    pixels = torch.randn(2, 3, 64, 96)
    mask = torch.ones(2, 64, 96, dtype=torch.long)
    mask[1, :, 64:] = 0  # the second image is narrower
    labels = example_labels()
    targets = model.prepare_targets(labels, pixels, mask)
    from_labels = model(pixel_values=pixels, pixel_mask=mask, labels=labels)
    from_targets = model(pixel_values=pixels, pixel_mask=mask, labels=targets)
    for name, value in from_labels.loss_dict.items():
        torch.testing.assert_close(from_targets.loss_dict[name], value)
    torch.testing.assert_close(from_targets.pred_boxes, from_labels.pred_boxes)
    with pytest.raises(ValueError, match="prepared targets describe 2 images but pixel_values holds 3"):
        model(pixel_values=torch.randn(3, 3, 64, 96), labels=targets)
    # Bad labels are refused when the targets are prepared, naming the image as `forward` does.
    bad = labels + [{"class_labels": torch.tensor([5]), "boxes": torch.full((1, 4), 0.2)}]
    with pytest.raises(ValueError, match=r"labels\[2\].*\[5\]"):
        model.prepare_targets(bad, torch.randn(3, 3, 64, 96))


def test_ignore_regions_remove_negatives_from_the_loss():
    torch.manual_seed(0)
    model = GFLForObjectDetection(small_config())
    pixels = torch.randn(1, 3, 64, 64)
    base = [{"class_labels": torch.tensor([0]), "boxes": torch.tensor([[0.3, 0.3, 0.3, 0.3]])}]
    ignored = [dict(base[0], ignore_boxes=torch.tensor([[0.5, 0.5, 1.0, 1.0]]))]
    with torch.no_grad():
        full = model(pixel_values=pixels, labels=base).loss_dict["loss_qfl"]
        without_negatives = model(pixel_values=pixels, labels=ignored).loss_dict["loss_qfl"]
    assert without_negatives < full


def test_box_losses_pull_only_the_positive_anchors():
    """The box losses are computed at every anchor and weighted by 0 off the positives (no host wait to pick
    them): the negatives' box distributions get exactly no gradient, each positive's does, and a batch
    without boxes still reaches every box parameter (multi-process training needs a gradient for each)."""
    torch.manual_seed(0)
    model = GFLForObjectDetection(small_config())
    pixels = torch.randn(2, 3, 64, 96)
    output = model(pixel_values=pixels, labels=example_labels())
    for distributions in output.box_distributions:
        distributions.retain_grad()
    (output.loss_dict["loss_dfl"] + output.loss_dict["loss_giou"]).backward()
    gradient = torch.cat([d.grad.flatten(2).transpose(1, 2) for d in output.box_distributions], dim=1).abs().sum(2)
    positive = output.positive_mask
    assert positive[0].sum() > 0 and not positive[1].any()
    assert torch.all(gradient[~positive] == 0)
    assert torch.all(gradient[positive] > 0)

    model.zero_grad()
    empty = [example_labels()[1]] * 2
    output = model(pixel_values=pixels, labels=empty)
    assert output.loss_dict["loss_dfl"] == 0 and output.loss_dict["loss_giou"] == 0
    output.loss.backward()
    box_parameters = [p for name, p in model.head.named_parameters() if "reg" in name or "box" in name]
    assert box_parameters and all(p.grad is not None and torch.isfinite(p.grad).all() for p in box_parameters)


def test_config_round_trip_and_validation(tmp_path):
    config = small_config(reg_max=8, atss_topk=5)
    config.save_pretrained(tmp_path)
    loaded = GFLConfig.from_pretrained(tmp_path)
    assert loaded.reg_max == 8 and loaded.atss_topk == 5 and loaded.id2label == ID2LABEL
    assert loaded.backbone_out_indices == (-3, -2, -1)
    assert (GFLConfig().loss_qfl_weight, GFLConfig().loss_dfl_weight, GFLConfig().loss_giou_weight) == (1.0, 0.25, 2.0)
    with pytest.raises(ValueError, match="head_norm_groups"):
        GFLConfig(head_channels=48, head_norm_groups=32)


@pytest.mark.parametrize("flag", ["use_pretrained_backbone", "backbone_pretrained"])
def test_pretrained_backbone_weights_survive_post_init(tmp_path, flag):
    full = timm.create_model("resnet18")
    torch.nn.init.constant_(full.conv1.weight, 0.123)
    weights = tmp_path / "resnet18.safetensors"
    save_file(full.state_dict(), str(weights))
    model = GFLForObjectDetection(
        small_config(**{flag: True}, backbone_kwargs={"pretrained_cfg_overlay": {"file": str(weights)}})
    )
    assert torch.all(model.backbone.body.conv1.weight == 0.123)


def test_pretrained_backbone_flag_round_trips_under_both_names(tmp_path):
    """`use_pretrained_backbone` is what configs now hold and save; `backbone_pretrained`, the name before the
    backbone API, still works as a config.json key, a keyword and an attribute."""
    config = small_config(use_pretrained_backbone=True)
    assert config.backbone_pretrained is True
    config.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "config.json").read_text())
    assert saved["use_pretrained_backbone"] is True and "backbone_pretrained" not in saved
    assert GFLConfig.from_pretrained(tmp_path).use_pretrained_backbone is True
    old = json.loads((FIXTURES / "gfl_5baf139" / "config.json").read_text())
    assert GFLConfig.from_dict({**old, "backbone_pretrained": True}).use_pretrained_backbone is True
    assert GFLConfig.from_dict(old).use_pretrained_backbone is False
    assert small_config(backbone_pretrained=True).use_pretrained_backbone is True
    config.backbone_pretrained = False
    assert config.use_pretrained_backbone is False


def test_transformers_backbone_trains_saves_and_reloads(tmp_path):
    config = small_config(backbone=None, backbone_config=tiny_resnet_config(), num_fpn_levels=4)
    assert config.use_timm_backbone is False and config.backbone is None
    torch.manual_seed(0)
    model = GFLForObjectDetection(config)
    assert type(model.backbone.body) is ResNetBackbone
    assert model.backbone.channels == [32, 64, 128]
    assert model.strides == [8, 16, 32, 64]
    out = model(pixel_values=torch.randn(2, 3, 64, 64), labels=example_labels())
    assert torch.isfinite(out.loss)
    out.loss.backward()
    assert model.backbone.body.embedder.embedder.convolution.weight.grad.abs().sum() > 0
    assert out.logits.shape == (2, 8 * 8 + 4 * 4 + 2 * 2 + 1, 3)

    model.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "config.json").read_text())
    assert saved["backbone_config"]["model_type"] == "resnet" and saved["use_timm_backbone"] is False
    pixel_values = torch.randn(1, 3, 64, 96, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = model.eval()(pixel_values=pixel_values)
    for loader in (GFLForObjectDetection, AutoModelForObjectDetection):
        loaded, info = loader.from_pretrained(tmp_path, output_loading_info=True)
        assert not any(info.values()), info
        assert loaded.strides == model.strides
        with torch.no_grad():
            actual = loaded.eval()(pixel_values=pixel_values)
        assert torch.equal(expected.logits, actual.logits)
        assert torch.equal(expected.pred_boxes, actual.pred_boxes)


def test_transformers_backbone_keeps_its_own_init():
    """GFL's `_init_weights` leaves a transformers backbone to its own (and measuring the strides leaves its
    batch-norm statistics alone): the same weights as the backbone built alone from the same seed."""
    config = small_config(backbone=None, backbone_config=tiny_resnet_config())
    torch.manual_seed(0)
    alone = load_backbone(config).state_dict()
    torch.manual_seed(0)
    inside = GFLForObjectDetection(config).backbone.body.state_dict()
    assert alone.keys() == inside.keys()
    assert all(torch.equal(alone[name], inside[name]) for name in alone)


def test_timm_backbone_through_transformers_feeds_the_fpn():
    config = small_config(backbone=None, backbone_config=TimmBackboneConfig(backbone="resnet18", out_indices=[2, 3, 4]))
    model = GFLForObjectDetection(config)
    assert model.backbone.channels == [128, 256, 512] and model.strides == [8, 16, 32, 64, 128]
    assert model(pixel_values=torch.randn(1, 3, 64, 64)).logits.shape == (1, 64 + 16 + 4 + 1 + 1, 3)


def test_transformers_backbone_from_a_checkpoint_folder(tmp_path):
    """`use_timm_backbone=False` with `backbone` naming a checkpoint: its config (with `backbone_kwargs`)
    becomes `backbone_config`, and `use_pretrained_backbone` loads its weights (a local folder: no network)."""
    torch.manual_seed(1)
    ResNetBackbone(tiny_resnet_config()).save_pretrained(tmp_path)
    config = small_config(
        backbone=str(tmp_path),
        use_timm_backbone=False,
        use_pretrained_backbone=True,
        backbone_kwargs={"out_features": ["stage3", "stage4"]},
    )
    assert config.backbone_config.out_features == ["stage3", "stage4"] and config.backbone_kwargs is None
    model = GFLForObjectDetection(config)
    assert model.strides == [16, 32, 64, 128, 256]
    pretrained = ResNetBackbone.from_pretrained(tmp_path).state_dict()
    loaded = model.backbone.body.state_dict()
    assert all(torch.equal(pretrained[name], loaded[name]) for name in pretrained)


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"backbone": "resnet18", "backbone_config": tiny_resnet_config()}, "backbone='resnet18'"),
        ({"backbone": None, "backbone_config": tiny_resnet_config(), "num_fpn_levels": 2}, r"num_fpn_levels \(2\)"),
        ({"backbone": "resnet18", "backbone_out_indices": (1, 2, 3, 4), "num_fpn_levels": 3}, "num_fpn_levels"),
        ({"backbone": "resnet_nope"}, "backbone='resnet_nope' is not a timm model"),
        ({"backbone": None, "backbone_config": {"model_type": "nope"}}, "model_type='nope'"),
        ({"backbone": None, "backbone_config": BertConfig()}, "model_type 'bert', which AutoBackbone"),
        ({"backbone": None, "backbone_config": tiny_resnet_config(), "backbone_kwargs": {"x": 1}}, "backbone_kwargs"),
        ({"backbone": None, "backbone_config": tiny_resnet_config(), "backbone_out_indices": (1,)}, "out_indices"),
        ({"backbone": None, "backbone_config": tiny_resnet_config(), "use_pretrained_backbone": True}, "checkpoint"),
        ({"backbone": None, "use_timm_backbone": False}, "use_timm_backbone=False needs"),
    ],
)
def test_bad_backbone_settings_are_refused_by_name(settings, message):
    with pytest.raises(ValueError, match=message):
        small_config(**settings)


@pytest.mark.parametrize("indices", [(1, 2, 9), (5,), (-6, -1)])
def test_backbone_out_indices_the_timm_model_lacks_are_refused_naming_the_valid_ones(indices):
    with pytest.raises(
        ValueError, match=rf"out_indices={re.escape(str(indices))} .*'resnet18'.* has 5 \(indices 0 to 4, or -5 to -1"
    ):
        GFLForObjectDetection(small_config(backbone_out_indices=indices))


@pytest.mark.parametrize("indices", [(2, 2, 3), (3, 2, 1)])
def test_backbone_out_indices_must_name_distinct_levels_finest_first(indices):
    with pytest.raises(ValueError, match=r"strides \[.*\]: name distinct levels from the finest"):
        GFLForObjectDetection(small_config(backbone_out_indices=indices))


def test_a_config_without_classes_is_refused():
    with pytest.raises(ValueError, match=r"GFLConfig has no classes \(id2label=\{\}\)"):
        small_config(id2label={})


def test_pixel_values_with_nan_or_inf_are_refused_naming_the_image():
    model = GFLForObjectDetection(small_config())
    pixels = torch.randn(3, 3, 64, 64)
    pixels[1, 0, 5, 5] = math.nan
    pixels[2, 2, 0, :3] = math.inf
    labels = example_labels() + [{"class_labels": torch.tensor([0]), "boxes": torch.tensor([[0.5, 0.5, 0.2, 0.2]])}]
    with pytest.raises(ValueError, match=r"NaN or inf values \(image 1: 1, image 2: 3 of 12288 values\)"):
        model(pixel_values=pixels, labels=labels)
    with torch.no_grad(), pytest.raises(ValueError, match=r"image 1: 1"):
        model.eval()(pixel_values=pixels)
    # A batch found finite once is not checked again, unless it changes since.
    finite = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        model(pixel_values=finite)
        finite[0, 1, 2, 3] = math.nan
        with pytest.raises(ValueError, match=r"image 0: 1"):
            model(pixel_values=finite)


def test_folder_saved_before_the_backbone_api_loads_with_the_same_outputs():
    """A folder today's code did not write (fixtures/gfl_5baf139: its README says how it was made) loads with
    no key missing or left over and predicts what the code that saved it predicted."""
    directory = FIXTURES / "gfl_5baf139"
    assert {"backbone", "backbone_pretrained", "backbone_kwargs", "backbone_out_indices"} <= set(
        json.loads((directory / "config.json").read_text())
    )
    model, info = GFLForObjectDetection.from_pretrained(directory, output_loading_info=True)
    assert not any(info.values()), info
    pixel_values = torch.linspace(-2.0, 2.0, 3 * 64 * 64).reshape(1, 3, 64, 64).sin()
    with torch.no_grad():
        output = model.eval()(pixel_values=pixel_values)
    expected = load_file(directory / "expected_outputs.safetensors")
    torch.testing.assert_close(output.logits, expected["logits"], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(output.pred_boxes, expected["pred_boxes"], rtol=1e-5, atol=1e-5)
    assert AutoModelForObjectDetection.from_pretrained(directory).config.backbone == "resnet10t"


def test_the_base_model_holds_backbone_and_fpn_and_checkpoints_keep_their_layout(tmp_path):
    """`GFLModel` is the detector's `model` (what `base_model_prefix` names); checkpoints are written with the keys
    every GFL folder has (`backbone.*`, `neck.*`, `head.*`), and load back through `from_pretrained` and through the
    plain `load_state_dict` that `Trainer` resumes with."""
    detector = tiny_detector({0: "a", 1: "b"}).eval()
    assert detector.base_model is detector.model and isinstance(detector.model, GFLModel)
    assert detector.backbone is detector.model.backbone and detector.neck is detector.model.neck
    detector.save_pretrained(tmp_path)
    saved = load_file(tmp_path / "model.safetensors")
    assert set(saved) == {key.removeprefix("model.") for key in detector.state_dict()}
    assert any(key.startswith("backbone.") for key in saved) and not any(key.startswith("model.") for key in saved)
    pixel_values = torch.linspace(-2.0, 2.0, 2 * 3 * 64 * 64).reshape(2, 3, 64, 64).sin()
    with torch.no_grad():
        expected = detector(pixel_values=pixel_values)
        resumed = GFLForObjectDetection(detector.config).eval()
        resumed.load_state_dict(saved, strict=True)
        torch.testing.assert_close(resumed(pixel_values=pixel_values).logits, expected.logits, rtol=0, atol=0)
        base = AutoModel.from_pretrained(tmp_path).eval()
        assert isinstance(base, GFLModel)
        for level, features in zip(expected.fpn_features, base(pixel_values).fpn_features, strict=True):
            torch.testing.assert_close(features, level, rtol=0, atol=0)


def test_a_seed_builds_the_detector_it_built_before_the_base_model_was_split_out():
    # The fixture's README: built with torch.manual_seed(0), then every parameter moved by 0.05 * randn_like.
    directory = FIXTURES / "gfl_5baf139"
    torch.manual_seed(0)
    model = GFLForObjectDetection(GFLConfig.from_pretrained(directory))
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(0.05 * torch.randn_like(parameter))
    saved = load_file(directory / "model.safetensors")
    for name, parameter in model.named_parameters():
        torch.testing.assert_close(parameter, saved[name.removeprefix("model.")], rtol=0, atol=0, msg=name)


def test_init_weights_follow_gfl():
    model = GFLForObjectDetection(small_config())
    assert torch.allclose(model.head.class_logits.bias, torch.full((3,), -math.log(0.99 / 0.01)))
    assert model.head.cls_convs[0].weight.std().item() == pytest.approx(0.01, rel=0.2)


@pytest.fixture(scope="module")
def saved_model_dir(tmp_path_factory):
    directory = tmp_path_factory.mktemp("gfl")
    torch.manual_seed(0)
    model = GFLForObjectDetection(small_config())
    processor = GFLImageProcessor.for_model_config(model.config, size={"shortest_edge": 64, "longest_edge": 96})
    model.save_pretrained(directory)
    processor.save_pretrained(directory)
    return directory, model


def test_auto_classes_load_the_same_model(saved_model_dir):
    directory, model = saved_model_dir
    loaded = AutoModelForObjectDetection.from_pretrained(directory)
    assert type(loaded) is GFLForObjectDetection
    original, reloaded = model.state_dict(), loaded.state_dict()
    assert original.keys() == reloaded.keys()
    assert all(torch.equal(original[k], reloaded[k]) for k in original)
    # Same predictions too: everything not in the checkpoint (buffers, constants) must be rebuilt on load.
    pixel_values = torch.randn(1, 3, 64, 96, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected, actual = model.eval()(pixel_values=pixel_values), loaded.eval()(pixel_values=pixel_values)
    assert torch.equal(expected.logits, actual.logits)
    assert torch.equal(expected.pred_boxes, actual.pred_boxes)
    assert [name for name, _ in loaded.named_buffers()] == [name for name, _ in model.named_buffers()]
    assert all(torch.equal(a, b) for (_, a), (_, b) in zip(loaded.named_buffers(), model.named_buffers()))
    processor = AutoImageProcessor.from_pretrained(directory)
    assert isinstance(processor, GFLImageProcessor) and dict(processor.size) == {
        "shortest_edge": 64,
        "longest_edge": 96,
    }


def test_saved_directory_carries_code_and_auto_map(saved_model_dir):
    directory, _ = saved_model_dir
    names = set(os.listdir(directory))
    assert {"config.json", "model.safetensors", "preprocessor_config.json", "modeling_gfl.py", "loss_gfl.py"} <= names
    auto_map = json.loads((directory / "config.json").read_text())["auto_map"]
    assert auto_map["AutoModelForObjectDetection"] == "modeling_gfl.GFLForObjectDetection"


def test_pipeline_returns_detections(saved_model_dir):
    directory, _ = saved_model_dir
    detector = pipeline("object-detection", model=str(directory), trust_remote_code=False)
    detections = detector(Image.new("RGB", (120, 80), (90, 120, 200)), threshold=0.0)
    assert detections, "an untrained model still scores every anchor above 0"
    first = detections[0]
    assert first["label"] in ID2LABEL.values()
    assert 0 <= first["box"]["xmin"] <= first["box"]["xmax"] <= 120


def test_trust_remote_code_loads_without_liaf_hf(saved_model_dir, tmp_path):
    directory, model = saved_model_dir
    script = f"""
import sys, torch
from transformers import AutoModelForObjectDetection, AutoImageProcessor
model = AutoModelForObjectDetection.from_pretrained({str(directory)!r}, trust_remote_code=True)
processor = AutoImageProcessor.from_pretrained({str(directory)!r}, trust_remote_code=True)
assert "liaf_hf" not in sys.modules, "liaf_hf must not be imported"
batch = processor(images=[torch.zeros(3, 64, 64, dtype=torch.uint8)], return_tensors="pt")
with torch.no_grad():
    out = model(**batch)
print(type(model).__module__, round(out.logits.sum().item(), 3))
"""
    # liaf_hf is installed in this environment, so the script proves it was never imported.
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    module, logit_sum = result.stdout.split()
    assert "liaf_hf" not in module
    processor = GFLImageProcessor.from_pretrained(directory)
    with torch.no_grad():
        expected = model.eval()(**processor(images=[torch.zeros(3, 64, 64, dtype=torch.uint8)])).logits.sum().item()
    assert float(logit_sum) == pytest.approx(expected, abs=2e-3)


def test_targets_are_the_same_with_or_without_pixel_mask_on_a_mixed_size_batch():
    """transformers' object-detection example drops `pixel_mask`: each label's `size` must then place the
    boxes, not the padded canvas (a box of a 48x32 image in a 64x64 batch would move otherwise)."""
    model = tiny_detector({0: "a", 1: "b"})
    processor = GFLImageProcessor(size={"max_height": 64, "max_width": 64}, pad_size={"height": 64, "width": 64})
    images = [Image.new("RGB", (48, 32), (200, 40, 40)), Image.new("RGB", (32, 64), (40, 40, 200))]
    annotations = [
        {"image_id": 0, "annotations": [{"bbox": [30.0, 10.0, 12.0, 16.0], "category_id": 0}]},
        {"image_id": 1, "annotations": [{"bbox": [4.0, 40.0, 20.0, 20.0], "category_id": 1}]},
    ]
    batch = processor(images=images, annotations=annotations)
    with_mask = model.prepare_targets(batch["labels"], batch["pixel_values"], batch["pixel_mask"])
    without_mask = model.prepare_targets(batch["labels"], batch["pixel_values"])
    assert torch.equal(with_mask.valid_sizes, without_mask.valid_sizes)
    assert with_mask.valid_sizes.tolist() == [[42.0, 64.0], [64.0, 32.0]]  # 48x32 grows to 64x42
    for (_, boxes_a, _), (_, boxes_b, _) in zip(with_mask.instances, without_mask.instances):
        assert torch.allclose(boxes_a, boxes_b)
    # The 48x32 image grows to 64x42: its box at x 30-42 of 48 is at x 40-56 of 64 pixels.
    assert with_mask.instances[0][1][0, [0, 2]].tolist() == pytest.approx([40.0, 56.0], abs=1e-4)

    torch.manual_seed(0)
    masked = model(pixel_values=batch["pixel_values"], pixel_mask=batch["pixel_mask"], labels=batch["labels"])
    unmasked = model(pixel_values=batch["pixel_values"], labels=batch["labels"], output_hidden_states=True)
    assert torch.allclose(masked.loss, unmasked.loss) and torch.allclose(masked.pred_boxes, unmasked.pred_boxes)
    assert masked.hidden_states is None and len(unmasked.hidden_states) == len(model.config.backbone_out_indices)


def test_a_label_size_that_does_not_fit_the_batch_is_refused():
    model = tiny_detector({0: "a"})
    labels = [
        {
            "class_labels": torch.tensor([0]),
            "boxes": torch.tensor([[0.5, 0.5, 0.2, 0.2]]),
            "size": torch.tensor([80, 64]),
        }
    ]
    with pytest.raises(ValueError, match=r"labels\[0\]\['size'\] is 80x64, which does not fit the 64x64"):
        model(pixel_values=torch.zeros(1, 3, 64, 64), labels=labels)
