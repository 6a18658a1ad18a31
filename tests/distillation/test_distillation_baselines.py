"""Baseline distillers (mimic, FGD, PKD, LD, AID) and combined methods, on hand-built outputs where the answer
is known, plus two training steps of each through the trainer."""

import json
import math

import pytest
import torch

from liaf_hf import GFLConfig, GFLForObjectDetection
from liaf_hf.cli import DistillationArguments
from liaf_hf.distillation import (
    AIDDistiller,
    CompositeDistiller,
    Distiller,
    FGDDistiller,
    LDDistiller,
    MimicDistiller,
    PKDDistiller,
    available_methods,
    build_distiller,
    method_parts,
    method_settings,
    parse_method_spec,
)
from liaf_hf.distillation._masks import box_cell_masks, foreground_background_masks
from liaf_hf.distillation.base import DistillationBatch
from liaf_hf.distillation.fgd import fgd_batch_masks, fgd_masks, fgd_multi_level_masks
from liaf_hf.models.gfl.modeling_gfl import GFLObjectDetectionOutput
from tiny import make_distillation_trainer

SIZES = (8, 4, 2)
STRIDES = [8, 16, 32]
NUM_ANCHORS = sum(size * size for size in SIZES)
FEATURE_METHODS = ["mimic", "fgd", "pkd", "aid"]
ALL_METHODS = FEATURE_METHODS + ["ld"]


def config(channels=8, levels=3, id2label=None, reg_max=2):
    return GFLConfig(
        backbone="resnet18",
        fpn_channels=channels,
        num_fpn_levels=levels,
        reg_max=reg_max,
        id2label=id2label or {0: "a", 1: "b"},
    )


