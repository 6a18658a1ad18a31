"""What do LIAF-KD's selectors do with the instances? The weights they gave, against what the generator did to
each instance.

A LIAF-KD run writes its selectors' weights on its first evaluation images at the start and at each evaluation
(`<run>/selector_weights/weights.json`, `liaf_hf.visualization.selector_weights`). This matches each of those
instances with its record in the generated set's `instance_facts_<split>.json` (by its box) and reports, at the
last recorded step, how far the weights spread and their mean per group of facts (faint or not, size, truncated,
occluded, class; as benchmarks/instance_facts.py groups them):

    python benchmarks/selector_facts.py --runs runs/distill_gain/<pair>/student-resnet18-liaf-seed* \
        --data_dir data/shapes-varied-harsh

The evaluation images carry clean annotations. Whether the selectors down-weight the wrong training annotations
shows on the training images, for runs that recorded their weights there (`--selector_train_images`):

    python benchmarks/selector_facts.py --split train --runs ... --data_dir data/shapes-varied

Prints a table and writes benchmarks/results/selector_facts.json (or --output).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))  # _provenance and instance_facts, also when a test loads this file
from _provenance import provenance, write_result  # noqa: E402
from instance_facts import groups_of  # noqa: E402

# Recorded boxes are rounded to 0.01 px and come back through the image processor: matched within this.
BOX_TOLERANCE = 0.05


class BoxIndex:
    """A set's images, found by their annotation boxes (xyxy pixels, in order) to within `BOX_TOLERANCE`."""

    def __init__(self, boxes: dict[int, list]) -> None:
        self._by_count: dict[int, list[tuple[int, np.ndarray]]] = {}
        for image_id, image_boxes in boxes.items():
            self._by_count.setdefault(len(image_boxes), []).append((image_id, np.asarray(image_boxes, dtype=float)))

    def find(self, boxes) -> int | None:
        """The id of the image whose boxes these are, or None."""
        wanted = np.asarray(boxes, dtype=float)
        for image_id, image_boxes in self._by_count.get(len(wanted), []):
            if np.abs(image_boxes - wanted).max(initial=0.0) <= BOX_TOLERANCE:
                return image_id
        return None


def image_index(data_dir: Path, split: str) -> tuple[BoxIndex, dict[int, str]]:
    """The split's images by their annotation boxes, and the category names."""
    annotations = json.loads((data_dir / "annotations" / f"instances_{split}.json").read_text())
    boxes: dict[int, list] = {}
    for annotation in annotations["annotations"]:
        x, y, width, height = annotation["bbox"]
        boxes.setdefault(annotation["image_id"], []).append((x, y, x + width, y + height))
    names = {category["id"]: category["name"] for category in annotations["categories"]}
    return BoxIndex(boxes), names


# What each split's weights were recorded in: the evaluation images (pictures), or training images at the end.
WEIGHTS_FILES = {"val": "weights.json", "train": "train_weights.json"}


def matched_weights(
    run: Path, index: BoxIndex, facts: dict[int, list[dict]], *, split: str = "val"
) -> list[tuple[float, dict]]:
    """(weight, facts) of every instance the run's selectors weighed at their last recorded step."""
    path = run / "selector_weights" / WEIGHTS_FILES.get(split, "weights.json")
    if not path.is_file():
        raise FileNotFoundError(
            f"{path}: no selector weights on the {split} split"
            + (" (record them with --selector_train_images)" if split == "train" else "")
        )
    steps = json.loads(path.read_text())
    matched = []
    for image in steps[-1]["images"]:
        image_id = index.find(image["boxes_xyxy"])
        if image_id is None:
            raise ValueError(f"{run}: an image's boxes match no image of the set: {image['boxes_xyxy']}")
        matched.extend(zip(image["weights"], facts[image_id]))
    return matched


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", nargs="+", required=True, help="LIAF-KD runs' output folders.")
    parser.add_argument("--data_dir", default=str(ROOT / "data" / "shapes-varied-harsh"))
    parser.add_argument(
        "--split",
        default="val",
        choices=sorted(WEIGHTS_FILES),
        help="val: the weights drawn on the evaluation images; train: those recorded on training images at the "
        "end of training (--selector_train_images), with the training annotations' facts, wrong ones included.",
    )
    parser.add_argument("--output", default=str(ROOT / "benchmarks" / "results" / "selector_facts.json"))
    args = parser.parse_args(argv)
    data_dir = Path(args.data_dir)
    index, names = image_index(data_dir, args.split)
    records = json.loads((data_dir / f"instance_facts_{args.split}.json").read_text())["annotations"]
    facts: dict[int, list[dict]] = {}
    for record in records:
        facts.setdefault(record["image_id"], []).append(record)

    per_run, by_group, by_run_group = [], {}, {}
    for run in map(Path, args.runs):
        weights = matched_weights(run, index, facts, split=args.split)
        values = [weight for weight, _ in weights]
        per_run.append(
            {
                "run": run.name,
                "instances": len(values),
                "min": min(values),
                "max": max(values),
                "std": statistics.pstdev(values),
            }
        )
        run_groups: dict[str, list[float]] = {}
        for weight, record in weights:
            for group in groups_of(record, names):
                by_group.setdefault(group, []).append(weight)
                run_groups.setdefault(group, []).append(weight)
        for group, group_weights in run_groups.items():
            by_run_group.setdefault(group, []).append(statistics.fmean(group_weights))
    # Each group's mean over all runs' instances, and the lowest and highest of its per-run means: a group
    # the selectors favour in every run has all its per-run means on one side of 1.
    groups = [
        {
            "group": group,
            "instances": len(values),
            "mean_weight": statistics.fmean(values),
            "run_means": by_run_group[group],
        }
        for group, values in sorted(by_group.items(), key=lambda item: (item[0] != "all", item[0]))
    ]
    print("| run | instances | lowest weight | highest weight | std |")
    print("|---|---|---|---|---|")
    for row in per_run:
        print(f"| {row['run']} | {row['instances']} | {row['min']:.3f} | {row['max']:.3f} | {row['std']:.4f} |")
    print("\n| group | instances | mean weight | per-run means, lowest - highest |")
    print("|---|---|---|---|")
    for row in groups:
        spread = f"{min(row['run_means']):.4f} - {max(row['run_means']):.4f}"
        print(f"| {row['group']} | {row['instances']} | {row['mean_weight']:.4f} | {spread} |")
    result = {
        "provenance": provenance(),
        "command": "python benchmarks/selector_facts.py " + " ".join(sys.argv[1:] if argv is None else argv),
        "data_dir": args.data_dir,
        "split": args.split,
        "runs": per_run,
        "groups": groups,
    }
    write_result(args.output, result)
    return result


if __name__ == "__main__":
    main()
