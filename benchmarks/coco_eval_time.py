"""How long COCO scoring takes with pycocotools and with faster-coco-eval, and whether they agree.

    python benchmarks/coco_eval_time.py                      # 500 generated validation images, 5 rounds
    python benchmarks/coco_eval_time.py --data_dir data/shapes-val500 --rounds 9

Scores the same synthetic detections on a generated validation set (``difficulty="easy"``) with
``CocoDetectionEvaluator(backend=...)``: per image, every ground-truth box jittered by a seeded RNG
(keeping its label), then random false positives up to ``--detections_per_image``; scores are random,
those of the jittered boxes mostly above those of the false positives, as a trained detector's are.
Each backend has one evaluator, updated once; each round times ``compute()`` of every backend in turn
(the order alternating), so a noisy machine slows both alike. The table gives the median and the
fastest round and the first call on its own (faster-coco-eval builds its ground-truth index there).
Fails when a metric differs by more than ``--tolerance``. Writes benchmarks/results/coco_eval_time.json
(``--output``).
"""

from __future__ import annotations

import argparse
import importlib.metadata
import math
import os
import statistics
import sys
import tempfile
import time
from datetime import date
from pathlib import Path
from typing import Any

import numpy as np

from liaf_hf.data import generate_coco_dataset, load_coco_detection
from liaf_hf.metrics import CocoDetectionEvaluator, coco_ground_truth_from_dataset

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))  # _provenance, also when a test loads this file by path
from _provenance import provenance, write_result  # noqa: E402

BACKENDS = ("pycocotools", "faster_coco_eval")


def synthetic_detections(
    ground_truth: Any, *, per_image: int, seed: int
) -> tuple[list[int], list[dict[str, np.ndarray]]]:
    """Image ids and per-image detections (xyxy, labels, scores) near the ground truth plus false positives."""
    rng = np.random.default_rng(seed)
    category_ids = np.asarray(sorted(ground_truth.getCatIds()))
    image_ids = sorted(ground_truth.getImgIds())
    detections = []
    for image_id in image_ids:
        image = ground_truth.imgs[image_id]
        annotations = ground_truth.imgToAnns[image_id][:per_image]
        xywh = np.asarray([a["bbox"] for a in annotations], dtype=np.float64).reshape(-1, 4)
        # Shift each corner by up to 15% of the box size: most stay above IoU 0.5, few above 0.9.
        size = np.concatenate([xywh[:, 2:], xywh[:, 2:]], axis=1)
        found = np.concatenate([xywh[:, :2], xywh[:, :2] + xywh[:, 2:]], axis=1)
        found += rng.uniform(-0.15, 0.15, size=found.shape) * size
        labels = np.asarray([a["category_id"] for a in annotations], dtype=np.int64)
        extra = per_image - len(found)
        corner = rng.uniform(0, 1, size=(extra, 2)) * [image["width"], image["height"]]
        extent = rng.uniform(4, 0.5 * min(image["width"], image["height"]), size=(extra, 2))
        detections.append(
            {
                "boxes": np.concatenate([found, np.concatenate([corner, corner + extent], axis=1)]),
                "labels": np.concatenate([labels, rng.choice(category_ids, size=extra)]),
                "scores": np.concatenate([rng.uniform(0.4, 1.0, len(found)), rng.uniform(0.0, 0.6, extra)]),
            }
        )
    return image_ids, detections


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data_dir", help="Where the generated set is (reused if already there); default: a temp dir.")
    parser.add_argument("--num_images", type=int, default=500)
    parser.add_argument("--detections_per_image", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--tolerance", type=float, default=1e-12, help="Largest metric difference accepted.")
    parser.add_argument("--output", default=str(ROOT / "benchmarks" / "results" / "coco_eval_time.json"))
    args = parser.parse_args(argv)
    load_at_start = os.getloadavg()[0]

    with tempfile.TemporaryDirectory() as scratch:
        data_dir = Path(args.data_dir or scratch)
        generate_coco_dataset(data_dir, difficulty="easy", num_train=0, num_val=args.num_images)
        ground_truth = coco_ground_truth_from_dataset(load_coco_detection(data_dir, "val"))
    image_ids, detections = synthetic_detections(ground_truth, per_image=args.detections_per_image, seed=args.seed)
    evaluators = {backend: CocoDetectionEvaluator(ground_truth, backend=backend) for backend in BACKENDS}
    for evaluator in evaluators.values():
        evaluator.update(image_ids, detections)

    seconds: dict[str, list[float]] = {backend: [] for backend in BACKENDS}
    metrics: dict[str, dict[str, float]] = {}
    for round_index in range(args.rounds):
        for backend in BACKENDS if round_index % 2 == 0 else BACKENDS[::-1]:
            started = time.perf_counter()
            metrics[backend] = evaluators[backend].compute()
            seconds[backend].append(time.perf_counter() - started)

    reference, faster = metrics["pycocotools"], metrics["faster_coco_eval"]
    # NaN (a class without ground truth) must be NaN in both; NaN in one only is a disagreement.
    differences = {
        key: math.inf if math.isnan(value) != math.isnan(faster[key]) else abs(faster[key] - value)
        for key, value in reference.items()
        if not (math.isnan(value) and math.isnan(faster[key]))
    }
    worst_key = max(differences, key=differences.__getitem__)
    rows = [
        {
            "backend": backend,
            "median_seconds": statistics.median(times),
            "fastest_seconds": min(times),
            "first_call_seconds": times[0],
            "seconds": times,
        }
        for backend, times in seconds.items()
    ]
    speedup = rows[0]["median_seconds"] / rows[1]["median_seconds"]
    print(
        f"{len(image_ids)} images, {sum(len(d['scores']) for d in detections)} detections, {args.rounds} rounds "
        f"(load average {load_at_start:.2f} on {os.cpu_count()} CPUs at the start)\n"
    )
    print("| backend | median s | fastest s | first call s | AP | AP50 |\n|---|---|---|---|---|---|")
    for row in rows:
        found = metrics[row["backend"]]
        print(
            f"| {row['backend']} | {row['median_seconds']:.3f} | {row['fastest_seconds']:.3f} | "
            f"{row['first_call_seconds']:.3f} | {found['AP']:.4f} | {found['AP50']:.4f} |"
        )
    print(f"\nfaster-coco-eval: {speedup:.1f}x as fast (medians); largest metric difference "
          f"{differences[worst_key]:.1e} ({worst_key})")  # fmt: skip
    result = {
        "provenance": provenance(),
        "command": "python benchmarks/coco_eval_time.py " + " ".join(sys.argv[1:] if argv is None else argv),
        "date": date.today().isoformat(),
        "versions": {name: importlib.metadata.version(name) for name in ("pycocotools", "faster-coco-eval")},
        "cpus": os.cpu_count(),
        "load_average_at_start": load_at_start,
        "images": len(image_ids),
        "detections": sum(len(d["scores"]) for d in detections),
        "rounds": args.rounds,
        "rows": rows,
        "speedup_of_medians": speedup,
        "largest_metric_difference": {"key": worst_key, "value": differences[worst_key]},
        "metrics": metrics,
    }
    write_result(args.output, result)
    if differences[worst_key] > args.tolerance:
        raise SystemExit(f"the backends disagree: {worst_key} differs by {differences[worst_key]:.3e}")
    return result


if __name__ == "__main__":
    main()
