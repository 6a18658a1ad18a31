"""LIAF-KD distiller and its instance masks, on hand-built features where the answer is known."""

import math

import pytest
import torch

from liaf_hf import GFLConfig
from liaf_hf.distillation import LIAFDistiller, build_distiller
from liaf_hf.distillation._features import squared_error_per_cell
from liaf_hf.distillation._instances import InstanceDiscrepancy, InstanceLayout
from liaf_hf.distillation._masks import (
    box_cell_masks,
    foreground_background_masks,
    gaussian_instance_masks,
    multi_level_background_masks,
    multi_level_gaussian_masks,
)
from liaf_hf.distillation.base import DistillationBatch
from liaf_hf.models.gfl.modeling_gfl import GFLObjectDetectionOutput
from tiny import ROOT, load_script

SIZES = (8, 4, 2)
STRIDES = [8, 16, 32]


def config(channels=8, levels=3, id2label=None):
    return GFLConfig(
        backbone="resnet18", fpn_channels=channels, num_fpn_levels=levels, id2label=id2label or {0: "a", 1: "b"}
    )


def output(features, num_classes=2, requires_grad=False):
    features = tuple(f.clone().requires_grad_(requires_grad) for f in features)
    logits = tuple(torch.zeros(f.shape[0], num_classes, *f.shape[-2:]) for f in features)
    return GFLObjectDetectionOutput(fpn_features=features, class_logits=logits)


