"""The report of benchmarks/step_cost.py: its measurements as rows (what the results JSON holds) and as tables."""

from __future__ import annotations

import argparse
from dataclasses import dataclass, field

#: The configuration every method's step is compared with: the student's step plus the teacher's forward.
FLOOR = "student step + teacher forward"


@dataclass
class Measurements:
    """What step_cost.py measured, by configuration name (`"student step"`, `"distill: liaf"`, ...).

    Attributes:
        timings: median and rounds of seconds per step; None with `--operations_only`.
        operations: operations, kernels and device waits counted in one step.
        floor, feature_floor: seconds per step of the student step + the teacher's forward, and + the teacher's
            backbone and FPN alone; None without timings.
        features_only: the configurations whose methods compare FPN maps only (their floor is `feature_floor`).
        sites: with `--kernels_by_site`, each method's kernels beyond the floor's by launching function.
        profiles: with `--profile`, the device's busy time per step and what it spends beyond the floor.
        memory: each configuration's peak extra memory; empty without memory measurements.
        inference: the saved distilled and plain students compared; None with `--operations_only`.
    """

    timings: dict | None
    operations: dict
    floor: float | None = None
    feature_floor: float | None = None
    features_only: set[str] = field(default_factory=set)
    sites: dict | None = None
    profiles: dict | None = None
    memory: dict = field(default_factory=dict)
    inference: dict | None = None


def result_rows(names: list[str], measured: Measurements) -> list[dict]:
    """One row per configuration: its measurements and their ratios to the floor."""
    timings, operations, profiles, memory = measured.timings, measured.operations, measured.profiles, measured.memory
    floor, feature_floor, features_only = measured.floor, measured.feature_floor, measured.features_only
    floor_memory = memory[FLOOR]["peak_extra_bytes"] if memory else None
    rows = []
    for name in names:
        row = {"configuration": name, **operations.get(name, {})}
        if timings:
            row["seconds_per_step"] = timings[name]["median_s"]
            row["rounds_s"] = timings[name]["rounds_s"]
        if name.startswith("distill: "):
            if timings:
                row["ratio_to_floor"] = timings[name]["median_s"] / floor
                if name in features_only:
                    row["ratio_to_feature_floor"] = timings[name]["median_s"] / feature_floor
            if name in operations:
                row["operations_ratio_to_floor"] = operations[name]["operations"] / operations[FLOOR]["operations"]
                row["kernels_ratio_to_floor"] = operations[name]["kernels"] / operations[FLOOR]["kernels"]
        if profiles:
            row["device_busy_s_per_step"] = profiles[name]["busy_s_per_step"]
            if profiles[name]["host_waits_per_step"] is not None:
                row["measured_host_waits_per_step"] = profiles[name]["host_waits_per_step"]
            if timings:
                row["device_busy_share"] = profiles[name]["busy_s_per_step"] / timings[name]["median_s"]
            if "extra_s_by_operation" in profiles[name]:
                row["extra_device_s_by_operation"] = profiles[name]["extra_s_by_operation"]
        if memory:
            row["peak_extra_MiB"] = memory[name]["peak_extra_bytes"] / 2**20
            if name.startswith("distill: ") and floor_memory:
                row["memory_ratio_to_floor"] = memory[name]["peak_extra_bytes"] / floor_memory
        rows.append(row)

    return rows


def report_table(rows: list[dict], measured: Measurements, args: argparse.Namespace) -> str:
    """The tables step_cost.py prints: time, kernels, waits and memory against the floor, then what the options
    asked for (the feature floor, the saved students, the profiles, the kernels by site)."""
    floor, feature_floor, inference = measured.floor, measured.feature_floor, measured.inference
    profiles, sites = measured.profiles, measured.sites
    lines = [
        f"Step cost, {args.student_backbone} student / {args.teacher_backbone} teacher, batch {args.batch_size} at "
        f"{args.image_size}px, {args.device}; floor = student step + teacher forward"
        + (f" = {floor:.3f} s" if floor else ""),
        "| configuration | s/step | x floor | kernels | x floor | device waits | peak extra MiB | memory x floor |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        seconds = f"{row['seconds_per_step']:.3f}" if "seconds_per_step" in row else "-"
        ratio = f"{row['ratio_to_floor']:.2f}" if "ratio_to_floor" in row else "-"
        mib = f"{row['peak_extra_MiB']:.0f}" if "peak_extra_MiB" in row else "-"
        mem_ratio = f"{row['memory_ratio_to_floor']:.2f}" if "memory_ratio_to_floor" in row else "-"
        kernel_ratio = f"{row['kernels_ratio_to_floor']:.2f}" if "kernels_ratio_to_floor" in row else "-"
        kernels = f"{row['kernels']:,}" if "kernels" in row else "-"
        waits = row.get("device_waits", "-")
        lines.append(
            f"| {row['configuration']} | {seconds} | {ratio} | {kernels} | {kernel_ratio} | {waits} "
            f"| {mib} | {mem_ratio} |"
        )
    listed = ", ".join(
        f"{row['configuration'].removeprefix('distill: ')} {row['ratio_to_feature_floor']:.2f}"
        for row in rows
        if "ratio_to_feature_floor" in row
    )
    if listed:
        lines += [
            "",
            f"Against student step + teacher backbone and FPN alone ({feature_floor:.3f} s), the floor of the methods "
            f"that compare FPN maps only (their step skips the teacher's head): {listed}",
        ]
    if inference:
        latency = inference["latency_s_per_batch"]
        lines += [
            "",
            f"Saved students ({inference['distilled_method']} vs plain): parameters "
            f"{inference['parameters']['distilled']:,} vs {inference['parameters']['plain']:,}; same tensors: "
            f"{inference['same_tensor_names']}; inference {latency['distilled'] * 1000:.1f} ms vs "
            f"{latency['plain'] * 1000:.1f} ms per batch of {args.batch_size}",
        ]
    if profiles:
        lines += [
            "",
            "| configuration | device busy ms/step | share of the step's time | host waits/step (measured) |",
            "|---|---|---|---|",
        ]
        for row in rows:
            share = f"{row['device_busy_share']:.2f}" if "device_busy_share" in row else "-"
            waits = f"{row['measured_host_waits_per_step']:.1f}" if "measured_host_waits_per_step" in row else "-"
            lines.append(f"| {row['configuration']} | {row['device_busy_s_per_step'] * 1000:.2f} | {share} | {waits} |")
        for row in rows:
            if "extra_device_s_by_operation" in row:
                listed = ", ".join(
                    f"{key} {seconds * 1000:+.2f}" for key, seconds in row["extra_device_s_by_operation"].items()
                )
                lines += ["", f"{row['configuration']}: device ms/step beyond the floor's: {listed}"]
    if sites:
        for name, by_site in sites.items():
            listed = ", ".join(f"{site} {count}" for site, count in list(by_site.items())[:12])
            lines += ["", f"{name}: {sum(by_site.values()):,} kernels beyond the floor's: {listed}"]
    table = "\n".join(lines)
    return table
