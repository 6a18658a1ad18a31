"""Distillers compiled with torch.compile (`Distiller.compile_losses`): the same losses, statistics and
gradients as eager, over batches whose instance counts and training progress change, without compiling
anew for each of them."""

import pytest
import torch
import torch._dynamo
from torch._dynamo.utils import counters

from liaf_hf import GFLConfig
from liaf_hf.cli import DistillationArguments
from liaf_hf.distillation import build_distiller
from liaf_hf.distillation.base import DistillationBatch
from liaf_hf.models.gfl.modeling_gfl import GFLObjectDetectionOutput

SIZES = (16, 8, 4)
STRIDES = [8, 16, 32]
CHANNELS = 8
# Instance counts per image, one batch each: the counts, the images with instances and the largest count all
# change from batch to batch, and one batch has none.
BATCH_COUNTS = [[3, 1, 2], [2, 5, 1], [0, 4, 2], [6, 1, 3], [0, 0, 0], [2, 2, 7]]


def config():
    return GFLConfig(
        backbone="resnet18", fpn_channels=CHANNELS, num_fpn_levels=3, reg_max=2, id2label={0: "a", 1: "b", 2: "c"}
    )


def outputs(
    seed: int, batch_size: int, num_instances: int
) -> tuple[GFLObjectDetectionOutput, GFLObjectDetectionOutput]:
    generator = torch.Generator().manual_seed(seed)

    def one(requires_grad: bool, loss: torch.Tensor | None) -> GFLObjectDetectionOutput:
        def maps(channels):
            return tuple(
                torch.randn(batch_size, channels, s, s, generator=generator).requires_grad_(requires_grad)
                for s in SIZES
            )

        return GFLObjectDetectionOutput(
            loss=loss, fpn_features=maps(CHANNELS), class_logits=maps(3), box_distributions=maps(12)
        )

    student = one(True, None)
    # A detection loss of the student's maps, for the methods that read its gradient (LIAF-KD's "task").
    student.loss = sum(f.tanh().square().mean() for f in student.fpn_features)
    teacher = one(False, torch.tensor(1.0 + seed / 10))
    # Each instance's own loss, for AID's per-instance weights.
    teacher.instance_losses = torch.rand(num_instances, generator=generator) * 3.0
    return student, teacher


def batch(counts: list[int], seed: int) -> DistillationBatch:
    generator = torch.Generator().manual_seed(seed)
    boxes, labels = [], []
    for count in counts:
        corner = torch.rand(count, 2, generator=generator) * 100
        size = torch.rand(count, 2, generator=generator) * 24 + 4
        boxes.append(torch.cat([corner, corner + size], dim=1))
        labels.append(torch.randint(0, 3, (count,), generator=generator))
    return DistillationBatch(
        boxes=boxes,
        class_labels=labels,
        ignore_boxes=[torch.zeros(0, 4) for _ in counts],
        input_size=(128, 128),
        valid_sizes=torch.full((len(counts), 2), 128.0),
        strides=STRIDES,
        progress=seed / len(BATCH_COUNTS),  # a new value each step, as in training
        teacher_strides=STRIDES,
        positive_mask=torch.rand(len(counts), sum(s * s for s in SIZES), generator=generator) < 0.1,
    )


@pytest.mark.parametrize(
    "method, options",
    [("liaf", {}), ("liaf", {"beta": 2.0}), ("liaf", {"objective": "task"}), ("fgd", {}), ("aid", {}), ("ld", {})],
)
def test_a_compiled_distiller_matches_eager_and_compiles_a_few_times(method, options):
    torch._dynamo.reset()
    counters.clear()
    eager = build_distiller(method, student_config=config(), teacher_config=config(), **options)
    compiled = build_distiller(method, student_config=config(), teacher_config=config(), **options)
    compiled.load_state_dict(eager.state_dict())
    compiled.compile_losses()
    assert compiled.state_dict().keys() == eager.state_dict().keys()  # checkpoints load either way
    for step, counts in enumerate(BATCH_COUNTS):
        student, teacher = outputs(step, len(counts), sum(counts))
        results = []
        for distiller in (eager, compiled):
            result = distiller(student=student, teacher=teacher, batch=batch(counts, step))
            inputs = [t for t in (*student.fpn_features, *student.box_distributions)]
            gradients = torch.autograd.grad(sum(result.losses.values()), inputs, allow_unused=True)
            results.append((result, gradients))
        (expected, expected_gradients), (actual, actual_gradients) = results
        assert expected.losses.keys() == actual.losses.keys() and expected.stats.keys() == actual.stats.keys()
        for name in (*expected.losses, *expected.stats):
            values = {**expected.losses, **expected.stats}[name], {**actual.losses, **actual.stats}[name]
            torch.testing.assert_close(values[1], values[0], rtol=1e-5, atol=1e-6, msg=f"{name}, step {step}")
        for index, (want, got) in enumerate(zip(expected_gradients, actual_gradients)):
            assert (want is None) == (got is None), (step, index)
            if want is not None:
                torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-7, msg=f"gradient {index}, step {step}")
    # A graph for the first batch, at most two more while the instance sizes become dynamic; none per step.
    assert 1 <= counters["stats"]["unique_graphs"] <= 3, dict(counters["stats"])


def test_compiling_is_a_distillation_argument():
    arguments = DistillationArguments(teacher_model_name_or_path="teacher", compile_distiller=True)
    assert arguments.compile_distiller
