"""The measuring tools of benchmarks/step_cost.py, on steps whose answer is known."""

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


def test_operation_count_covers_forward_and_backward():
    weight = torch.ones(3, requires_grad=True)

    def step() -> None:
        pass

    def forward_backward() -> None:
        (weight * 2).sum().backward()

    step.forward_backward = forward_backward
    counts = step_cost().count_operations({"tiny": step})
    # mul and sum forward; backward at least expands the sum's gradient and multiplies it by 2
    assert counts["tiny"] >= 4
    assert counts["tiny"] < 20