def random_maps(channels, batch=2, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return [torch.randn(batch, channels, s, s, generator=generator) for s in SIZES]


def output(features=None, distributions=None, *, num_classes=2, loss=None, instance_losses=None, requires_grad=False):
    """A detector output with the given FPN maps and box distributions (zeros where not given), and the loss
    (with `loss`, each instance's loss as well: `instance_losses`, or `loss` for each of TWO_IMAGES' three)."""
    if features is None:
        features = random_maps(8)
    batch = features[0].shape[0]
    if distributions is None:
        distributions = [torch.zeros(batch, 4 * 3, s, s) for s in SIZES]
    features = tuple(f.clone().requires_grad_(requires_grad) for f in features)
    distributions = tuple(d.clone().requires_grad_(requires_grad) for d in distributions)
    class_logits = tuple(torch.zeros(batch, num_classes, *f.shape[-2:]) for f in features)
    if loss is not None and instance_losses is None:
        instance_losses = loss.expand(3)
    return GFLObjectDetectionOutput(
        loss=loss,
        fpn_features=features,
        class_logits=class_logits,
        box_distributions=distributions,
        instance_losses=instance_losses,
    )


def make_batch(boxes_per_image, *, positive_mask=None, teacher_strides=None, ignore_per_image=None):
    boxes = [torch.tensor(b, dtype=torch.float32).reshape(-1, 4) for b in boxes_per_image]
    ignore = ignore_per_image or [[] for _ in boxes]
    return DistillationBatch(
        boxes=boxes,
        class_labels=[torch.zeros(len(b), dtype=torch.long) for b in boxes],
        ignore_boxes=[torch.tensor(i, dtype=torch.float32).reshape(-1, 4) for i in ignore],
        input_size=(64, 64),
        valid_sizes=torch.full((len(boxes), 2), 64.0),
        strides=STRIDES,
        teacher_strides=teacher_strides,
        positive_mask=positive_mask,
    )


TWO_IMAGES = [[[4, 4, 30, 20], [36, 30, 60, 62]], [[0, 0, 64, 64]]]


def some_positives(batch=2):
    """(B, A) positive mask with a few anchors on every level of the first image."""
    mask = torch.zeros(batch, NUM_ANCHORS, dtype=torch.bool)
    mask[0, [3, 10, 64 + 5, 64 + 16 + 1]] = True
    return mask


# ----------------------------------------------------------------------------------------- registry


@pytest.mark.parametrize(
    ("method", "cls"),
    [
        ("mimic", MimicDistiller),
        ("fgd", FGDDistiller),
        ("pkd", PKDDistiller),
        ("ld", LDDistiller),
        ("aid", AIDDistiller),
    ],
)
def test_every_baseline_is_registered_with_its_class(method, cls):
    assert isinstance(build_distiller(method, student_config=config(), teacher_config=config()), cls)


@pytest.mark.parametrize("method", ALL_METHODS)
def test_mismatched_levels_or_labels_are_refused_with_the_reason(method):
    with pytest.raises(ValueError, match="num_fpn_levels=3.*num_fpn_levels=4"):
        build_distiller(method, student_config=config(levels=3), teacher_config=config(levels=4))
    with pytest.raises(ValueError, match="same label set"):
        build_distiller(method, student_config=config(), teacher_config=config(id2label={0: "a", 1: "c"}))


# -------------------------------------------------------------------------- zero loss, gradient flow


@pytest.mark.parametrize("method", FEATURE_METHODS)
def test_equal_features_give_zero_loss(method):
    distiller = build_distiller(method, student_config=config(), teacher_config=config())
    features = random_maps(8, seed=1)
    result = distiller(
        student=output(features), teacher=output(features, loss=torch.tensor(1.0)), batch=make_batch(TWO_IMAGES)
    )
    assert result.losses
    for name, loss in result.losses.items():
        assert float(loss.detach()) == pytest.approx(0.0, abs=1e-6), name


def test_equal_distributions_give_zero_ld_loss():
    distiller = build_distiller("ld", student_config=config(), teacher_config=config())
    distributions = [torch.randn(2, 12, s, s, generator=torch.Generator().manual_seed(2)) for s in SIZES]
    result = distiller(
        student=output(distributions=distributions),
        teacher=output(distributions=distributions),
        batch=make_batch(TWO_IMAGES, positive_mask=some_positives()),
    )
    assert float(result.losses["loss_ld"]) == pytest.approx(0.0, abs=1e-6)


@pytest.mark.parametrize("method", FEATURE_METHODS)
def test_feature_gradients_reach_the_student_and_its_align_convs_but_not_the_teacher(method):
    distiller = build_distiller(method, student_config=config(channels=4), teacher_config=config(channels=8))
    student = output(random_maps(4, seed=3), requires_grad=True)
    teacher = output(random_maps(8, seed=4), loss=torch.tensor(1.0), requires_grad=True)
    result = distiller(student=student, teacher=teacher, batch=make_batch(TWO_IMAGES))
    sum(result.losses.values()).backward()
    assert all(f.grad is not None and f.grad.abs().sum() > 0 for f in student.fpn_features)
    assert all(f.grad is None for f in teacher.fpn_features)
    assert all(conv.weight.grad.abs().sum() > 0 for conv in distiller.aligner.convs)


def test_ld_gradients_reach_the_student_distributions_at_positives_only():
    distiller = build_distiller("ld", student_config=config(), teacher_config=config())
    generator = torch.Generator().manual_seed(5)
    student = output(distributions=[torch.randn(2, 12, s, s, generator=generator) for s in SIZES], requires_grad=True)
    teacher = output(distributions=[torch.randn(2, 12, s, s, generator=generator) for s in SIZES], requires_grad=True)
    positives = some_positives()
    batch = make_batch(TWO_IMAGES, positive_mask=positives)
    distiller(student=student, teacher=teacher, batch=batch).losses["loss_ld"].backward()
    gradient = torch.cat([d.grad.flatten(2).transpose(1, 2) for d in student.box_distributions], dim=1)
    assert (gradient.abs().sum(dim=2) > 0).equal(positives)
    assert all(d.grad is None for d in teacher.box_distributions)


# ------------------------------------------------------------------------------- hand-worked values


def test_mimic_is_the_mean_squared_error():
    teacher = random_maps(8, seed=6)
    student = [t - 0.5 for t in teacher]
    plain = build_distiller("mimic", student_config=config(), teacher_config=config(), weight=1.0, feature_scale="none")
    result = plain(student=output(student), teacher=output(teacher), batch=make_batch(TWO_IMAGES))
    assert float(result.losses["loss_mimic"]) == pytest.approx(0.25, rel=1e-5)
    scaled = build_distiller("mimic", student_config=config(), teacher_config=config(), weight=2.0)
    result = scaled(student=output(student), teacher=output(teacher), batch=make_batch(TWO_IMAGES))
    expected = 2.0 * sum(0.25 / float(t.square().mean()) for t in teacher) / 3
    assert float(result.losses["loss_mimic"]) == pytest.approx(expected, rel=1e-5)


def test_pkd_ignores_scale_and_shift_and_is_two_for_opposite_features():
    distiller = build_distiller("pkd", student_config=config(), teacher_config=config())
    assert distiller.config.weight == 10.0
    teacher = random_maps(8, seed=7)
    batch = make_batch(TWO_IMAGES)
    affine = distiller(student=output([3 * t + 1 for t in teacher]), teacher=output(teacher), batch=batch)
    assert float(affine.losses["loss_pkd"]) == pytest.approx(0.0, abs=1e-4)
    # r = -1 on every channel: (z + z)^2 / 2 averages 2 per level, 3 levels, weight 10.
    opposite = distiller(student=output([-t for t in teacher]), teacher=output(teacher), batch=batch)
    assert float(opposite.losses["loss_pkd"]) == pytest.approx(10 * 2 * 3, rel=1e-4)
    assert float(opposite.stats["pkd/correlation_l0"]) == pytest.approx(-1.0, rel=1e-4)


def test_fgd_terms_on_constant_maps():
    """Teacher 1 and student 0.5 everywhere: both attentions are uniform (1 on every cell and channel), the
    foreground mask of the box sums to 1 on each level and so does the background, and the context blocks
    start as the identity. Per level and image: fg = C 0.25, bg = C 0.25, attention 0, global = C H W 0.25."""
    channels = 8
    distiller = build_distiller("fgd", student_config=config(), teacher_config=config())
    teacher = [torch.ones(2, channels, s, s) for s in SIZES]
    student = [torch.full((2, channels, s, s), 0.5) for s in SIZES]
    # The box covers 4 x 4 cells on P3, 2 x 2 on P4 and 1 on P5; the rest of each grid is background.
    result = distiller(student=output(student), teacher=output(teacher), batch=make_batch([[[0, 0, 32, 32]]] * 2))
    assert float(result.losses["loss_fgd_fg"]) == pytest.approx(1e-3 * 3 * channels * 0.25, rel=1e-5)
    assert float(result.losses["loss_fgd_bg"]) == pytest.approx(5e-4 * 3 * channels * 0.25, rel=1e-5)
    assert float(result.losses["loss_fgd_attention"]) == pytest.approx(0.0, abs=1e-9)
    cells = sum(s * s for s in SIZES)
    assert float(result.losses["loss_fgd_global"].detach()) == pytest.approx(5e-6 * channels * cells * 0.25, rel=1e-5)


def test_fgd_losses_do_not_depend_on_the_size_of_the_teachers_activations():
    """With the default feature_scale="teacher", a teacher whose maps are 30 times larger (and a student that
    matches it in the same proportion) gives the same four losses; with "none" the squared terms grow 900-fold,
    as they do with FGD's own code, which is what swamps the detection loss with a large-activation teacher."""
    torch.manual_seed(0)
    teacher = [torch.randn(2, 8, s, s) for s in SIZES]
    student = [torch.randn(2, 8, s, s) for s in SIZES]
    batch = make_batch([[[0, 0, 32, 32]], [[8, 8, 40, 24]]])
    scaled = dict(student=output([30 * s for s in student]), teacher=output([30 * t for t in teacher]), batch=batch)
    distiller = build_distiller("fgd", student_config=config(), teacher_config=config())
    plain = distiller(student=output(student), teacher=output(teacher), batch=batch).losses
    large = distiller(**scaled).losses
    for name in ("loss_fgd_fg", "loss_fgd_bg", "loss_fgd_attention", "loss_fgd_global"):
        assert float(large[name].detach()) == pytest.approx(float(plain[name].detach()), rel=1e-4), name
    raw = build_distiller("fgd", student_config=config(), teacher_config=config(), feature_scale="none")
    raw.load_state_dict(distiller.state_dict())
    assert float(raw(**scaled).losses["loss_fgd_fg"].detach()) > 100 * float(plain["loss_fgd_fg"].detach())


def test_fgd_attention_term_for_one_stronger_channel():
    """Student channel 0 is 2, the others 1, the teacher 1 everywhere: the spatial attentions are uniform and
    equal, the student's channel attention at tau = 0.5 is C e^4 / (e^4 + (C - 1) e^2) on channel 0 and
    C e^2 / (e^4 + (C - 1) e^2) on the others, against the teacher's 1."""
    channels = 8
    distiller = build_distiller("fgd", student_config=config(), teacher_config=config())
    teacher = [torch.ones(2, channels, s, s) for s in SIZES]
    student = [torch.ones(2, channels, s, s) for s in SIZES]
    for level_map in student:
        level_map[:, 0] = 2.0
    result = distiller(student=output(student), teacher=output(teacher), batch=make_batch([[[0, 0, 32, 32]]] * 2))
    denominator = math.exp(4) + (channels - 1) * math.exp(2)
    strong, weak = channels * math.exp(4) / denominator, channels * math.exp(2) / denominator
    gap = abs(strong - 1) + (channels - 1) * abs(weak - 1)
    assert float(result.losses["loss_fgd_attention"]) == pytest.approx(5e-4 * 3 * gap, rel=1e-5)


def test_fgd_masks_of_every_level_at_once_follow_each_box_alone():
    """Per image and level: the foreground is the largest of its boxes' 1 / (box's cells) over their cells, the
    background uniform over the valid cells outside every box and ignore region; an image without boxes, a
    box smaller than a cell and padding included."""
    boxes = [
        torch.tensor([[0.0, 0.0, 40.0, 40.0], [30.0, 30.0, 34.0, 34.0], [50.0, 50.0, 51.0, 52.0]]),
        torch.zeros(0, 4),
        torch.tensor([[8.0, 40.0, 60.0, 60.0]]),
    ]
    ignore = [torch.zeros(0, 4), torch.tensor([[0.0, 0.0, 16.0, 16.0]]), torch.tensor([[40.0, 0.0, 64.0, 24.0]])]
    sizes = torch.tensor([[64.0, 64.0], [48.0, 32.0], [64.0, 40.0]])
    feature_sizes, strides = [(8, 8), (4, 4), (2, 2)], [8, 16, 32]
    foreground, background = fgd_multi_level_masks(
        boxes, ignore, feature_sizes=feature_sizes, strides=strides, valid_sizes=sizes
    )
    for image in range(3):
        expected_foreground, expected_background = [], []
        for size, stride in zip(feature_sizes, strides):
            cells = box_cell_masks(boxes[image], feature_size=size, stride=stride).float().flatten(1)
            shares = cells / cells.sum(dim=1, keepdim=True)
            expected_foreground.append(shares.amax(dim=0) if len(shares) else torch.zeros(size[0] * size[1]))
            regions = torch.cat([boxes[image], ignore[image]])
            alone = foreground_background_masks(regions, feature_size=size, stride=stride, valid_size=sizes[image])
            expected_background.append(alone[1].flatten())
        assert torch.allclose(foreground[image], torch.cat(expected_foreground)), image
        assert torch.allclose(background[image], torch.cat(expected_background)), image
    assert foreground[0, 6 * 8 + 6] == 1.0  # the 1 x 2 px box at (50, 50) owns the P3 cell holding it


def test_fgd_masks_of_a_batch_are_each_image_alone():
    """FGD builds a level's masks for the whole batch at once; no image may see another's boxes or padding."""
    boxes = [
        torch.tensor([[0.0, 0.0, 40.0, 40.0], [30.0, 30.0, 34.0, 34.0]]),
        torch.zeros(0, 4),
        torch.tensor([[8.0, 40.0, 60.0, 60.0]]),
    ]
    ignore = [torch.zeros(0, 4), torch.tensor([[0.0, 0.0, 16.0, 16.0]]), torch.tensor([[40.0, 0.0, 64.0, 24.0]])]
    sizes = torch.tensor([[64.0, 64.0], [48.0, 32.0], [64.0, 40.0]])
    foreground, background = fgd_batch_masks(boxes, ignore, feature_size=(8, 8), stride=8, valid_sizes=sizes)
    for image in range(3):
        alone = fgd_masks(boxes[image], ignore[image], feature_size=(8, 8), stride=8, valid_size=sizes[image])
        assert torch.equal(foreground[image], alone[0]) and torch.equal(background[image], alone[1]), image
    assert foreground[1].sum() == 0 and background[1].sum() == pytest.approx(1.0)
    assert background[2][:, 5:].sum() == 0  # the third image is 40 px wide: columns from 40 px are padding


def test_fgd_masks_weigh_small_boxes_more_and_keep_ignore_regions_out():
    """On an 8 x 8 grid of stride 8 the large box holds 4 x 4 cells, the small one (inside it) 2 x 2, the
    ignore region 2 x 2; the background is the other 44 cells."""
    foreground, background = fgd_masks(
        torch.tensor([[0.0, 0.0, 32.0, 32.0], [0.0, 0.0, 16.0, 16.0]]),
        torch.tensor([[48.0, 48.0, 64.0, 64.0]]),
        feature_size=(8, 8),
        stride=8,
    )
    expected = torch.zeros(8, 8)
    expected[:4, :4] = 1 / 16
    expected[:2, :2] = 1 / 4  # the small box's cells keep its larger weight
    assert torch.allclose(foreground, expected)
    outside = torch.ones(8, 8, dtype=torch.bool)
    outside[:4, :4] = False
    outside[6:, 6:] = False
    assert torch.allclose(background, outside.float() / 44)


def test_ld_value_at_one_positive():
    """One positive anchor with student logits 0 (uniform over the 3 bins) and teacher logits (0, 10, 20) on
    every edge: at tau = 10 the teacher's distribution is softmax(0, 1, 2). With quality sigmoid(0) = 0.5,
    2 images and m = 2: loss_ld = 0.25 * 2 * (0.5 * k) / 2, k = 100 KL / 3."""
    distiller = build_distiller("ld", student_config=config(), teacher_config=config())
    teacher_distributions = [torch.zeros(2, 12, s, s) for s in SIZES]
    teacher_distributions[0][0, :, 0, 5] = torch.tensor([0.0, 10.0, 20.0]).repeat(4)
    positives = torch.zeros(2, NUM_ANCHORS, dtype=torch.bool)
    positives[0, 5] = True  # row 0, column 5 of P3
    result = distiller(
        student=output(),
        teacher=output(distributions=teacher_distributions),
        batch=make_batch(TWO_IMAGES, positive_mask=positives),
    )
    exps = [math.exp(0), math.exp(1), math.exp(2)]
    teacher_probs = [e / sum(exps) for e in exps]
    kl = sum(p * (math.log(p) - math.log(1 / 3)) for p in teacher_probs)
    k = 100 * kl / 3
    assert float(result.losses["loss_ld"]) == pytest.approx(0.25 * 2 * (0.5 * k) / 2, rel=1e-5)
    assert float(result.stats["ld/num_positives"]) == 1


def test_ld_reads_only_the_positive_anchors():
    """The loss is computed at every anchor with the negatives weighted 0: a student far from its teacher
    everywhere else gives the same loss as one that differs at the positive alone, and only the positive's
    logits get a gradient."""
    distiller = build_distiller("ld", student_config=config(), teacher_config=config())
    positives = torch.zeros(2, NUM_ANCHORS, dtype=torch.bool)
    positives[1, 70] = True  # image 1, P4 (anchors 64..79), row 1, column 2
    teacher_distributions = [torch.zeros(2, 12, s, s) for s in SIZES]
    teacher_distributions[1][1, :, 1, 2] = torch.tensor([5.0, 0.0, -5.0]).repeat(4)
    batch = make_batch(TWO_IMAGES, positive_mask=positives)
    alone = distiller(student=output(), teacher=output(distributions=teacher_distributions), batch=batch)
    noisy = [torch.randn(2, 12, s, s, generator=torch.Generator().manual_seed(s)) * 30 for s in SIZES]
    noisy[1][1, :, 1, 2] = 0.0  # at the positive, the student is as in `alone`
    student = output(distributions=noisy, requires_grad=True)
    result = distiller(student=student, teacher=output(distributions=teacher_distributions), batch=batch)
    assert float(result.losses["loss_ld"]) > 0
    assert float(result.losses["loss_ld"]) == pytest.approx(float(alone.losses["loss_ld"]), rel=1e-6)
    assert float(result.stats["ld/edge_kl"]) == pytest.approx(float(alone.stats["ld/edge_kl"]), rel=1e-6)
    result.losses["loss_ld"].backward()
    gradients = [distributions.grad.clone() for distributions in student.box_distributions]
    assert gradients[1][1, :, 1, 2].abs().sum() > 0
    gradients[1][1, :, 1, 2] = 0.0
    assert all(float(gradient.abs().sum()) == 0.0 for gradient in gradients)


def test_ld_without_positives_gives_a_zero_that_reaches_the_box_branch():
    distiller = build_distiller("ld", student_config=config(), teacher_config=config())
    student = output(requires_grad=True)
    empty = torch.zeros(2, NUM_ANCHORS, dtype=torch.bool)
    result = distiller(student=student, teacher=output(), batch=make_batch([[], []], positive_mask=empty))
    assert float(result.losses["loss_ld"].detach()) == 0.0
    result.losses["loss_ld"].backward()
    assert all(d.grad is not None for d in student.box_distributions)


def test_aid_scales_each_instance_error_by_the_teachers_loss_on_it():
    """Each Gaussian mask sums to 1, so a constant offset c gives d = c^2 for every instance."""
    distiller = build_distiller(
        "aid", student_config=config(), teacher_config=config(), weight=3.0, feature_scale="none"
    )
    teacher = random_maps(8, seed=8)
    student = [t - 0.5 for t in teacher]
    instance_losses = torch.tensor([0.0, 4.0, 2.0])  # image 0: two instances, image 1: one
    result = distiller(
        student=output(student),
        teacher=output(teacher, loss=torch.tensor(2.0), instance_losses=instance_losses),
        batch=make_batch(TWO_IMAGES),
    )
    weights = torch.exp(-0.1 * instance_losses)
    image_means = [(weights[0] + weights[1]) / 2, weights[2]]
    expected = 3.0 * 0.25 * float(sum(image_means) / 2)
    assert float(result.losses["loss_aid"]) == pytest.approx(expected, rel=1e-5)
    assert float(result.stats["aid/teaching_weight"]) == pytest.approx(float(weights.mean()), rel=1e-6)


def test_aid_per_batch_scales_every_instance_by_the_teachers_loss_on_the_batch():
    distiller = build_distiller(
        "aid", student_config=config(), teacher_config=config(), weight=3.0, feature_scale="none", weighting="batch"
    )
    assert distiller.needs_teacher_loss and not distiller.needs_teacher_instance_losses
    teacher = random_maps(8, seed=8)
    student = [t - 0.5 for t in teacher]
    result = distiller(
        student=output(student),
        teacher=output(teacher, loss=torch.tensor(2.0), instance_losses=torch.tensor([0.0, 9.0, 9.0])),
        batch=make_batch(TWO_IMAGES),
    )
    assert float(result.losses["loss_aid"]) == pytest.approx(3.0 * math.exp(-0.1 * 2.0) * 0.25, rel=1e-5)
    assert float(result.stats["aid/teaching_weight"]) == pytest.approx(math.exp(-0.2), rel=1e-6)


def test_aid_needs_the_teachers_instance_losses_and_uniform_aid_needs_nothing_of_the_teacher_but_its_maps():
    distiller = build_distiller("aid", student_config=config(), teacher_config=config())
    assert distiller.needs_teacher_instance_losses and not distiller.needs_teacher_head
    features = random_maps(8)
    with pytest.raises(ValueError, match="AID needs the teacher's instance_losses"):
        distiller(student=output(features), teacher=output(features), batch=make_batch(TWO_IMAGES))
    uniform = build_distiller("aid", student_config=config(), teacher_config=config(), decay=0.0, feature_scale="none")
    assert not (uniform.needs_teacher_loss or uniform.needs_teacher_instance_losses or uniform.needs_teacher_head)
    student = output([f - 0.5 for f in features])
    result = uniform(student=student, teacher=output(features), batch=make_batch(TWO_IMAGES))
    assert float(result.losses["loss_aid"]) == pytest.approx(10.0 * 0.25, rel=1e-5)


def _facts_file(tmp_path, noise_per_image):
    """An instance facts file: image ids 1, 2, ... with each annotation's noise kind."""
    records = [
        {"annotation_id": 0, "image_id": image_id, "noise": noise}
        for image_id, kinds in enumerate(noise_per_image, start=1)
        for noise in kinds
    ]
    path = tmp_path / "instance_facts_train.json"
    path.write_text(json.dumps({"annotations": records}))
    return str(path)


def _oracle_loss_and_weights(distiller, batch, *, teacher=None, student=None):
    features = random_maps(8, seed=8)
    result = distiller(
        student=student or output([f - 0.5 for f in features]), teacher=teacher or output(features), batch=batch
    )
    return result


def test_noise_oracle_gives_the_corrupted_annotations_no_weight_at_uniform_strength(tmp_path):
    facts = _facts_file(tmp_path, [["none", "box"], ["none"]])
    distiller = build_distiller(
        "oracle", student_config=config(), teacher_config=config(), source="noise", facts_file=facts,
        feature_scale="none", weight=1.0,
    )  # fmt: skip
    assert distiller.needs_image_ids and not distiller.needs_teacher_instance_losses
    batch = make_batch(TWO_IMAGES)
    batch.image_ids = [1, 2]
    result = _oracle_loss_and_weights(distiller, batch)
    # Raw weights (1, 0 | 1): image means 0.5 and 1, their mean 0.75, so the weights are (4/3, 0 | 4/3); every
    # instance's d is 0.25, and the loss is mean(4/3 / 2, 4/3) * 0.25, what uniform weights give: 0.25.
    assert float(result.losses["loss_oracle"]) == pytest.approx(0.25, rel=1e-5)
    assert float(result.stats["oracle/weight_min"]) == 0.0
    assert float(result.stats["oracle/weight_max"]) == pytest.approx(4 / 3, rel=1e-5)


def test_noise_oracle_refuses_facts_of_another_set(tmp_path):
    facts = _facts_file(tmp_path, [["none"], ["none"]])
    distiller = build_distiller(
        "oracle", student_config=config(), teacher_config=config(), source="noise", facts_file=facts
    )
    batch = make_batch(TWO_IMAGES)
    batch.image_ids = [1, 2]
    with pytest.raises(ValueError, match="image 1 has 2 instances in the batch but 1 in"):
        _oracle_loss_and_weights(distiller, batch)
    with pytest.raises(FileNotFoundError, match="facts_file .*missing.json does not exist"):
        build_distiller(
            "oracle", student_config=config(), teacher_config=config(), source="noise",
            facts_file=str(tmp_path / "missing.json"),
        )  # fmt: skip
    with pytest.raises(ValueError, match="needs facts_file"):
        build_distiller("oracle", student_config=config(), teacher_config=config(), source="noise")


@pytest.mark.parametrize(
    "source, lowest, highest",
    [
        # Raw weights (0.2, 0.6 | 0.4): image means 0.4 and 0.4, every weight divided by 0.4: (0.5, 1.5 | 1.0).
        ("teacher_quality", 0.5, 1.5),
        # Raw weights 1 - quality = (0.8, 0.4 | 0.6): image means 0.6 and 0.6, so (4/3, 2/3 | 1.0).
        ("teacher_error", 2 / 3, 4 / 3),
    ],
)
def test_teacher_oracles_weigh_by_the_teachers_correctness_at_uniform_strength(source, lowest, highest):
    distiller = build_distiller(
        "oracle", student_config=config(), teacher_config=config(), source=source, feature_scale="none"
    )
    assert distiller.needs_teacher_instance_losses and not distiller.needs_student_instance_losses
    features = random_maps(8, seed=8)
    teacher = output(features)
    teacher.instance_quality = torch.tensor([0.2, 0.6, 0.4])
    student = output([f - 0.5 for f in features])
    result = distiller(student=student, teacher=teacher, batch=make_batch(TWO_IMAGES))
    assert float(result.stats["oracle/weight_min"]) == pytest.approx(lowest, rel=1e-5)
    assert float(result.stats["oracle/weight_max"]) == pytest.approx(highest, rel=1e-5)
    assert float(result.losses["loss_oracle"]) == pytest.approx(10.0 * 0.25, rel=1e-5)
    with pytest.raises(ValueError, match="needs the teacher's instance_quality"):
        distiller(student=student, teacher=output(features), batch=make_batch(TWO_IMAGES))


def test_classes_oracle_gives_the_named_classes_no_weight_at_uniform_strength():
    distiller = build_distiller(
        "oracle", student_config=config(), teacher_config=config(), source="classes", classes=["b"],
        feature_scale="none", weight=1.0,
    )  # fmt: skip
    assert not (distiller.needs_teacher_instance_losses or distiller.needs_student_instance_losses)
    batch = make_batch(TWO_IMAGES)
    batch.class_labels = [torch.tensor([0, 1]), torch.tensor([0])]  # the second box of the first image is a "b"
    result = _oracle_loss_and_weights(distiller, batch)
    # Raw weights (1, 0 | 1), as for the noise oracle: (4/3, 0 | 4/3), the loss that of uniform weights.
    assert float(result.stats["oracle/weight_min"]) == 0.0
    assert float(result.stats["oracle/weight_max"]) == pytest.approx(4 / 3, rel=1e-5)
    assert float(result.losses["loss_oracle"]) == pytest.approx(0.25, rel=1e-5)
    batch.class_labels = [torch.tensor([0, 0]), torch.tensor([0])]  # no "b": every weight 1
    result = _oracle_loss_and_weights(distiller, batch)
    assert float(result.stats["oracle/weight_min"]) == float(result.stats["oracle/weight_max"]) == 1.0


def test_classes_oracle_refuses_a_class_the_student_does_not_have_and_classes_without_their_source():
    with pytest.raises(ValueError, match=r"oracle source 'classes': \['ring'\] not among the student's classes"):
        build_distiller("oracle", student_config=config(), teacher_config=config(), source="classes", classes=["ring"])
    with pytest.raises(ValueError, match="option 'classes' names the classes weighted 0 by source 'classes'"):
        build_distiller("oracle", student_config=config(), teacher_config=config(), source="classes")
    with pytest.raises(ValueError, match="option 'classes' names the classes weighted 0 by source 'classes'"):
        build_distiller("oracle", student_config=config(), teacher_config=config(), classes=["a"])


# ------------------------------------------------------------------------------------ LD refusals


def test_ld_refuses_unequal_reg_max_naming_both():
    with pytest.raises(ValueError, match="student reg_max=2, teacher reg_max=16"):
        build_distiller("ld", student_config=config(reg_max=2), teacher_config=config(reg_max=16))


def test_ld_refuses_unequal_strides_naming_both():
    distiller = build_distiller("ld", student_config=config(), teacher_config=config())
    batch = make_batch(TWO_IMAGES, positive_mask=some_positives(), teacher_strides=[16, 32, 64])
    with pytest.raises(ValueError, match=r"student strides=\[8, 16, 32\], teacher strides=\[16, 32, 64\]"):
        distiller(student=output(), teacher=output(), batch=batch)


def test_ld_needs_the_positive_mask():
    distiller = build_distiller("ld", student_config=config(), teacher_config=config())
    assert distiller.needs_positive_mask
    with pytest.raises(ValueError, match="positive_mask"):
        distiller(student=output(), teacher=output(), batch=make_batch(TWO_IMAGES))


def test_positive_anchor_mask_lies_inside_the_boxes():
    torch.manual_seed(0)
    model = GFLForObjectDetection(config(channels=16, reg_max=16))
    pixels = torch.randn(2, 3, 64, 64)
    labels = [
        {"class_labels": torch.tensor([1]), "boxes": torch.tensor([[0.25, 0.5, 0.25, 0.5]])},  # x 8-24, y 16-48
        {"class_labels": torch.zeros(0, dtype=torch.long), "boxes": torch.zeros(0, 4)},
    ]
    outputs = model(pixel_values=pixels)
    mask = model.positive_anchor_mask(outputs.fpn_features, model.valid_sizes(pixels, None), labels)
    assert mask.shape == (2, outputs.logits.shape[1])
    assert mask[0].any() and not mask[1].any()
    points, _, _ = model._anchor_points(list(outputs.fpn_features))
    inside = (points[:, 0] > 8) & (points[:, 0] < 24) & (points[:, 1] > 16) & (points[:, 1] < 48)
    assert inside[mask[0]].all()


# ----------------------------------------------------------------------------------------- combining


def test_combined_method_is_parsed_and_gets_options_per_part():
    assert method_parts("liaf+ld") == ["liaf", "ld"] and method_parts("pkd") == ["pkd"]
    distiller = build_distiller(
        "liaf+ld", student_config=config(), teacher_config=config(), liaf={"alpha": 2.0}, ld={"weight": 0.5}
    )
    assert isinstance(distiller, CompositeDistiller)
    assert list(distiller.parts) == ["liaf", "ld"]
    assert distiller.parts["liaf"].config.alpha == 2.0 and distiller.parts["ld"].config.weight == 0.5
    assert distiller.needs_teacher and distiller.needs_positive_mask and not distiller.needs_teacher_loss
    assert build_distiller("mimic+aid", student_config=config(), teacher_config=config()).needs_teacher_instance_losses


def test_method_settings_are_what_the_built_distiller_uses():
    settings = method_settings("liaf+ld", {"ld": {"weight": 0.5}})
    built = build_distiller("liaf+ld", student_config=config(), teacher_config=config(), ld={"weight": 0.5})
    assert settings["ld"]["weight"] == 0.5 == built.parts["ld"].config.weight
    # The options left out appear with the values the distiller was built with.
    assert settings["ld"]["temperature"] == built.parts["ld"].config.temperature
    assert settings["liaf"]["alpha"] == built.parts["liaf"].config.alpha
    assert settings["liaf"]["objective"] == built.parts["liaf"].config.objective
    assert method_settings("none") == {}


def test_method_specs_of_the_benchmark_command_lines():
    assert parse_method_spec("liaf+ld") == ("liaf+ld", "liaf+ld", {})
    assert parse_method_spec('bg=liaf:{"beta": 5.0}') == ("bg", "liaf", {"beta": 5.0})
    label, method, options = parse_method_spec('a1=liaf+ld:{"liaf": {"alpha": 1.0}}')
    built = build_distiller(method, student_config=config(), teacher_config=config(), **options)
    assert (label, built.parts["liaf"].config.alpha) == ("a1", 1.0)
    for spec, message in [
        ('x=liaf:{"bta": 1}', r"'liaf' has no options \['bta'\]"),
        ('x=liaf+ld:{"liaf": {"bta": 1}, "q": 2}', r"no options \['q', 'liaf.bta'\]"),
        ("x=liaf:[1]", "must be a JSON object, got list"),
        ("x=liaf:{beta: 1}", "are not JSON"),
        ("x=nope", "Unknown distillation method 'nope'"),
    ]:
        with pytest.raises(ValueError, match=message):
            parse_method_spec(spec)


def test_combined_losses_are_the_union_of_the_parts():
    distiller = build_distiller("liaf+ld", student_config=config(), teacher_config=config(), ld={"weight": 0.5})
    generator = torch.Generator().manual_seed(9)
    teacher = output(random_maps(8, seed=10), [torch.randn(2, 12, s, s, generator=generator) for s in SIZES])
    student = output(random_maps(8, seed=11))
    batch = make_batch(TWO_IMAGES, positive_mask=some_positives())
    result = distiller(student=student, teacher=teacher, batch=batch)
    assert set(result.losses) == {"loss_liaf", "loss_liaf_div", "loss_liaf_entropy", "loss_ld"}
    assert "liaf/weight_entropy_l0" in result.stats and "ld/num_positives" in result.stats
    alone = build_distiller("ld", student_config=config(), teacher_config=config(), weight=0.5)
    expected = alone(student=student, teacher=teacher, batch=batch).losses["loss_ld"]
    assert float(result.losses["loss_ld"]) == pytest.approx(float(expected), rel=1e-6)


def test_combined_methods_refuse_bad_names_options_and_clashing_keys():
    with pytest.raises(ValueError, match="Unknown distillation method 'nope'"):
        build_distiller("liaf+nope", student_config=config(), teacher_config=config())
    with pytest.raises(ValueError, match="more than once"):
        build_distiller("ld+ld", student_config=config(), teacher_config=config())
    with pytest.raises(ValueError, match="keyed by part name"):
        build_distiller("liaf+ld", student_config=config(), teacher_config=config(), weight=0.5)
    twins = CompositeDistiller(
        parts={
            "first": MimicDistiller(student_config=config(), teacher_config=config()),
            "second": MimicDistiller(student_config=config(), teacher_config=config()),
        }
    )
    with pytest.raises(ValueError, match="both report the loss 'loss_mimic'"):
        twins(student=output(), teacher=output(), batch=make_batch(TWO_IMAGES))


def test_command_line_accepts_combined_methods():
    arguments = DistillationArguments(
        teacher_model_name_or_path="teacher", method="liaf+ld", method_options='{"ld": {"weight": 0.5}}'
    )
    assert arguments.options == {"ld": {"weight": 0.5}}
    with pytest.raises(ValueError, match="--method"):
        DistillationArguments(teacher_model_name_or_path="teacher", method="liaf+nope")


# ------------------------------------------------------------------------------------------ training


@pytest.mark.parametrize(
    ("method", "logged"),
    [
        ("mimic", {"loss_mimic", "mimic/error_l4"}),
        ("fgd", {"loss_fgd_fg", "loss_fgd_bg", "loss_fgd_attention", "loss_fgd_global"}),
        ("pkd", {"loss_pkd", "pkd/correlation_l0"}),
        ("ld", {"loss_ld", "ld/num_positives"}),
        ("aid", {"loss_aid", "aid/teacher_loss"}),
        ("liaf+ld", {"loss_liaf", "loss_ld"}),
    ],
)
def test_two_training_steps(shapes, teacher_dir, tmp_path, method, logged):
    trainer = make_distillation_trainer(
        shapes, teacher_dir, tmp_path / "run", method=method, evaluate_teacher_at_start=False
    )
    distiller_before = {k: v.clone() for k, v in trainer.distillation_model.distiller.state_dict().items()}
    trainer.train()
    entries = [entry for entry in trainer.state.log_history if "loss" in entry]
    assert len(entries) == 2 and all(math.isfinite(entry["loss"]) for entry in entries)
    assert logged <= set(entries[0])
    if method == "ld":
        assert entries[0]["ld/num_positives"] > 0
    if method == "aid":
        assert entries[0]["aid/teacher_loss"] > 0
    # The teacher is 48 wide, the student 32: the align convs (and FGD's context blocks) train; LD owns nothing.
    after = trainer.distillation_model.distiller.state_dict()
    assert bool(distiller_before) == (method != "ld")
    assert all(name in after for name in distiller_before)
    if distiller_before:
        assert any(not torch.equal(value, after[name]) for name, value in distiller_before.items())


# ------------------------------------------------------------------------------------------ method configs


def test_a_method_takes_its_typed_config_and_records_it():
    from liaf_hf.distillation import AIDConfig, LDConfig, LIAFConfig

    built = build_distiller("liaf", student_config=config(), teacher_config=config(), config=LIAFConfig(alpha=2.0))
    assert built.config == LIAFConfig(alpha=2.0) and built.config.objective == "robust"
    assert method_settings("liaf", LIAFConfig(alpha=2.0)) == method_settings("liaf", {"alpha": 2.0})
    combined = build_distiller(
        "liaf+ld", student_config=config(), teacher_config=config(), config={"ld": LDConfig(weight=0.5)}
    )
    assert combined.parts["ld"].config.weight == 0.5 and combined.parts["liaf"].config == LIAFConfig()
    with pytest.raises(ValueError, match="'liaf' takes a LIAFConfig, got a AIDConfig"):
        build_distiller("liaf", student_config=config(), teacher_config=config(), config=AIDConfig())
    # The checks hold for a config built in Python too, not only for options parsed from the command line.
    with pytest.raises(
        ValueError, match=r"objective must be one of \('joint', 'robust', 'task', 'lookahead'\), got 'nope'"
    ):
        LIAFConfig(objective="nope")
    with pytest.raises(ValueError, match="decay must be non-negative"):
        AIDConfig(decay=-1.0)
    with pytest.raises(AttributeError):
        built.config.alpha = 3.0  # frozen: a built method's options cannot drift from its run's record


def test_what_the_model_card_and_the_pictures_use_is_declared_on_the_method():
    from liaf_hf.distillation import method_class

    for name in available_methods():
        method = method_class(name)
        assert method.description and method.description != Distiller.description, name
    assert method_class("liaf").selects_instances and not method_class("aid").selects_instances
    assert method_class("ld").reference == "LD, Zheng et al., CVPR 2022"
