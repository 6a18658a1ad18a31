"""How far apart did the instance weights lie during training? The spread the runs logged, step by step.

A method that weighs instances logs, at each logging step, the lowest and highest weight of that step's batch
(`liaf/weight_min_l<level>` and `liaf/weight_max_l<level>` for LIAF-KD, `oracle/weight_min` and
`oracle/weight_max` for the oracles) and, for LIAF-KD, the mean discrepancy d per level. The weights recorded
on fixed images at the end of training (benchmarks/selector_facts.py) show only where the selectors ended;
this reads each run's `trainer_state.json` and shows how their choice changed as the student learned:

    python benchmarks/selector_trace.py --runs runs/distill_gain/<pair>/student-resnet18-liaf-seed*

For each logged step: the lowest and the highest weight over all levels, each as the mean over the runs with
its range, and the mean discrepancy over levels where the method logs it. Prints a table and writes
benchmarks/results/selector_trace.json (or --output).
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
from _provenance import provenance, write_result  # noqa: E402

_WEIGHT_KEY = re.compile(r"^(?P<method>[a-z_]+)/weight_(?P<end>min|max)(?:_l\d+)?$")
_DISCREPANCY_KEY = re.compile(r"^[a-z_]+/discrepancy_l\d+$")


def trace(run: Path) -> dict[int, dict[str, float]]:
    """{step: {"min", "max"[, "discrepancy"]}} from one run's logs: the extremes over levels, the mean d."""
    state_file = run / "trainer_state.json"
    if not state_file.is_file():
        raise FileNotFoundError(f"{run}: no trainer_state.json; is this a finished training run?")
    steps: dict[int, dict[str, float]] = {}
    for entry in json.loads(state_file.read_text())["log_history"]:
        lows, highs, discrepancies = [], [], []
        for key, value in entry.items():
            match = _WEIGHT_KEY.match(key)
            if match:
                (lows if match["end"] == "min" else highs).append(float(value))
            elif _DISCREPANCY_KEY.match(key):
                discrepancies.append(float(value))
        if lows and highs:
            row = {"min": min(lows), "max": max(highs)}
            if discrepancies:
                row["discrepancy"] = statistics.fmean(discrepancies)
            steps[int(entry["step"])] = row
    if not steps:
        raise ValueError(f"{state_file}: no logged instance weights; the run's method does not weigh instances")
    return steps


def summarise(traces: list[dict[int, dict[str, float]]]) -> list[dict]:
    """Per step that every run logged: each quantity's mean over the runs and its lowest and highest value."""
    common = sorted(set.intersection(*(set(steps) for steps in traces)))
    rows = []
    for step in common:
        row: dict = {"step": step}
        for name in ("min", "max", "discrepancy"):
            values = [steps[step][name] for steps in traces if name in steps[step]]
            if len(values) == len(traces):
                row[name] = {"mean": statistics.fmean(values), "lowest": min(values), "highest": max(values)}
        rows.append(row)
    return rows


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", nargs="+", type=Path, required=True, help="Training runs' output folders.")
    parser.add_argument("--output", default=str(ROOT / "benchmarks" / "results" / "selector_trace.json"))
    args = parser.parse_args(argv)
    rows = summarise([trace(run) for run in args.runs])
    print(f"Instance weights logged during training, {len(args.runs)} runs (mean over runs, [lowest-highest]):")
    print("| step | lowest weight | highest weight | mean discrepancy |\n|---|---|---|---|")
    for row in rows:
        cells = [
            f"{row[name]['mean']:.3f} [{row[name]['lowest']:.3f}-{row[name]['highest']:.3f}]" if name in row else "-"
            for name in ("min", "max", "discrepancy")
        ]
        print(f"| {row['step']} | " + " | ".join(cells) + " |")
    result = {
        "provenance": provenance(),
        "command": "python benchmarks/selector_trace.py " + " ".join(sys.argv[1:] if argv is None else argv),
        "runs": [str(run) for run in args.runs],
        "steps": rows,
    }
    write_result(args.output, result)
    return result


if __name__ == "__main__":
    main()