def random_features(batch=2, channels=8, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return [torch.randn(batch, channels, s, s, generator=generator) for s in SIZES]


def make_batch(boxes_per_image, labels_per_image=None, progress=0.5):
    boxes = [torch.tensor(b, dtype=torch.float32).reshape(-1, 4) for b in boxes_per_image]
    labels = labels_per_image or [torch.zeros(len(b), dtype=torch.long) for b in boxes]
    return DistillationBatch(
        boxes=boxes,
        class_labels=[torch.as_tensor(x, dtype=torch.long) for x in labels],
        ignore_boxes=[torch.zeros(0, 4) for _ in boxes],
        input_size=(64, 64),
        valid_sizes=torch.full((len(boxes), 2), 64.0),
        strides=STRIDES,
        progress=progress,
    )


TWO_IMAGES = [[[4, 4, 30, 20], [36, 30, 60, 62], [10, 40, 22, 52]], [[0, 0, 64, 64]]]


def test_equal_features_give_zero_feature_loss():
    distiller = build_distiller("liaf", student_config=config(), teacher_config=config())
    features = random_features()
    result = distiller(student=output(features), teacher=output(features), batch=make_batch(TWO_IMAGES))
    assert float(result.losses["loss_liaf"].detach()) == 0.0


def test_hand_worked_value_for_a_constant_offset():
    """One instance per image: its weight is exactly 1, and with T - S = c everywhere the instance
    discrepancy is c^2 whatever the mask, so loss_liaf = alpha * c^2."""
    distiller = build_distiller(
        "liaf", student_config=config(), teacher_config=config(), alpha=2.0, feature_scale="none"
    )
    teacher = random_features()
    student = [t - 0.5 for t in teacher]
    result = distiller(
        student=output(student), teacher=output(teacher), batch=make_batch([[[4, 4, 30, 20]], [[8, 8, 60, 40]]])
    )
    assert float(result.losses["loss_liaf"].detach()) == pytest.approx(2.0 * 0.25, rel=1e-5)
    # Relative to the teacher's energy the same offset gives c^2 / mean(T^2) per level.
    scaled = build_distiller("liaf", student_config=config(), teacher_config=config(), alpha=2.0)
    expected = 2.0 * sum(0.25 / float(t.square().mean()) for t in teacher) / len(teacher)
    result = scaled(
        student=output(student), teacher=output(teacher), batch=make_batch([[[4, 4, 30, 20]], [[8, 8, 60, 40]]])
    )
    assert float(result.losses["loss_liaf"].detach()) == pytest.approx(expected, rel=1e-5)


@pytest.mark.parametrize("normalise", ["mean", "softmax"])
def test_instance_weights_average_one_per_image(normalise):
    torch.manual_seed(0)  # the selectors' initial weights
    distiller = build_distiller("liaf", student_config=config(), teacher_config=config(), normalise=normalise)
    torch.nn.init.normal_(distiller.selector.selector_vectors, std=5.0)  # make the weights far from uniform
    teacher, student = random_features(seed=1), random_features(seed=2)
    selections = distiller.select(student=output(student), teacher=output(teacher), batch=make_batch(TWO_IMAGES))
    for selection in selections:
        assert selection.weights.shape == (2, 3)
        assert selection.instance_mask.tolist() == [[True, True, True], [True, False, False]]
        assert float(selection.weights[0].sum().detach()) == pytest.approx(3.0, rel=1e-5)
        assert float(selection.weights[1, 0]) == pytest.approx(1.0, rel=1e-5)
        assert float(selection.weights[1, 1:].abs().sum()) == 0.0
    assert float(selections[0].weights[0].std()) > 0.01


def test_batch_normalised_weights_average_one_over_the_images_and_let_a_lone_instance_move():
    torch.manual_seed(0)
    distiller = build_distiller(
        "liaf", student_config=config(), teacher_config=config(), normalise_over="batch", objective="robust"
    )
    torch.nn.init.normal_(distiller.selector.selector_vectors, std=5.0)
    teacher, student = random_features(seed=1), random_features(seed=2)
    batch = make_batch(TWO_IMAGES)
    for selection in distiller.select(student=output(student), teacher=output(teacher), batch=batch):
        image_means = selection.weights.sum(dim=1) / torch.tensor([3.0, 1.0])
        assert float(image_means.mean().detach()) == pytest.approx(1.0, rel=1e-5)
        assert float(selection.weights[1, 1:].abs().sum()) == 0.0
    lone_weights = [float(selection.weights[1, 0]) for selection in distiller.select(
        student=output(student), teacher=output(teacher), batch=batch)]  # fmt: skip
    assert any(abs(weight - 1.0) > 0.05 for weight in lone_weights)  # per image it would be exactly 1
    # The entropy term is the weights' KL divergence from uniform over the batch: 0 at uniform weights.
    torch.nn.init.zeros_(distiller.selector.selector_vectors)
    result = distiller(student=output(student), teacher=output(teacher), batch=batch)
    assert float(result.losses["loss_liaf_entropy"]) == pytest.approx(0.0, abs=1e-5)


def test_optional_selector_inputs_reach_the_selectors_and_are_asked_of_the_models():
    distiller = build_distiller(
        "liaf", student_config=config(), teacher_config=config(),
        use_teacher_quality=True, use_student_loss=True, use_scale=True, use_class=True,
    )  # fmt: skip
    assert distiller.needs_teacher_instance_losses and distiller.needs_student_instance_losses
    # Descriptors (2 x 8), log(1 + d), progress, student quality, teacher quality and loss, student loss, scale,
    # two classes.
    assert distiller.selector.embed[0].in_features == 16 + 1 + 1 + 1 + 2 + 1 + 1 + 2
    teacher_features, student_features = random_features(seed=1), random_features(seed=2)
    batch = make_batch(TWO_IMAGES, labels_per_image=[[0, 1, 1], [0]])
    with pytest.raises(ValueError, match="use_teacher_quality needs the teacher's instance_quality"):
        distiller(student=output(student_features), teacher=output(teacher_features), batch=batch)

    def weights(teacher_quality):
        teacher, student = output(teacher_features), output(student_features)
        teacher.instance_quality, teacher.instance_losses = teacher_quality, torch.ones(4)
        student.instance_losses = torch.ones(4)
        return torch.stack([s.weights for s in distiller.select(student=student, teacher=teacher, batch=batch)])

    # What the teacher knows of each instance changes the weights.
    assert not torch.allclose(weights(torch.zeros(4)), weights(torch.tensor([0.9, 0.1, 0.5, 0.3])))


def test_gradients_reach_the_student_align_convs_and_selectors_but_not_the_teacher():
    distiller = build_distiller("liaf", student_config=config(channels=4), teacher_config=config(channels=8))
    student = output(random_features(channels=4, seed=3), requires_grad=True)
    teacher = output(random_features(channels=8, seed=4), requires_grad=True)
    result = distiller(student=student, teacher=teacher, batch=make_batch(TWO_IMAGES))
    sum(result.losses.values()).backward()
    assert all(f.grad is not None and f.grad.abs().sum() > 0 for f in student.fpn_features)
    assert all(f.grad is None for f in teacher.fpn_features)
    assert all(conv.weight.grad.abs().sum() > 0 for conv in distiller.aligner.convs)
    for name, parameter in distiller.selector.named_parameters():
        assert parameter.grad is not None and parameter.grad.abs().sum() > 0, name


def test_selector_follows_the_student_learning_state():
    """Same teacher, two students: the weights differ, since the student's features and discrepancy are
    selector inputs."""
    distiller = build_distiller("liaf", student_config=config(), teacher_config=config(), use_student_quality=False)
    teacher = random_features(seed=5)
    batch = make_batch(TWO_IMAGES)
    near = distiller.select(student=output([t + 0.01 for t in teacher]), teacher=output(teacher), batch=batch)
    far = distiller.select(student=output(random_features(seed=6)), teacher=output(teacher), batch=batch)
    assert not torch.allclose(near[0].weights, far[0].weights)


def test_robust_objective_reverses_the_selector_gradient_only():
    teacher = random_features(seed=7)
    student_features = random_features(seed=8)
    grads = {}
    for objective in ("joint", "robust"):
        torch.manual_seed(0)
        distiller = build_distiller("liaf", student_config=config(), teacher_config=config(), objective=objective)
        student = output(student_features, requires_grad=True)
        result = distiller(student=student, teacher=output(teacher), batch=make_batch(TWO_IMAGES))
        assert ("loss_liaf_entropy" in result.losses) == (objective == "robust")
        result.losses["loss_liaf"].backward()
        grads[objective] = (distiller.selector.selector_vectors.grad.clone(), student.fpn_features[0].grad.clone())
    assert torch.allclose(grads["robust"][0], -grads["joint"][0])
    assert torch.allclose(grads["robust"][1], grads["joint"][1])


def student_with_task_loss(channels=4, seed=20):
    """A student output whose `loss` is a fixed smooth function of its FPN maps, as a detection loss is."""
    student = output(random_features(channels=channels, seed=seed), requires_grad=True)
    generator = torch.Generator().manual_seed(seed + 1)
    targets = [torch.randn(f.shape, generator=generator) for f in student.fpn_features]
    student.loss = sum((f.tanh() - t).square().mean() for f, t in zip(student.fpn_features, targets))
    return student


def test_task_objective_selectors_seek_the_instances_whose_imitation_lowers_the_detection_loss():
    """objective="task": the student gets the joint objective's pull (weights as given), and the selectors
    ascend mean_j w_lj b_lj with b_lj = <dd_lj/dS_l, g_l> (g_l: the detection loss's gradient on the student's
    map), scaled to unit RMS per level. The reference b is taken instance by instance with autograd, through
    an align conv (student 4 channels, teacher 8)."""
    teacher = output(random_features(channels=8, seed=21))
    batch = make_batch(TWO_IMAGES)
    runs = {}
    for objective in ("joint", "task"):
        torch.manual_seed(0)
        distiller = build_distiller(
            "liaf", student_config=config(channels=4), teacher_config=config(channels=8), objective=objective, alpha=2.0
        )
        student = student_with_task_loss()
        result = distiller(student=student, teacher=teacher, batch=batch)
        assert ("loss_liaf_entropy" in result.losses) == (objective == "task")
        result.losses["loss_liaf"].backward()
        runs[objective] = (distiller, student, result)
    (joint, joint_student, joint_result), (task, task_student, task_result) = runs["joint"], runs["task"]
    # The same value, and the same pull on the student and on the align convs.
    assert float(task_result.losses["loss_liaf"].detach()) == pytest.approx(
        float(joint_result.losses["loss_liaf"].detach()), rel=1e-6
    )
    for joint_map, task_map in zip(joint_student.fpn_features, task_student.fpn_features):
        assert torch.allclose(task_map.grad, joint_map.grad, rtol=1e-5, atol=1e-8)
    for joint_conv, task_conv in zip(joint.aligner.convs, task.aligner.convs):
        assert torch.allclose(task_conv.weight.grad, joint_conv.weight.grad, rtol=1e-5, atol=1e-8)

    # The reference: b_lj from autograd, and the selectors' gradient of -alpha mean_l mean_i mean_j w_lj b_lj.
    torch.manual_seed(0)
    reference = build_distiller(
        "liaf", student_config=config(channels=4), teacher_config=config(channels=8), objective="task", alpha=2.0
    )
    student = student_with_task_loss()
    task_gradients = torch.autograd.grad(student.loss, student.fpn_features)
    layout = InstanceLayout.from_boxes(batch.boxes, batch.class_labels, device=torch.device("cpu"))
    instances = InstanceDiscrepancy.of(
        reference.aligner.levels(student, teacher), layout=layout, strides=STRIDES, feature_scale="teacher"
    )
    alignment = torch.zeros(3, 2, 3)
    for level in range(3):
        for image, slot in [(0, 0), (0, 1), (0, 2), (1, 0)]:
            (instance_gradient,) = torch.autograd.grad(
                instances.discrepancy[level, image, slot], student.fpn_features[level], retain_graph=True
            )
            alignment[level, image, slot] = (instance_gradient * task_gradients[level]).sum()
    real = alignment[:, [0, 0, 0, 1], [0, 1, 2, 0]]
    alignment = alignment / real.square().mean(dim=1).sqrt()[:, None, None]
    weights = torch.stack(
        [selection.weights for selection in reference.select(student=student, teacher=teacher, batch=batch)]
    )
    per_image_mean = (weights * alignment).sum(dim=2) / torch.tensor([3.0, 1.0])
    (-2.0 * per_image_mean.mean(dim=1).mean()).backward()
    for name, parameter in task.selector.named_parameters():
        expected = dict(reference.selector.named_parameters())[name].grad
        assert parameter.grad.abs().max() > 0, name
        assert torch.allclose(parameter.grad, expected, rtol=1e-4, atol=1e-7), name
    # The log says whether the selectors lean towards the aligned instances.
    assert "liaf/alignment_gain_l0" in task_result.stats


def test_lookahead_objective_is_the_task_objective_along_the_held_out_directions():
    """objective="lookahead" aligns the selectors with `DistillationBatch.held_out_directions` where "task"
    takes the student's own loss gradient: given that gradient as the directions, both train alike."""
    teacher = output(random_features(channels=8, seed=21))
    runs = {}
    for objective in ("task", "lookahead"):
        torch.manual_seed(0)
        distiller = build_distiller(
            "liaf", student_config=config(channels=4), teacher_config=config(channels=8), objective=objective, alpha=2.0
        )
        assert distiller.needs_held_out_directions == (objective == "lookahead")
        student = student_with_task_loss()
        batch = make_batch(TWO_IMAGES)
        if objective == "lookahead":
            batch.held_out_directions = torch.autograd.grad(student.loss, student.fpn_features, retain_graph=True)
            student.loss = None  # lookahead does not read the student's loss on the batch
        result = distiller(student=student, teacher=teacher, batch=batch)
        sum(result.losses.values()).backward()
        runs[objective] = (distiller, result)
    (task, task_result), (lookahead, lookahead_result) = runs["task"], runs["lookahead"]
    assert set(task_result.losses) == set(lookahead_result.losses)
    for name, parameter in lookahead.selector.named_parameters():
        expected = dict(task.selector.named_parameters())[name].grad
        assert parameter.grad.abs().max() > 0 and torch.allclose(parameter.grad, expected, rtol=1e-5, atol=1e-8), name
    assert lookahead_result.stats["liaf/alignment_gain_l0"] == pytest.approx(
        float(task_result.stats["liaf/alignment_gain_l0"]), rel=1e-5, abs=1e-8
    )

    # Without the directions (a caller that is not LIAFDistillationTrainer), it says what is missing.
    with pytest.raises(ValueError, match="held_out_directions"):
        lookahead(student=student_with_task_loss(), teacher=teacher, batch=make_batch(TWO_IMAGES))


def test_task_objective_needs_the_students_own_loss():
    distiller = build_distiller("liaf", student_config=config(), teacher_config=config(), objective="task")
    with pytest.raises(ValueError, match="detection loss"):
        distiller(
            student=output(random_features(), requires_grad=True),
            teacher=output(random_features(seed=1)),
            batch=make_batch(TWO_IMAGES),
        )


def test_alpha_sets_the_pull_on_the_student_but_not_how_the_selectors_choose():
    """The selectors' gradient from the feature and entropy terms scales with alpha as a whole, so under a
    scale-free optimiser (Adam) they pick the same instances at any alpha; the student's pull scales too."""
    teacher, student_features = random_features(seed=7), random_features(seed=8)
    grads = {}
    for alpha in (1.0, 10.0):
        torch.manual_seed(0)
        distiller = build_distiller(
            "liaf", student_config=config(), teacher_config=config(), alpha=alpha, diversity_weight=0.0
        )
        student = output(student_features, requires_grad=True)
        result = distiller(student=student, teacher=output(teacher), batch=make_batch(TWO_IMAGES))
        (result.losses["loss_liaf"] + result.losses["loss_liaf_entropy"]).backward()
        grads[alpha] = (distiller.selector.selector_vectors.grad.clone(), student.fpn_features[0].grad.clone())
    assert grads[1.0][0].abs().max() > 0
    assert torch.allclose(grads[10.0][0], 10 * grads[1.0][0], rtol=1e-4, atol=1e-7)
    assert torch.allclose(grads[10.0][1], 10 * grads[1.0][1], rtol=1e-4, atol=1e-7)


def test_diversity_term_is_the_dice_overlap_of_the_selectors():
    distiller = build_distiller(
        "liaf", student_config=config(), teacher_config=config(), num_selectors=2, diversity_weight=1.0
    )
    from liaf_hf.distillation.liaf import _dice_overlap

    assert float(_dice_overlap(torch.tensor([[1.0, 0.0], [0.0, 1.0]]))) == 0.0
    assert float(_dice_overlap(torch.tensor([[0.3, 0.3], [0.8, 0.8]]))) == pytest.approx(1.0)
    # a = (1, 1), b = (1, 0): 2 * 1 / (2 + 1)
    assert float(_dice_overlap(torch.tensor([[1.0, 1.0], [1.0, 0.0]]))) == pytest.approx(2 / 3)
    features = random_features(seed=9)
    result = distiller(student=output(features), teacher=output(features), batch=make_batch(TWO_IMAGES))
    assert 0.0 < float(result.losses["loss_liaf_div"]) <= 1.0


def test_statistics_per_level_are_reported():
    distiller = build_distiller("liaf", student_config=config(), teacher_config=config())
    result = distiller(
        student=output(random_features(seed=10)), teacher=output(random_features(seed=11)), batch=make_batch(TWO_IMAGES)
    )
    for level in range(3):
        for stat in ("weight_mean", "weight_min", "weight_max", "weight_entropy"):
            assert f"liaf/{stat}_l{level}" in result.stats
        assert (
            float(result.stats[f"liaf/weight_min_l{level}"]) <= 1.0 <= float(result.stats[f"liaf/weight_max_l{level}"])
        )
        # Image 1 has one instance (entropy 0), image 0 three: the mean entropy is at most log(3) / 2.
        assert float(result.stats[f"liaf/weight_entropy_l{level}"]) <= math.log(3) / 2 + 1e-6


def test_background_term_only_when_asked():
    features_t, features_s = random_features(seed=12), random_features(seed=13)
    plain = build_distiller("liaf", student_config=config(), teacher_config=config())
    with_background = build_distiller("liaf", student_config=config(), teacher_config=config(), beta=0.5)
    batch = make_batch(TWO_IMAGES[:1] * 2)
    assert "loss_liaf_bg" not in plain(student=output(features_s), teacher=output(features_t), batch=batch).losses
    background = with_background(student=output(features_s), teacher=output(features_t), batch=batch)
    assert float(background.losses["loss_liaf_bg"]) > 0


def test_batch_without_instances_gives_zero_losses_that_reach_every_parameter():
    distiller = build_distiller("liaf", student_config=config(channels=4), teacher_config=config(channels=8))
    result = distiller(
        student=output(random_features(channels=4), requires_grad=True),
        teacher=output(random_features(channels=8)),
        batch=make_batch([[], []]),
    )
    total = sum(result.losses.values())
    assert float(total) == 0.0
    total.backward()
    assert all(p.grad is not None for p in distiller.parameters())


def test_mismatched_teacher_is_refused_with_the_reason():
    with pytest.raises(ValueError, match="FPN levels"):
        build_distiller("liaf", student_config=config(levels=3), teacher_config=config(levels=4))
    with pytest.raises(ValueError, match="same label set"):
        build_distiller("liaf", student_config=config(), teacher_config=config(id2label={0: "a", 1: "c"}))
    with pytest.raises(ValueError, match="objective"):
        build_distiller("liaf", student_config=config(), teacher_config=config(), objective="greedy")
    distiller = build_distiller("liaf", student_config=config(), teacher_config=config())
    small = [f[..., :-1, :-1] for f in random_features()]
    with pytest.raises(ValueError, match="FPN level 0"):
        distiller(student=output(small), teacher=output(random_features()), batch=make_batch(TWO_IMAGES))
    assert isinstance(distiller, LIAFDistiller)


# ------------------------------------------------------------------------------------------- masks


def test_gaussian_mask_sums_to_one_and_peaks_inside_the_box():
    masks = gaussian_instance_masks(torch.tensor([[16.0, 16.0, 48.0, 32.0]]), feature_size=(8, 8), stride=8)
    assert masks.shape == (1, 8, 8)
    assert float(masks.sum()) == pytest.approx(1.0)
    inside = masks[0, 2:4, 2:6]  # cell centres 20, 28 (rows) and 20..44 (columns) lie in the box
    assert torch.allclose(inside, inside.max().expand_as(inside))
    assert float(masks[0, 0, 0]) < float(inside.max())
    assert float(masks[0, 7, 7]) == 0.0  # beyond the window twice the box's size


def test_gaussian_mask_follows_its_formula_up_to_the_windows_edge():
    """The documented mask, computed cell by cell: 1 inside the box, exp(-d^2 / (2 (side / 6)^2)) outside it
    per axis, 0 beyond a window twice the box's size. Here cell centres fall exactly on the window's edge (row
    centres 12 and 44 for a box spanning 20-36 in y): they are inside it, with the edge's value exp(-4.5)."""
    box = (10.0, 20.0, 30.0, 36.0)  # x1, y1, x2, y2

    def axis(low: float, high: float, size: int) -> list[float]:
        side, centre = high - low, (low + high) / 2
        values = []
        for index in range(size):
            point = (index + 0.5) * 8
            distance = max(low - point, point - high, 0.0)
            values.append(0.0 if abs(point - centre) > side else math.exp(-(distance**2) / (2 * (side / 6) ** 2)))
        return [value / sum(values) for value in values]

    xs, ys = axis(box[0], box[2], 8), axis(box[1], box[3], 8)
    expected = torch.tensor([[y * x for x in xs] for y in ys])
    assert expected[1, 2] > 0 and expected[5, 2] > 0 and expected[0, 2] == 0 and expected[6, 2] == 0
    boxes = torch.tensor([box])
    alone = gaussian_instance_masks(boxes, feature_size=(8, 8), stride=8)[0]
    together = multi_level_gaussian_masks(boxes, feature_sizes=[(8, 8), (4, 4)], strides=[8, 16])[0, :64]
    for masks in (alone, together.view(8, 8)):
        assert torch.allclose(masks, expected, rtol=1e-5, atol=1e-9)
        assert torch.equal(masks == 0, expected == 0)  # the same cells beyond the window


def test_box_smaller_than_a_cell_keeps_one_cell():
    masks = gaussian_instance_masks(torch.tensor([[65.0, 65.0, 67.0, 67.0]]), feature_size=(4, 4), stride=32)
    assert float(masks[0, 2, 2]) == pytest.approx(1.0)
    cells = box_cell_masks(torch.tensor([[65.0, 65.0, 67.0, 67.0]]), feature_size=(4, 4), stride=32)
    assert cells.sum() == 1 and bool(cells[0, 2, 2])


def test_all_levels_masks_at_once_equal_each_level_alone():
    """LIAF-KD computes every level's masks in one pass; each level's block must be that level's masks,
    including the fallback cell of boxes smaller than a cell and boxes near or past the grid's edge."""
    generator = torch.Generator().manual_seed(0)
    corners = torch.rand(40, 2, generator=generator) * 120
    boxes = torch.cat([corners, corners + torch.rand(40, 2, generator=generator) ** 3 * 100], dim=1)
    boxes = torch.cat([boxes, torch.tensor([[65.0, 65.0, 67.0, 67.0], [120.0, 90.0, 200.0, 140.0]])])
    sizes, strides = [(12, 16), (6, 8), (3, 4), (2, 2), (1, 1)], [8, 16, 32, 64, 128]
    together = multi_level_gaussian_masks(boxes, feature_sizes=sizes, strides=strides)
    alone = [
        gaussian_instance_masks(boxes, feature_size=size, stride=stride).flatten(1)
        for size, stride in zip(sizes, strides)
    ]
    assert torch.allclose(together, torch.cat(alone, dim=1), atol=1e-6)
    assert torch.allclose(together[:, :192].sum(dim=1), torch.ones(len(boxes)))


def test_background_excludes_boxes_and_padding():
    foreground, background = foreground_background_masks(
        torch.tensor([[0.0, 0.0, 16.0, 16.0]]), feature_size=(4, 4), stride=8, valid_size=(32.0, 24.0)
    )
    assert foreground[:2, :2].all() and foreground.sum() == 4
    assert float(background[:, 3].sum()) == 0.0  # column centre 28 >= valid width 24
    assert float(background.sum()) == pytest.approx(1.0)
    assert (background[background > 0] == background.max()).all()


def test_background_of_every_level_and_image_at_once_equals_each_alone():
    """Ignore regions, padding, an image without boxes, a box smaller than a cell (it still covers the cell
    holding its centre), a level wholly covered (an all-zero block): as `foreground_background_masks` per
    image and level."""
    boxes = [
        torch.tensor([[0.0, 0.0, 40.0, 40.0], [50.0, 50.0, 52.0, 51.0]]),
        torch.zeros(0, 4),
        torch.tensor([[8.0, 40.0, 60.0, 60.0], [40.0, 0.0, 64.0, 24.0]]),
        torch.tensor([[0.0, 0.0, 64.0, 64.0]]),
    ]
    valid_sizes = torch.tensor([[64.0, 64.0], [48.0, 32.0], [64.0, 40.0], [64.0, 64.0]])
    sizes, strides = [(8, 8), (4, 4), (2, 2), (1, 1)], [8, 16, 32, 64]
    together = multi_level_background_masks(boxes, feature_sizes=sizes, strides=strides, valid_sizes=valid_sizes)
    for image in range(len(boxes)):
        alone = [
            foreground_background_masks(boxes[image], feature_size=size, stride=stride, valid_size=valid_sizes[image])[
                1
            ].flatten()
            for size, stride in zip(sizes, strides)
        ]
        assert torch.allclose(together[image], torch.cat(alone), atol=1e-7), image
    assert together[0, 6 * 8 + 6] == 0  # the 2 x 1 px box at (50, 50) covers the P3 cell holding it
    assert together[3].sum() == 0  # every cell of every level is inside the image-sized box
    assert float(together[1, :64].sum()) == pytest.approx(1.0) and together[1, :64].view(8, 8)[:, 4:].sum() == 0


def test_background_term_is_the_background_masks_mean_relative_error():
    """loss_liaf_bg = beta * mean over levels and images of sum_p bg(p) |T - S|^2 / (C E_l), with ignore
    regions kept out of the background; also for a batch without instances (the term still trains)."""
    teacher, student = random_features(seed=20), random_features(seed=21)
    distiller = build_distiller("liaf", student_config=config(), teacher_config=config(), beta=2.0)
    for boxes in ([[[4, 4, 30, 20]], [[36, 30, 60, 62], [0, 0, 8, 8]]], [[], []]):
        batch = make_batch(boxes)
        batch.ignore_boxes = [torch.tensor([[40.0, 0.0, 64.0, 16.0]]), torch.zeros(0, 4)]
        batch.valid_sizes = torch.tensor([[64.0, 64.0], [64.0, 48.0]])
        student_output = output(student, requires_grad=True)
        loss = distiller(student=student_output, teacher=output(teacher), batch=batch).losses["loss_liaf_bg"]
        expected = 0.0
        for level, stride in enumerate(STRIDES):
            errors = squared_error_per_cell(teacher[level], student[level], feature_scale="teacher")
            for image in range(2):
                regions = torch.cat([batch.boxes[image], batch.ignore_boxes[image]])
                background = foreground_background_masks(
                    regions, feature_size=(SIZES[level],) * 2, stride=stride, valid_size=batch.valid_sizes[image]
                )[1]
                expected += float((background * errors[image]).sum()) / (2 * len(STRIDES))
        assert float(loss.detach()) == pytest.approx(2.0 * expected, rel=1e-5), boxes
        loss.backward()
        assert student_output.fpn_features[0].grad.abs().sum() > 0


def test_weights_survive_saturated_selectors():
    """Selectors trained to push every score to 0 (sigmoid underflow) still give weights that average 1."""
    distiller = build_distiller("liaf", student_config=config(), teacher_config=config())
    with torch.no_grad():
        distiller.selector.embed[2].bias.fill_(1e3)
        distiller.selector.selector_vectors.fill_(-1.0)  # every logit about -1e3 * sqrt(D)
    selections = distiller.select(
        student=output(random_features(seed=14)), teacher=output(random_features(seed=15)), batch=make_batch(TWO_IMAGES)
    )
    for selection in selections:
        assert torch.isfinite(selection.weights).all()
        assert float(selection.weights[0].sum()) == pytest.approx(3.0, rel=1e-5)


@pytest.mark.parametrize(
    "method, options",
    [
        ("liaf", {}),
        ("liaf", {"objective": "joint", "normalise": "softmax"}),
        ("liaf", {"normalise_over": "batch", "use_teacher_quality": True, "use_student_loss": True,
                  "use_scale": True, "use_class": True}),
        ("aid", {}),
        ("aid", {"weighting": "batch"}),
        ("oracle", {"source": "teacher_right_student_wrong"}),
    ],
    ids=["liaf", "liaf-joint-softmax", "liaf-batch-all-inputs", "aid", "aid-batch", "oracle"],
)  # fmt: skip
def test_instance_distillers_never_make_the_host_wait_for_the_device(method, options):
    # On a GPU, a value read back or a boolean mask's count stops the host from queueing kernels ahead of the
    # device. Which padded slots hold instances is known from the label lists' lengths, so the instance
    # distillers' forward and backward need neither; counted as benchmarks/step_cost.py counts them.
    counter_class = load_script(ROOT / "benchmarks" / "step_cost.py", "step_cost")._OperationCounter
    distiller = build_distiller(method, student_config=config(), teacher_config=config(), **options)
    student, teacher = output(random_features(batch=3), requires_grad=True), output(random_features(batch=3, seed=1))
    teacher.loss = torch.tensor(1.5)
    # The instance-level detection terms of the batch's four instances.
    teacher.instance_losses = student.instance_losses = torch.tensor([1.5, 0.5, 2.0, 1.0])
    teacher.instance_quality = torch.tensor([0.2, 0.9, 0.5, 0.7])
    batch = make_batch([TWO_IMAGES[0], [], TWO_IMAGES[1]])
    with counter_class() as counter:
        result = distiller(student=student, teacher=teacher, batch=batch)
        sum(result.losses.values()).backward()
    assert counter.kernels > 0
    assert counter.device_waits == 0


def test_instance_feature_means_and_discrepancy_equal_each_level_computed_alone():
    """The all-levels computation (one product per map, the squared error's own backward) against the plain
    per-level formulas of the module docstring, in value and in the gradient reaching the student."""
    teacher_maps = random_features(batch=2, seed=1)
    student_maps = [level.clone().requires_grad_(True) for level in random_features(batch=2, seed=2)]
    batch = make_batch(TWO_IMAGES)
    layout = InstanceLayout.from_boxes(batch.boxes)
    instances = InstanceDiscrepancy.of(
        list(zip(teacher_maps, student_maps)), layout=layout, strides=STRIDES, feature_scale="none", feature_means=True
    )
    upstream = torch.randn_like(instances.discrepancy)
    (instances.discrepancy * upstream).sum().backward()
    fast_gradients = [level.grad.clone() for level in student_maps]

    channels = teacher_maps[0].shape[1]
    for level in student_maps:
        level.grad = None
    expected_total = 0.0
    for level, (teacher_map, student_map, size, stride) in enumerate(zip(teacher_maps, student_maps, SIZES, STRIDES)):
        for image, image_boxes in enumerate(batch.boxes):
            masks = gaussian_instance_masks(image_boxes, feature_size=(size, size), stride=stride)  # (n, H, W)
            error = (teacher_map[image] - student_map[image]).square().mean(dim=0)  # (H, W)
            discrepancy = (masks * error).sum(dim=(1, 2))
            torch.testing.assert_close(instances.discrepancy[level, image, : len(image_boxes)], discrepancy.detach())
            expected_total = expected_total + (discrepancy * upstream[level, image, : len(image_boxes)]).sum()
            for slot, mask in enumerate(masks):
                means = instances.feature_means[level, image, slot]
                torch.testing.assert_close(means[:channels], (teacher_map[image] * mask).sum(dim=(1, 2)))
                torch.testing.assert_close(means[channels:], (student_map[image] * mask).sum(dim=(1, 2)).detach())
    assert not instances.feature_means.requires_grad
    expected_total.backward()
    for fast, expected in zip(fast_gradients, student_maps):
        torch.testing.assert_close(fast, expected.grad)
