"""The measuring tools of benchmarks/step_cost.py and benchmarks/gpu_cost_model.py, on inputs whose answer is known."""

import json

import pytest
import torch

from tiny import ROOT, load_script

MIB = 1 << 20


def step_cost():
    return load_script(ROOT / "benchmarks" / "step_cost.py", "step_cost")


def test_cpu_memory_peak_counts_the_tensors_alive_at_once():
    peak_of = step_cost()._peak_allocated_bytes_on_cpu

    def together() -> None:
        first = torch.ones(2 * MIB)  # 8 MiB of float32
        second = torch.ones(4 * MIB)  # 16 MiB, while the first is still held
        (first.sum() + second.sum()).item()

    def one_after_the_other() -> None:
        torch.ones(2 * MIB).sum().item()
        torch.ones(4 * MIB).sum().item()

    assert 24 * MIB <= peak_of(together, 2) < 25 * MIB
    assert 16 * MIB <= peak_of(one_after_the_other, 2) < 17 * MIB


def counted(forward_backward):
    """A configuration as step_cost.py counts it: a step function whose `forward_backward` is `forward_backward`."""

    def step() -> None:
        forward_backward()

    step.forward_backward = forward_backward
    return step


def test_operation_count_covers_forward_and_backward():
    weight = torch.ones(3, requires_grad=True)

    def forward_backward() -> None:
        (weight * 2).sum().backward()

    counts = step_cost().count_operations({"tiny": counted(forward_backward)})
    # mul and sum forward; backward at least expands the sum's gradient and multiplies it by 2
    assert 4 <= counts["tiny"]["operations"] < 20
    assert 3 <= counts["tiny"]["kernels"] <= counts["tiny"]["operations"]
    assert counts["tiny"]["device_waits"] == 0


def test_compiled_configurations_are_timed_but_not_counted():
    """Compiled code bypasses the dispatcher that counts operations: its rows say so rather than show the
    few operations that reach it, and asking for counts alone with --compile is refused."""
    weight = torch.ones(3, requires_grad=True)

    def forward_backward() -> None:
        (weight * 2).sum().backward()

    compiled = counted(forward_backward)
    compiled.compiled = True
    counts = step_cost().count_operations({"eager": counted(forward_backward), "compiled": compiled})
    assert "eager" in counts and "compiled" not in counts
    with pytest.raises(SystemExit):
        step_cost().parse_args(["--compile", "--operations_only"])


def test_views_are_not_kernels_and_mask_indexing_waits_for_the_device():
    values = torch.arange(12.0)

    def views_only() -> None:
        values.view(3, 4).t().unsqueeze(0).detach()

    def waits() -> None:
        mask = values > 5  # one kernel
        values[mask].sum().item()  # a mask's count, a kernel, a value read back

    counts = step_cost().count_operations({"views": counted(views_only), "waits": counted(waits)})
    assert counts["views"]["operations"] == 4
    assert counts["views"]["kernels"] == 0
    assert counts["views"]["device_waits"] == 0
    assert counts["waits"]["device_waits"] == 2
    assert counts["waits"]["kernels"] >= 3


def test_gpu_cost_model_recovers_the_costs_it_was_built_from():
    model = load_script(ROOT / "benchmarks" / "gpu_cost_model.py", "gpu_cost_model")
    per_kernel, per_wait, teacher = 10e-6, 80e-6, 5e-3
    counts = {
        "student step": (1000, 10),
        "teacher forward": (300, 0),
        "student step + teacher forward": (1300, 10),
        "distill: none": (1050, 11),
        "distill: liaf": (1700, 12),
        "distill: aid": (2100, 30),
    }
    counted = {
        name: {"configuration": name, "kernels": kernels, "device_waits": waits}
        for name, (kernels, waits) in counts.items()
    }
    timed = {
        name: {
            "configuration": name,
            "seconds_per_step": kernels * per_kernel + waits * per_wait + (name not in model.WITHOUT_TEACHER) * teacher,
        }
        for name, (kernels, waits) in counts.items()
    }
    coefficients, fitted = model.fit(timed, counted, "counted.json")
    assert coefficients.tolist() == pytest.approx([per_kernel, per_wait, teacher], rel=1e-6)
    assert all(abs(row["relative_error"]) < 1e-6 for row in fitted)
    predicted = {row["configuration"]: row for row in model.predict(coefficients, counted, "counted.json")}
    floor = 1300 * per_kernel + 10 * per_wait + teacher
    assert predicted["distill: liaf"]["predicted_ratio_to_floor"] == pytest.approx(
        (1700 * per_kernel + 12 * per_wait + teacher) / floor
    )
    del counted["distill: aid"]["kernels"]
    with pytest.raises(ValueError, match="distill: aid.*--operations_only"):
        model.fit(timed, counted, "counted.json")


def test_kernels_are_attributed_to_the_library_function_that_launched_them():
    from liaf_hf.models.gfl.loss_gfl import box_cxcywh_to_xyxy

    boxes = torch.rand(5, 4)
    script = step_cost()
    with script._OperationCounter(by_site=True) as counter:
        box_cxcywh_to_xyxy(boxes)
        boxes.sum()  # launched from here, outside the library
    # half the sides, the two corners, their concatenation
    assert counter.kernels_by_site["loss_gfl.py:box_cxcywh_to_xyxy"] == 4
    assert counter.kernels_by_site[script.OUTSIDE_THE_LIBRARY] == 1
    assert counter.kernels == 5


def test_profile_credits_a_methods_extra_time_to_the_operations_it_adds():
    script = step_cost()
    small, matrix = torch.randn(64, 64), torch.randn(384, 384)

    def floor() -> None:
        # Small beside the added operations, so that its own time's noise (other processes share the cores)
        # cannot outweigh them.
        (small @ small).sum()

    def with_a_bessel() -> None:
        floor()
        for _ in range(8):
            torch.i0(matrix)  # one kernel with no child operations (a sort's own copy competed with it)

    configurations = {script.FLOOR: floor, "distill: bessel": with_a_bessel}
    args = script.parse_args(["--device", "cpu", "--steps", "2"])
    profiles = script.profile_configurations(configurations, args)
    assert profiles[script.FLOOR]["busy_s_per_step"] > 0
    assert profiles["distill: bessel"]["busy_s_per_step"] > profiles[script.FLOOR]["busy_s_per_step"]
    extra = profiles["distill: bessel"]["extra_s_by_operation"]
    assert next(iter(extra)) == "aten::i0"  # the largest difference
    assert "extra_s_by_operation" not in profiles[script.FLOOR]


def test_step_cost_reports_every_configuration_against_the_floor(tmp_path):
    """The whole script on the CPU, counting only (no timing): each method's row with its kernel ratio to the
    floor, the table that shows it, and the JSON that records both."""
    output = tmp_path / "step_cost.json"
    result = step_cost().main(
        [
            "--operations_only",
            "--teacher_backbone",
            "resnet18",
            "--methods",
            "mimic",
            "liaf",
            "--output",
            str(output),
        ]
    )
    rows = {row["configuration"]: row for row in result["rows"]}
    assert {"student step", "teacher forward", "distill: mimic", "distill: liaf"} <= set(rows)
    for name in ("distill: mimic", "distill: liaf"):
        assert rows[name]["kernels"] > rows["student step + teacher forward"]["kernels"] > 0
        assert rows[name]["kernels_ratio_to_floor"] > 1.0 and "seconds_per_step" not in rows[name]
        assert f"| {name} | - | - | {rows[name]['kernels']:,} |" in result["table"]
    assert json.loads(output.read_text())["rows"] == result["rows"]
