"""Does capacity matter on the generated set? Train GFL detectors with different backbones from scratch
under one schedule and score them with the COCO metrics.

    python benchmarks/detector_capacity.py --backbones resnet18 resnet50 --max_steps 600
    python benchmarks/detector_capacity.py --max_steps 1200 --eval_steps 300   # AP against steps

Prints a table and writes benchmarks/results/detector_capacity.json. Every run is a `liaf_hf.experiments.DetectorRun`
(what examples/train_detector.py runs) with the same settings except the backbone.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from datetime import date
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))  # _provenance, also when a test loads this file by path
from _provenance import provenance, write_result  # noqa: E402
from liaf_hf.experiments import DataSpec, DetectorRun, DetectorSpec, Schedule  # noqa: E402


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backbones", nargs="+", default=["resnet18", "resnet50"])
    parser.add_argument("--data_dir", default=str(ROOT / "data" / "shapes-easy"))
    parser.add_argument("--difficulty", default="easy")
    parser.add_argument("--num_train", type=int, default=2000)
    parser.add_argument("--num_val", type=int, default=500)
    parser.add_argument("--image_size", type=int, default=128)
    parser.add_argument("--fpn_channels", type=int, default=64)
    parser.add_argument("--head_stacked_convs", type=int, default=2)
    parser.add_argument("--max_steps", type=int, default=600)
    parser.add_argument("--eval_steps", type=int, default=0, help="Also score every N steps (an AP-vs-steps curve).")
    parser.add_argument("--batch_size", type=int, default=16)
    parser.add_argument("--learning_rate", type=float, default=2e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--work_dir", default=str(ROOT / "runs" / "detector_capacity"))
    parser.add_argument("--output", default=str(ROOT / "benchmarks" / "results" / "detector_capacity.json"))
    return parser.parse_args()


def detector_run(args: argparse.Namespace, backbone: str) -> DetectorRun:
    """The run of one backbone: every setting but the backbone shared."""
    return DetectorRun(
        data=DataSpec(
            data_dir=args.data_dir,
            generated=args.difficulty,
            num_train=args.num_train,
            num_val=args.num_val,
            shortest_edge=args.image_size,
            longest_edge=args.image_size,
        ),
        output_dir=Path(args.work_dir) / backbone,
        detector=DetectorSpec(backbone=backbone, channels=args.fpn_channels, stacked_convs=args.head_stacked_convs),
        schedule=Schedule(
            steps=args.max_steps,
            batch_size=args.batch_size,
            learning_rate=args.learning_rate,
            seed=args.seed,
            eval_every=args.eval_steps,
        ),
        run_name=f"GFL {backbone}",
    )


def ap_against_steps(output_dir: Path) -> list[dict[str, float]]:
    """The evaluations logged during training (empty without --eval_steps)."""
    state = output_dir / "trainer_state.json"
    if not state.is_file():
        return []
    history = json.loads(state.read_text())["log_history"]
    return [
        {"step": entry["step"], "AP": round(entry["eval_AP"], 4), "AP50": round(entry["eval_AP50"], 4)}
        for entry in history
        if "eval_AP" in entry
    ]


def main() -> None:
    args = parse_args()
    rows = []
    for backbone in args.backbones:
        started = time.perf_counter()
        detector_run(args, backbone).run()
        seconds = time.perf_counter() - started
        summary = json.loads((Path(args.work_dir) / backbone / "summary.json").read_text())
        curve = ap_against_steps(Path(args.work_dir) / backbone)
        rows.append({"backbone": backbone, "train_and_eval_seconds": round(seconds, 1), **summary, "curve": curve})

    header = f"| backbone | params (M) | AP | AP50 | AP75 | APs | APm | AR100 | minutes |\n|{'---|' * 9}"
    lines = [header]
    for row in rows:
        lines.append(
            f"| {row['backbone']} | {row['parameters'] / 1e6:.1f} | {row['eval_AP']:.3f} | {row['eval_AP50']:.3f} | "
            f"{row['eval_AP75']:.3f} | {row['eval_APs']:.3f} | {row['eval_APm']:.3f} | {row['eval_AR100']:.3f} | "
            f"{row['train_and_eval_seconds'] / 60:.1f} |"
        )
    if any(row["curve"] for row in rows):
        steps = sorted({point["step"] for row in rows for point in row["curve"]})
        lines += ["", "AP against steps:", "| backbone | " + " | ".join(str(step) for step in steps) + " |",
                  "|---|" + "---|" * len(steps)]  # fmt: skip
        for row in rows:
            by_step = {point["step"]: point["AP"] for point in row["curve"]}
            cells = [f"{by_step[step]:.3f}" if step in by_step else "-" for step in steps]
            lines.append(f"| {row['backbone']} | " + " | ".join(cells) + " |")
    print("\n".join(lines))
    result = {
        "provenance": provenance(),
        "command": "python " + " ".join([os.path.relpath(__file__, ROOT), *sys.argv[1:]]),
        "date": date.today().isoformat(),
        "machine": {
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        },
        "settings": vars(args),
        "results": rows,
        "table": "\n".join(lines),
    }
    write_result(args.output, result)


if __name__ == "__main__":
    main()
