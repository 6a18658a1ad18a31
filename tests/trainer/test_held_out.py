"""The held-out directions of LIAF-KD's look-ahead objective: how a step for the student's detection loss on the
other half of the batch moves its FPN maps, taken by finite differences on a real detector."""

from __future__ import annotations

import copy

import pytest
import torch
from torch.func import functional_call, jvp, replace_all_batch_norm_modules_

from liaf_hf.trainer._held_out import held_out_directions
from tiny import tiny_detector

ID2LABEL = {0: "circle", 1: "square"}


def batch(num_images=4, size=64, seed=0):
    generator = torch.Generator().manual_seed(seed)
    pixel_values = torch.randn(num_images, 3, size, size, generator=generator)
    labels = []
    for _ in range(num_images):
        centres = 0.25 + 0.5 * torch.rand(2, 2, generator=generator)
        sizes = 0.15 + 0.2 * torch.rand(2, 2, generator=generator)
        labels.append({"class_labels": torch.tensor([0, 1]), "boxes": torch.cat([centres, sizes], dim=1)})
    return pixel_values, labels


def test_directions_are_the_jacobian_of_the_maps_along_the_other_halfs_loss_gradient():
    student = tiny_detector(ID2LABEL, channels=16, norm_groups=4, num_fpn_levels=3).train()
    pixel_values, labels = batch()
    buffers_before = {name: b.clone() for name, b in student.named_buffers()}
    directions = held_out_directions(student, pixel_values, None, labels)

    assert [d.shape[0] for d in directions] == [4, 4, 4] and not any(d.requires_grad for d in directions)
    # The extra passes leave the running statistics and the parameters' gradients as the step has them.
    assert all(torch.equal(b, buffers_before[name]) for name, b in student.named_buffers())
    assert all(p.grad is None for p in student.parameters())

    # The exact J v / |v| for the images at even positions, v from the loss on the odd ones, by forward mode.
    base = student.model
    parameters = {name: p.detach() for name, p in base.named_parameters()}
    odd = [1, 3]
    loss = student(pixel_values=pixel_values[odd], labels=[labels[i] for i in odd]).loss
    gradient = torch.autograd.grad(loss, list(base.parameters()))
    norm = torch.sqrt(sum(g.square().sum() for g in gradient))
    tangent = {name: g / norm for name, g in zip(parameters, gradient)}
    # The same batch statistics, without the running-statistics update forward mode cannot take.
    stateless = replace_all_batch_norm_modules_(copy.deepcopy(base))

    def maps(params):
        return tuple(functional_call(stateless, params, (pixel_values[[0, 2]],)).fpn_features)

    _, exact = jvp(maps, (parameters,), (tangent,))
    for level, (found, expected) in enumerate(zip(directions, exact)):
        found = found[[0, 2]]
        relative = (found - expected).norm() / expected.norm()
        assert relative < 3e-2, f"level {level}: relative error {float(relative):.2e}"
    # The two halves' directions come from different held-out losses: not one shared map.
    assert not torch.allclose(directions[0][1], directions[0][0])


def test_a_batch_of_one_image_has_no_other_half():
    student = tiny_detector(ID2LABEL, channels=16, norm_groups=4, num_fpn_levels=3).train()
    pixel_values, labels = batch(num_images=1)
    with pytest.raises(ValueError, match="at least 2 images"):
        held_out_directions(student, pixel_values, None, labels)
