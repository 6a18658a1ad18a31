"""GFL losses and ATSS assignment against values worked out by hand."""

import math

import pytest
import torch

from liaf_hf import GFLImageProcessor
from liaf_hf.models.gfl.loss_gfl import (
    ATSSAssigner,
    aligned_box_iou,
    distribution_focal_loss,
    giou_loss,
    quality_focal_loss,
)
from tiny import tiny_detector


class TestQualityFocalLoss:
    def test_positive_with_matching_quality_costs_only_its_negative_class(self):
        # p = 0.5 for both classes; class 0 is positive with quality 0.5, so its modulating factor
        # |0.5 - 0.5|^2 is 0; class 1 is a negative: BCE(p=0.5, 0) * 0.5^2 = ln2 / 4.
        loss = quality_focal_loss(torch.zeros(1, 2), torch.tensor([0]), torch.tensor([0.5]))
        assert loss.item() == pytest.approx(math.log(2) / 4, rel=1e-6)

    def test_positive_with_quality_one(self):
        # class 0: BCE(0.5, 1) * |1 - 0.5|^2 = ln2 / 4; class 1: ln2 / 4 as above.
        loss = quality_focal_loss(torch.zeros(1, 2), torch.tensor([0]), torch.tensor([1.0]))
        assert loss.item() == pytest.approx(math.log(2) / 2, rel=1e-6)

    def test_background_sample(self):
        # p = 0.2 on each of 3 classes, label 3 = background: 3 * (-ln 0.8) * 0.2^2.
        logits = torch.full((1, 3), math.log(0.25))
        loss = quality_focal_loss(logits, torch.tensor([3]), torch.tensor([0.0]))
        assert loss.item() == pytest.approx(3 * -math.log(0.8) * 0.04, rel=1e-5)

    def test_gradient_pushes_towards_quality(self):
        logits = torch.zeros(1, 1, requires_grad=True)
        quality_focal_loss(logits, torch.tensor([0]), torch.tensor([0.9])).sum().backward()
        assert logits.grad.item() < 0  # raising the logit lowers the loss


class TestDistributionFocalLoss:
    def test_uniform_distribution_costs_log_bins(self):
        loss = distribution_focal_loss(torch.zeros(1, 5), torch.tensor([1.3]))
        assert loss.item() == pytest.approx(math.log(5), rel=1e-6)

    def test_integer_target_is_plain_cross_entropy(self):
        logits = torch.log(torch.tensor([[0.1, 0.2, 0.4, 0.2, 0.1]]))
        assert distribution_focal_loss(logits, torch.tensor([2.0])).item() == pytest.approx(-math.log(0.4), rel=1e-5)

    def test_target_between_bins_mixes_both(self):
        logits = torch.log(torch.tensor([[0.1, 0.2, 0.4, 0.2, 0.1]]))
        expected = 0.5 * -math.log(0.2) + 0.5 * -math.log(0.4)
        assert distribution_focal_loss(logits, torch.tensor([1.5])).item() == pytest.approx(expected, rel=1e-5)


def test_giou_loss_hand_value():
    # IoU 1/7, enclosing box area 9, union 7: GIoU = 1/7 - 2/9.
    loss = giou_loss(torch.tensor([[0.0, 0.0, 2.0, 2.0]]), torch.tensor([[1.0, 1.0, 3.0, 3.0]]))
    assert loss.item() == pytest.approx(1 - (1 / 7 - 2 / 9), rel=1e-5)


def test_giou_loss_matches_torchvision_in_value_and_gradient():
    # Our clamp-based intersection must train exactly like torchvision's masked one: overlapping,
    # disjoint, touching and identical pairs.
    torchvision = pytest.importorskip("torchvision")
    generator = torch.Generator().manual_seed(0)
    corners = torch.rand(200, 2, 2, generator=generator) * 40
    boxes = torch.cat([corners[:, 0], corners[:, 0] + 1 + corners[:, 1]], dim=1)  # (200, 4), x2 > x1
    predicted = torch.cat([boxes[:100], torch.tensor([[0.0, 0.0, 2.0, 2.0], [5.0, 5.0, 9.0, 9.0]])])
    targets = torch.cat([boxes[100:], torch.tensor([[2.0, 0.0, 4.0, 2.0], [5.0, 5.0, 9.0, 9.0]])])
    weights = torch.rand(len(predicted), generator=generator)
    ours, theirs = predicted.clone().requires_grad_(), predicted.clone().requires_grad_()
    loss = giou_loss(ours, targets)
    reference = torchvision.ops.generalized_box_iou_loss(theirs, targets, reduction="none")
    (loss * weights).sum().backward()
    (reference * weights).sum().backward()
    assert torch.allclose(loss, reference, atol=1e-6)
    assert torch.allclose(ours.grad, theirs.grad, atol=1e-5)
    assert (loss[:100] > 1).any() and loss[-1].item() == pytest.approx(0.0, abs=1e-6)


