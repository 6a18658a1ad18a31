"""Charts of the benchmark results: each results JSON gets a PNG of the same name beside it.

    python benchmarks/plot_results.py                                    # every file in benchmarks/results/
    python benchmarks/plot_results.py benchmarks/results/distill_gain_cpu.json

- `distill_gain*.json` (benchmarks/distill_gain.py): the student's score per method as bars (the file's headline
  metric: COCO AP, or VOC mAP50 on KITTI-layout data), the mean over seeds with the standard deviation as
  error bars and each seed as a dot where there are several; the teacher's and the plain student's (method
  `none`) as horizontal lines; the gain over the plain student above each bar.
- `detector_capacity*.json` (benchmarks/detector_capacity.py): AP and AP50 per backbone as bars, and AP
  against training steps where the run scored along the way (`--eval_steps`).

Needs matplotlib (`pip install -e .[dev]`).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
RESULTS_DIR = ROOT / "benchmarks" / "results"

try:
    import matplotlib

    matplotlib.use("Agg")  # files only, never a window
    import matplotlib.pyplot as plt
except ImportError as error:  # pragma: no cover - depends on the environment
    raise SystemExit("benchmarks/plot_results.py needs matplotlib: pip install 'matplotlib>=3.7'") from error

from liaf_hf.errors import DataError  # noqa: E402

TEACHER_COLOUR = "#2b2b2b"
PLAIN_COLOUR = "#8c8c8c"
#: One colour per method family, the same in every chart; other labels take the spare colours in turn.
METHOD_COLOURS = {
    "none": PLAIN_COLOUR,
    "liaf": "#d62728",
    "liaf-robust": "#d62728",
    "liaf-joint": "#f4a582",
    "liaf+ld": "#8c1a1a",
    "aid": "#2ca02c",
    "mimic": "#ff7f0e",
    "fgd": "#9467bd",
    "pkd": "#8c564b",
    "ld": "#17becf",
}
SPARE_COLOURS = ("#1f77b4", "#e377c2", "#bcbd22", "#7f7f7f")


def method_colour(label: str, index: int) -> str:
    return METHOD_COLOURS.get(label, SPARE_COLOURS[index % len(SPARE_COLOURS)])


def _text_colour(colour: str) -> str:
    """Black on light bar colours, white on dark ones (ITU-R BT.601 luma)."""
    red, green, blue = matplotlib.colors.to_rgb(colour)
    return "black" if 0.299 * red + 0.587 * green + 0.114 * blue > 0.6 else "white"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "files",
        nargs="*",
        type=Path,
        help="Results files (default: every distill_gain*.json and detector_capacity*.json in benchmarks/results).",
    )
    return parser.parse_args(argv)


def _load(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as error:
        raise DataError(f"{path}: cannot read the results file: {error}") from error
    if not isinstance(data, dict):
        raise DataError(f"{path}: expected a JSON object, got {type(data).__name__}.")
    return data


def _field(path: Path, record: str, mapping: Any, key: str) -> Any:
    """`mapping[key]`, or a DataError naming the file, the record and the missing key."""
    if not isinstance(mapping, dict) or key not in mapping:
        raise DataError(f"{path}: {record} has no {key!r}.")
    return mapping[key]


# ------------------------------------------------------------------------------------ distillation gain

METRIC_NAMES = {"AP": "COCO AP", "AP50": "COCO AP50", "VOC_mAP50": "VOC mAP50"}


def plot_distill_gain(path: Path) -> Path:
    """Bar chart of the student's score per method in a distill_gain results file (its headline metric: COCO AP,
    or VOC mAP50 on KITTI-layout data); returns the PNG's path."""
    data = _load(path)
    metric = data.get("headline_metric", "AP")
    metric_name = METRIC_NAMES.get(metric, metric)
    rows = _field(path, "the file", data, "rows")
    if not isinstance(rows, list) or not rows:
        raise DataError(f"{path}: 'rows' must be a non-empty list of methods.")
    labels, means, stds, colours = [], [], [], []
    for index, row in enumerate(rows):
        record = f"rows[{index}]"
        label = _field(path, record, row, "label")
        score = _field(path, f"{record} ({label})", row, metric)
        labels.append(label)
        means.append(float(_field(path, f"{record} ({label}) {metric}", score, "mean")))
        stds.append(float(score.get("std", 0.0)))
        colours.append(method_colour(label, index))
    seeds_by_label: dict[str, list[float]] = {}
    for run in data.get("runs", []):
        if "label" in run and f"eval_{metric}" in run:
            seeds_by_label.setdefault(run["label"], []).append(float(run[f"eval_{metric}"]))
    teacher_ap = data.get("teacher", {}).get(f"eval_{metric}")
    plain_ap = means[labels.index("none")] if "none" in labels else None
    settings = data.get("settings", {})
    max_seeds = max((int(row.get("seeds", 1)) for row in rows), default=1)

    figure, axes = plt.subplots(figsize=(max(6.5, 1.3 * len(labels) + 3), 4.8), dpi=120)
    positions = range(len(labels))
    axes.bar(positions, means, color=colours, width=0.62, zorder=2)
    if max_seeds > 1:
        axes.errorbar(positions, means, yerr=stds, fmt="none", ecolor="black", capsize=6, linewidth=1.2, zorder=3)
        for position, label in zip(positions, labels):
            values = seeds_by_label.get(label, [])
            axes.scatter([position] * len(values), values, s=14, color="white", edgecolor="black", zorder=4)
    if teacher_ap is not None:
        teacher_name = f"GFL {settings['teacher_backbone']}" if "teacher_backbone" in settings else ""
        axes.axhline(
            teacher_ap, color=TEACHER_COLOUR, linestyle="--", linewidth=1.3, zorder=1,
            label=f"teacher {teacher_name}: {teacher_ap:.3f}",
        )  # fmt: skip
    if plain_ap is not None:
        axes.axhline(
            plain_ap, color=PLAIN_COLOUR, linestyle=":", linewidth=1.5, zorder=1, label=f"student alone: {plain_ap:.3f}"
        )

    # Zoom on the range that holds the results; the axis says where it starts.
    top_value = max([*(m + s for m, s in zip(means, stds)), teacher_ap or 0.0])
    bottom_value = min(m - s for m, s in zip(means, stds))
    low = max(0.0, bottom_value - 0.6 * (top_value - bottom_value) - 0.02)
    high = top_value + 0.3 * (top_value - low)
    axes.set_ylim(low, high)
    for position, mean, std, label, colour in zip(positions, means, stds, labels, colours):
        text = f"{mean:.3f}" + (f"\n± {std:.3f}" if max_seeds > 1 else "")
        if plain_ap is not None and label != "none":
            text += f"\n({mean - plain_ap:+.3f})"
        axes.text(
            position, low + 0.012 * (high - low), text, ha="center", va="bottom", fontsize=8.5,
            color=_text_colour(colour), fontweight="bold", zorder=5,
        )  # fmt: skip
    axes.set_xticks(list(positions), labels, fontsize=10)
    axes.set_ylabel(f"{metric_name} (axis from {low:.2f})")
    seeds_text = f"mean ± std over {max_seeds} seeds (dots: seeds)" if max_seeds > 1 else "one seed"
    student = settings.get("student_backbone", "student")
    setting = f", preset {settings['preset']}" if "preset" in settings else ""
    if "difficulty" in settings:
        setting += f", {settings['difficulty']} set"
    axes.set_title(
        f"Distilling into a GFL {student}: student {metric_name} by method{setting}\n{seeds_text}; "
        f"bar text: {metric_name} (gain over alone)",
        fontsize=10.5,
    )
    if teacher_ap is not None or plain_ap is not None:
        axes.legend(loc="upper left", fontsize=9, frameon=True, framealpha=0.95)
    axes.grid(axis="y", color="#dddddd", zorder=0)
    axes.spines[["top", "right"]].set_visible(False)
    return _save_beside(figure, path)


