"""How a step for the student's detection loss on other images moves its feature maps on each image.

For the look-ahead objective of LIAF-KD (`objective="lookahead"`, docs/method.md): the batch is split into two
halves; for each half, v is the gradient of the student's own detection loss on the *other* half with respect
to the parameters of its backbone and FPN, and the direction of an image of this half is J v / |v|, the change
of the student's FPN maps on that image per unit step along v (J the Jacobian of the maps with respect to those
parameters). An instance whose imitation gradient on the maps points along J v is one whose imitation lowers the
detection loss on images it is not in: the first-order test of learning-to-reweight methods, with the other half
of the batch as the held-out data.

J v is taken by central finite differences, two passes of the backbone and FPN at theta +- h v / |v|: their error
grows with h where ReLUs and max-pooling switch between the two points, so h is small (forward-mode
differentiation would need every layer, BatchNorm's running statistics included, to support it). The extra
passes run on copies of the BatchNorm buffers, so the running statistics stay those of the ordinary step.
"""

from __future__ import annotations

import torch
from torch.func import functional_call

from ..models.gfl.modeling_gfl import GFLForObjectDetection

__all__ = ["held_out_directions"]

#: The finite-difference step h along the unit direction in parameter space: small against the parameters'
#: norm (about a hundred for a ResNet-18 GFL), large enough that the two passes' maps differ far above float32
#: rounding.
FINITE_DIFFERENCE_STEP = 1e-3


def held_out_directions(
    student: GFLForObjectDetection,
    pixel_values: torch.Tensor,
    pixel_mask: torch.Tensor | None,
    labels: list[dict],
    *,
    step: float = FINITE_DIFFERENCE_STEP,
) -> tuple[torch.Tensor, ...]:
    """Each level's (B, C, H_l, W_l) direction J v / |v| of the student's FPN maps, v the gradient of the
    student's detection loss on the other half of the batch (images at even and at odd positions form the two
    halves); detached. Costs a forward and backward pass of the student on the batch (in two halves) and two
    passes of its backbone and FPN.

    Args:
        student: the student, in training mode.
        pixel_values: (B, 3, H, W) padded images, B >= 2.
        pixel_mask: (B, H, W), 1 on real pixels; None when nothing is padded.
        labels: one dict per image, as the student's loss takes them.

    Raises:
        ValueError: for a batch of one image, which has no other half.
    """
    num_images = pixel_values.shape[0]
    if num_images < 2:
        raise ValueError(
            'LIAF-KD\'s objective="lookahead" takes the held-out loss on the other half of each batch: it needs at '
            f"least 2 images in each device's batch, got {num_images} (raise --per_device_train_batch_size)."
        )
    # Strided slices, not index tensors: splitting the batch waits for nothing on the device.
    halves = (slice(0, None, 2), slice(1, None, 2))
    features = student.model
    parameters = {name: p for name, p in features.named_parameters() if p.requires_grad}
    directions: list[torch.Tensor] | None = None
    for half, other in (halves, halves[::-1]):
        gradient = _loss_gradient(student, parameters, pixel_values, pixel_mask, labels, other)
        norm = torch.sqrt(sum(g.square().sum() for g in gradient.values()))
        unit = {name: g / norm.clamp(min=1e-30) for name, g in gradient.items()}
        images = pixel_values[half]
        with torch.no_grad():
            ahead = _features_at(features, parameters, unit, step, images)
            behind = _features_at(features, parameters, unit, -step, images)
        half_directions = [(a - b) / (2 * step) for a, b in zip(ahead, behind)]
        if directions is None:
            directions = [d.new_zeros((num_images, *d.shape[1:])) for d in half_directions]
        for level, direction in zip(directions, half_directions):
            level[half] = direction
    return tuple(directions)


def _buffer_copies(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The module's buffers, copied: a pass given them updates the copies' running statistics, not the module's."""
    return {name: buffer.clone() for name, buffer in module.named_buffers()}


def _loss_gradient(
    student: GFLForObjectDetection,
    parameters: dict[str, torch.Tensor],
    pixel_values: torch.Tensor,
    pixel_mask: torch.Tensor | None,
    labels: list[dict],
    images: slice,
) -> dict[str, torch.Tensor]:
    """The gradient of the student's detection loss on the batch's `images` with respect to `parameters` (its
    base model's, by name under `student.model`)."""
    output = functional_call(
        student,
        _buffer_copies(student),  # the parameters not given are the module's own, with their gradients
        args=(),
        kwargs={
            "pixel_values": pixel_values[images],
            "pixel_mask": pixel_mask[images] if pixel_mask is not None else None,
            "labels": labels[images],
        },
    )
    names = list(parameters)
    gradients = torch.autograd.grad(
        output.loss, [parameters[name] for name in names], allow_unused=True, materialize_grads=True
    )
    return dict(zip(names, gradients))


def _features_at(
    features: torch.nn.Module,
    parameters: dict[str, torch.Tensor],
    direction: dict[str, torch.Tensor],
    step: float,
    images: torch.Tensor,
) -> tuple[torch.Tensor, ...]:
    """The FPN maps of `images` with the parameters moved by `step` along `direction`."""
    moved = {name: parameter.detach() + step * direction[name] for name, parameter in parameters.items()}
    output = functional_call(
        features,
        {**moved, **_buffer_copies(features)},
        args=(images,),
        kwargs={"output_hidden_states": False, "return_dict": True},
    )
    return tuple(output.fpn_features)
