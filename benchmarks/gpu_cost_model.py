"""How far do kernel counts predict a GPU step's time? Fit, on one GPU run, and predict for counted code.

    python benchmarks/gpu_cost_model.py \
        --timed benchmarks/results/gpu_cost_model_timed.json \
        --counted benchmarks/results/gpu_cost_model_counted.json \
        --predict benchmarks/results/step_cost_gpu_preset_operations.json

`--timed`: a `step_cost.py` run on a GPU (seconds per step of each configuration). `--counted`: the kernels
and device waits of the same code at the same preset, counted on any machine (`step_cost.py
--operations_only`, or a GPU run of a `step_cost.py` that counts them). The script fits

    seconds per step = a * kernels + b * device waits + c * (1 if the step runs the teacher)

by least squares over every configuration: a and b the cost of a launch and of a wait, c the teacher's
arithmetic beyond its launches (a ResNet-50 forward without gradients is the one part of these steps whose
kernels are large enough to take longer than their launch). It prints the fit against the measurement and,
with `--predict`, each configuration's predicted seconds and ratio to the floor (student step + teacher
forward) for the counts of other code at the same preset: what the GPU would likely show, until it is
measured. Writes benchmarks/results/gpu_cost_model.json.
"""

from __future__ import annotations

import argparse
import json
import sys
from datetime import date
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))  # _provenance, also when a test loads this file by path
from _provenance import provenance, write_result  # noqa: E402

FLOOR = "student step + teacher forward"
# The configurations of step_cost.py that do not run the teacher (`none` distils nothing, so it skips it).
WITHOUT_TEACHER = frozenset({"student step", "distill: none"})


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--timed", required=True, help="step_cost.py JSON of a GPU run.")
    parser.add_argument("--counted", required=True, help="step_cost.py JSON with the same code's counts.")
    parser.add_argument("--predict", default=None, help="step_cost.py JSON with other code's counts.")
    parser.add_argument("--output", default=str(ROOT / "benchmarks" / "results" / "gpu_cost_model.json"))
    return parser.parse_args(argv)


def rows_by_configuration(path: str) -> dict[str, dict]:
    data = json.loads(Path(path).read_text())
    return {row["configuration"]: row for row in data["rows"]}


def features_of(row: dict, path: str) -> np.ndarray:
    """(kernels, device waits, runs the teacher) of a configuration's counted row."""
    if "kernels" not in row or "device_waits" not in row:
        raise ValueError(
            f"{path}: configuration {row['configuration']!r} has no kernel and device-wait counts; count them "
            "with `python benchmarks/step_cost.py --operations_only` at the same preset."
        )
    return np.array([row["kernels"], row["device_waits"], float(row["configuration"] not in WITHOUT_TEACHER)])


def fit(timed: dict[str, dict], counted: dict[str, dict], counted_path: str) -> tuple[np.ndarray, list[dict]]:
    """(a, b, c): seconds per kernel, per device wait and for the teacher's arithmetic; and the fitted rows."""
    missing = [name for name in timed if name not in counted]
    if missing:
        raise ValueError(f"{counted_path} lacks the timed configurations {missing}.")
    names = list(timed)
    design = np.stack([features_of(counted[name], counted_path) for name in names])
    seconds = np.array([timed[name]["seconds_per_step"] for name in names])
    coefficients, *_ = np.linalg.lstsq(design, seconds, rcond=None)
    rows = []
    for name, features, measured in zip(names, design, seconds):
        fitted = float(coefficients @ features)
        rows.append(
            {
                "configuration": name,
                "kernels": int(features[0]),
                "device_waits": int(features[1]),
                "measured_s": float(measured),
                "fitted_s": fitted,
                "relative_error": fitted / float(measured) - 1,
            }
        )
    return coefficients, rows


def predict(coefficients: np.ndarray, counted: dict[str, dict], path: str) -> list[dict]:
    seconds = {name: float(coefficients @ features_of(row, path)) for name, row in counted.items()}
    floor = seconds[FLOOR]
    return [
        {
            "configuration": name,
            "kernels": row["kernels"],
            "device_waits": row["device_waits"],
            "predicted_s": seconds[name],
            **({"predicted_ratio_to_floor": seconds[name] / floor} if name.startswith("distill: ") else {}),
        }
        for name, row in counted.items()
    ]


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    timed_data = json.loads(Path(args.timed).read_text())
    if not timed_data.get("machine", {}).get("gpu"):
        raise ValueError(f"{args.timed} was not measured on a GPU; the model is of a GPU's launch-bound steps.")
    timed, counted = rows_by_configuration(args.timed), rows_by_configuration(args.counted)
    coefficients, fitted = fit(timed, counted, args.counted)
    per_kernel_us, per_wait_us, teacher_us = coefficients * 1e6
    lines = [
        f"Fit on {timed_data['machine']['gpu']} ({args.timed}): {per_kernel_us:.1f} us per kernel, "
        f"{per_wait_us:.0f} us per device wait, {teacher_us / 1000:.1f} ms for the teacher's arithmetic",
        "| configuration | kernels | device waits | measured s | fitted s | error |",
        "|---|---|---|---|---|---|",
    ]
    for row in fitted:
        lines.append(
            f"| {row['configuration']} | {row['kernels']:,} | {row['device_waits']} | {row['measured_s']:.4f} "
            f"| {row['fitted_s']:.4f} | {row['relative_error']:+.0%} |"
        )
    predicted = None
    if args.predict:
        predicted = predict(coefficients, rows_by_configuration(args.predict), args.predict)
        lines += [
            "",
            f"Predicted for {args.predict}:",
            "| configuration | kernels | device waits | predicted s | x floor |",
            "|---|---|---|---|---|",
        ]
        for row in predicted:
            ratio = f"{row['predicted_ratio_to_floor']:.2f}" if "predicted_ratio_to_floor" in row else "-"
            lines.append(
                f"| {row['configuration']} | {row['kernels']:,} | {row['device_waits']} | {row['predicted_s']:.4f} "
                f"| {ratio} |"
            )
    table = "\n".join(lines)
    print(table)
    result = {
        "provenance": provenance(),
        "command": "python benchmarks/gpu_cost_model.py "
        + " ".join(f"--{key} {value}" for key, value in vars(args).items() if value and key != "output"),
        "date": date.today().isoformat(),
        "gpu": timed_data["machine"]["gpu"],
        "seconds_per_kernel": float(coefficients[0]),
        "seconds_per_device_wait": float(coefficients[1]),
        "seconds_for_the_teacher": float(coefficients[2]),
        "fitted": fitted,
        "predicted": predicted,
        "table": table,
    }
    write_result(args.output, result)


if __name__ == "__main__":
    main()