# ------------------------------------------------------------------------------------ detector capacity


def plot_detector_capacity(path: Path) -> Path:
    """AP and AP50 per backbone (and AP against steps when recorded); returns the PNG's path."""
    data = _load(path)
    results = _field(path, "the file", data, "results")
    if not isinstance(results, list) or not results:
        raise DataError(f"{path}: 'results' must be a non-empty list of backbones.")
    names, ap, ap50 = [], [], []
    for index, row in enumerate(results):
        backbone = _field(path, f"results[{index}]", row, "backbone")
        record = f"results[{index}] ({backbone})"
        parameters = row.get("parameters")
        names.append(f"{backbone}\n{parameters / 1e6:.1f} M params" if parameters else backbone)
        ap.append(float(_field(path, record, row, "eval_AP")))
        ap50.append(float(_field(path, record, row, "eval_AP50")))
    curves = [(name.split("\n")[0], row.get("curve") or []) for name, row in zip(names, results)]
    has_curves = any(curve for _, curve in curves)

    bar_width = max(4.5, 1.6 * len(names) + 2.5)
    figure, panels = plt.subplots(
        1, 2 if has_curves else 1, figsize=(bar_width + (5 if has_curves else 0), 4.4), dpi=120
    )
    bars = panels[0] if has_curves else panels
    width = 0.36
    for offset, values, label, colour in ((-width / 2, ap, "AP", "#1f77b4"), (width / 2, ap50, "AP50", "#9ecae1")):
        positions = [index + offset for index in range(len(names))]
        bars.bar(positions, values, width=width, label=label, color=colour, zorder=2)
        for position, value in zip(positions, values):
            bars.text(position, value + 0.01, f"{value:.3f}", ha="center", va="bottom", fontsize=9)
    bars.set_xticks(range(len(names)), names, fontsize=9.5)
    bars.set_xlim(-0.7, len(names) - 0.3)
    bars.set_ylim(0, 1.08)
    bars.set_ylabel("COCO AP")
    settings = data.get("settings", {})
    steps = f", {settings['max_steps']} steps" if "max_steps" in settings else ""
    bars.set_title(f"GFL trained from scratch, one schedule{steps}", fontsize=10.5)
    bars.legend(loc="upper right", fontsize=9, frameon=False)
    bars.grid(axis="y", color="#dddddd", zorder=0)
    bars.spines[["top", "right"]].set_visible(False)
    if has_curves:
        lines = panels[1]
        for (backbone, curve), colour in zip(curves, SPARE_COLOURS):
            if curve:
                steps, values = [point["step"] for point in curve], [point["AP"] for point in curve]
                lines.plot(steps, values, marker="o", label=backbone, color=colour)
        lines.set_xlabel("training step")
        lines.set_ylabel("COCO AP")
        lines.set_title("AP against training steps", fontsize=10.5)
        lines.legend(fontsize=9, frameon=False)
        lines.grid(color="#dddddd")
        lines.spines[["top", "right"]].set_visible(False)
    return _save_beside(figure, path)


def _save_beside(figure, path: Path) -> Path:
    """Write `figure` as a PNG of the same name beside the results file `path`, close it, return its path."""
    figure.tight_layout()
    output = path.with_suffix(".png")
    figure.savefig(output)
    plt.close(figure)
    return output


PLOTTERS = {"distill_gain": plot_distill_gain, "detector_capacity": plot_detector_capacity}


def plot(path: Path) -> Path:
    """The chart of one results file, chosen by its name's prefix."""
    for prefix, plotter in PLOTTERS.items():
        if path.name.startswith(prefix):
            return plotter(path)
    raise DataError(f"{path}: no chart for this file; expected a name starting with one of {sorted(PLOTTERS)}.")


def main(argv: list[str] | None = None) -> list[Path]:
    args = parse_args(argv)
    files = args.files or sorted(path for prefix in PLOTTERS for path in RESULTS_DIR.glob(f"{prefix}*.json"))
    written = [plot(Path(path)) for path in files]
    for path in written:
        print(f"wrote {path}")
    return written


if __name__ == "__main__":
    main(sys.argv[1:])