def test_aligned_iou():
    iou = aligned_box_iou(
        torch.tensor([[0.0, 0.0, 2.0, 2.0], [0, 0, 1, 1]]), torch.tensor([[1.0, 1.0, 3.0, 3.0], [0, 0, 1, 1]])
    )
    assert iou.tolist() == pytest.approx([1 / 7, 1.0])


def grid_anchors(size: int = 4, stride: int = 8, anchor: int = 16) -> torch.Tensor:
    """(size*size, 4) square anchors of side `anchor` centred on a stride-8 grid, row-major."""
    centres = (torch.arange(size) + 0.5) * stride
    ys, xs = torch.meshgrid(centres, centres, indexing="ij")
    points = torch.stack([xs.reshape(-1), ys.reshape(-1)], 1)
    return torch.cat([points - anchor / 2, points + anchor / 2], 1)


class TestATSSAssigner:
    def test_hand_worked_single_level(self):
        # Ground truth [5, 2, 21, 18], centre (13, 10). The three closest anchor centres are (12, 12),
        # (12, 4) and (20, 12), with IoUs 210/302, 150/362 and 126/386; their mean + unbiased std is
        # 0.6714, so only the anchor at (12, 12) (index 5) is positive, and its centre is inside the box.
        anchors = grid_anchors()
        result = ATSSAssigner(topk=3).assign(
            anchors=anchors, num_anchors_per_level=[16], gt_boxes=torch.tensor([[5.0, 2.0, 21.0, 18.0]])
        )
        assert (result.gt_index >= 0).nonzero().flatten().tolist() == [5]
        assert result.gt_index[5].item() == 0
        assert not result.ignored.any()

    def test_candidate_needs_centre_inside_box(self):
        # A thin box beside the anchor centres: high-IoU candidates exist but no centre lies inside.
        anchors = grid_anchors()
        result = ATSSAssigner(topk=3).assign(
            anchors=anchors, num_anchors_per_level=[16], gt_boxes=torch.tensor([[13.0, 0.0, 19.0, 32.0]])
        )
        assert (result.gt_index < 0).all()

    def test_anchor_claimed_twice_goes_to_higher_iou(self):
        anchors = grid_anchors()
        boxes = torch.tensor([[4.0, 4.0, 20.0, 20.0], [2.0, 2.0, 22.0, 22.0]])
        result = ATSSAssigner(topk=1).assign(anchors=anchors, num_anchors_per_level=[16], gt_boxes=boxes)
        # Anchor 5 is [4, 4, 20, 20]: IoU 1 with box 0, 256/400 with box 1.
        assert result.gt_index[5].item() == 0

    def test_ignore_regions_and_padding_are_neither_positive_nor_negative(self):
        anchors = grid_anchors()
        valid = torch.ones(16, dtype=torch.bool)
        valid[12:] = False  # last row lies in the padding
        result = ATSSAssigner(topk=3).assign(
            anchors=anchors,
            num_anchors_per_level=[16],
            gt_boxes=torch.tensor([[5.0, 2.0, 21.0, 18.0]]),
            ignore_boxes=torch.tensor([[16.0, 0.0, 40.0, 40.0]]),
            anchor_valid=valid,
        )
        # Anchors 3, 7, 11, 15 (column x=28, boxes [20, ., 36, .]) lie fully inside the ignore region.
        assert result.ignored[[3, 7, 11]].all()
        assert result.ignored[12:].all()
        assert not result.ignored[[0, 1, 4, 5]].any()
        assert result.gt_index[5].item() == 0 and not result.ignored[5]

    def test_a_padded_batch_is_assigned_as_each_image_alone(self):
        # Images with 0, 1, 3 and 7 boxes (padded to 7), their own padding and ignore regions, over two levels.
        generator = torch.Generator().manual_seed(0)
        anchors = torch.cat([grid_anchors(8, 8, 16), grid_anchors(4, 16, 32)])
        counts, ignore_counts = [0, 1, 3, 7], [0, 2, 0, 1]

        def random_boxes(count: int) -> torch.Tensor:
            corners = torch.rand(count, 2, generator=generator) * 48
            return torch.cat([corners, corners + 8 + torch.rand(count, 2, generator=generator) * 24], dim=1)

        gt = [random_boxes(count) for count in counts]
        ignore = [random_boxes(count) for count in ignore_counts]
        valid = torch.rand(4, anchors.shape[0], generator=generator) > 0.2
        assigner = ATSSAssigner(topk=3)

        def padded(boxes: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
            width = max(len(b) for b in boxes)
            stacked = torch.zeros(len(boxes), width, 4)
            for index, b in enumerate(boxes):
                stacked[index, : len(b)] = b
            return stacked, torch.arange(width)[None] < torch.tensor([len(b) for b in boxes])[:, None]

        gt_boxes, gt_valid = padded(gt)
        ignore_boxes, ignore_valid = padded(ignore)
        batch = assigner.assign_batch(
            anchors=anchors, num_anchors_per_level=[64, 16], gt_boxes=gt_boxes, gt_valid=gt_valid,
            ignore_boxes=ignore_boxes, ignore_valid=ignore_valid, anchor_valid=valid,
        )  # fmt: skip
        for index in range(4):
            alone = assigner.assign(
                anchors=anchors, num_anchors_per_level=[64, 16], gt_boxes=gt[index],
                ignore_boxes=ignore[index], anchor_valid=valid[index],
            )  # fmt: skip
            assert torch.equal(batch.gt_index[index], alone.gt_index), index
            assert torch.equal(batch.ignored[index], alone.ignored), index
        assert (batch.gt_index[0] == -1).all() and batch.gt_index[3].max() > 0

    def test_tied_candidates_that_hold_the_whole_box_still_give_it_positives(self):
        # A 16-px box on a 16-px image: the four finest anchors (64 px, centres 4 and 12) each hold it, IoU
        # 256/4096; the next level's one anchor (128 px) has 256/16384. Mean + std of the five is 0.074, above
        # every IoU, so the paper's rule gives no positive; the four tied best, centred inside, become positives.
        anchors = torch.cat([grid_anchors(2, 8, 64), grid_anchors(1, 16, 128)])
        result = ATSSAssigner(topk=9).assign(
            anchors=anchors, num_anchors_per_level=[4, 1], gt_boxes=torch.tensor([[0.0, 0.0, 16.0, 16.0]])
        )
        assert result.gt_index.tolist() == [0, 0, 0, 0, -1]

    def test_no_ground_truth_means_all_negative(self):
        result = ATSSAssigner().assign(anchors=grid_anchors(), num_anchors_per_level=[16], gt_boxes=torch.zeros(0, 4))
        assert (result.gt_index == -1).all()


# ------------------------------------------------------------------------------------ per-instance terms


def _instance_terms_by_hand(model, pixel_values, labels):
    """Each instance's loss and quality from the public loss functions and the model's own assignment, one
    instance at a time."""
    config = model.config
    features = model.forward_features(pixel_values)
    class_logits, distributions = model.head(features)
    points, strides, _ = model._anchor_points(features)
    logits = torch.cat([logit.flatten(2).transpose(1, 2) for logit in class_logits], dim=1)
    flat_distributions = torch.cat([d.flatten(2).transpose(1, 2) for d in distributions], dim=1)
    boxes = model._decode_boxes(flat_distributions, points, strides)
    valid_sizes = model.valid_sizes(pixel_values, None)
    targets = model.labels_in_pixels(labels, valid_sizes)
    assignment = model.loss_function.assign_anchors(
        anchor_points=points,
        anchor_strides=strides,
        num_anchors_per_level=[f.shape[-2] * f.shape[-1] for f in features],
        valid_sizes=valid_sizes,
        targets=targets,
    )
    losses, qualities = [], []
    for image, (classes, gt_boxes, _) in enumerate(targets):
        for index in range(len(classes)):
            anchors = (assignment.gt_index[image] == index).nonzero().flatten()
            if len(anchors) == 0:
                losses.append(None)
                qualities.append(0.0)
                continue
            target = gt_boxes[index].expand(len(anchors), 4)
            iou = aligned_box_iou(boxes[image, anchors], target)
            qfl = quality_focal_loss(logits[image, anchors], classes[index].expand(len(anchors)), iou)
            giou = giou_loss(boxes[image, anchors], target)
            point = points[anchors]
            distances = torch.cat([point - target[:, :2], target[:, 2:] - point], dim=1) / strides[anchors, None]
            dfl = (
                distribution_focal_loss(
                    flat_distributions[image, anchors].reshape(-1, config.reg_max + 1),
                    distances.clamp(0, config.reg_max - 0.01).reshape(-1),
                )
                .view(-1, 4)
                .mean(dim=1)
            )
            anchor_loss = config.loss_qfl_weight * qfl + config.loss_giou_weight * giou + config.loss_dfl_weight * dfl
            losses.append(float(anchor_loss.mean()))
            qualities.append(float((logits[image, anchors, classes[index]].sigmoid() * iou).max()))
    highest = max(loss for loss in losses if loss is not None)
    return [highest if loss is None else loss for loss in losses], qualities


def test_instance_losses_and_quality_are_each_instances_own():
    from tiny import tiny_detector

    model = tiny_detector({0: "a", 1: "b"}, seed=3).eval()
    torch.manual_seed(0)
    pixel_values = torch.randn(2, 3, 64, 64)
    labels = [
        # cxcywh normalised; the last box of image 0 is 2 px wide, too small for any anchor to be assigned to it.
        {
            "class_labels": torch.tensor([0, 1, 1]),
            "boxes": torch.tensor([[0.3, 0.3, 0.4, 0.3], [0.7, 0.6, 0.5, 0.6], [0.9, 0.1, 0.03, 0.03]]),
        },
        {"class_labels": torch.tensor([1]), "boxes": torch.tensor([[0.5, 0.5, 0.8, 0.8]])},
    ]
    with torch.no_grad():
        output = model(pixel_values=pixel_values, labels=labels, output_instance_losses=True)
        plain = model(pixel_values=pixel_values, labels=labels)
        expected_losses, expected_quality = _instance_terms_by_hand(model, pixel_values, labels)
    assert output.instance_losses.shape == output.instance_quality.shape == (4,)
    torch.testing.assert_close(output.instance_losses, torch.tensor(expected_losses), rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(output.instance_quality, torch.tensor(expected_quality), rtol=1e-4, atol=1e-6)
    assert float(output.instance_quality[2]) == 0.0  # the unassigned instance
    assert plain.instance_losses is None and plain.instance_quality is None
    torch.testing.assert_close(output.loss, plain.loss)  # asking for them changes nothing else


# ------------------------------------------------------------------------------------ small images


@pytest.fixture(scope="module")
def five_level_detector():
    return tiny_detector({0: "object"})


@pytest.mark.parametrize("size", [16, 32, 48])
def test_every_box_of_a_small_image_gets_positive_anchors(five_level_detector, size):
    """On images of 48 px or less the finest anchors (eight strides wide) hold the whole picture and tie in
    IoU; each box, the whole image included, still gets positives, and the box losses are not zero."""
    model = five_level_detector
    s = float(size)
    boxes = [[0, 0, s, s], [0, 0, s / 2, s], [s / 2, 0, s / 2, s], [0, 0, s / 2, s / 2], [s / 4, s / 4, s / 2, s / 2]]
    processor = GFLImageProcessor(size={"height": size, "width": size})
    images = [torch.randint(0, 256, (3, size, size), dtype=torch.uint8, generator=torch.Generator().manual_seed(i))
              for i in range(len(boxes))]  # fmt: skip
    annotations = [{"image_id": i, "annotations": [{"bbox": box, "category_id": 0}]} for i, box in enumerate(boxes)]
    batch = processor(images=images, annotations=annotations, return_tensors="pt")
    outputs = model(**batch)
    mask = model.positive_anchor_mask(
        outputs.fpn_features, model.valid_sizes(batch["pixel_values"], batch["pixel_mask"]), batch["labels"]
    )
    assert mask.any(dim=1).tolist() == [True] * len(boxes), mask.sum(dim=1).tolist()
    assert outputs.loss_dict["loss_giou"] > 0 and torch.isfinite(outputs.loss)
