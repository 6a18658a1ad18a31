"""What does each distillation method gain? One teacher, then the student trained with each method and seed
on the same data and schedule; the metrics as mean and standard deviation over seeds.

    python benchmarks/distill_gain.py --preset cpu                                  # every method, 3 seeds
    python benchmarks/distill_gain.py --preset cpu --methods none liaf \\
        'liaf-robust=liaf:{"objective": "robust"}' --seeds 0                          # compare variants

A method is given as `method`, or `label=method:{json options}` for a variant. The teacher is trained once
per setting and cached (runs/teachers/...); with `--reuse`, students whose folder already holds
results are not trained again. Prints a table and writes benchmarks/results/distill_gain_<preset>.json.
Each seed fixes the student's initial weights and data order for every method, so the table is followed by
each method's seed-by-seed difference from one of them (`--paired_against`, `aid` by default): a mean
difference within about two standard errors of 0 is no evidence either way, however the means fall.
What LIAF-KD's selectors add is measured against the same instance loss with uniform weights at the same
strength, AID without its teacher factor: add `'uniform=aid:{"decay": 0.0}'` and `--paired_against uniform`.
Every method is then compared with the same uniform runs, and when those fall low by chance every method looks
ahead; uniform weights run twice, `'uniform-again=aid:{"decay": 0.0, "weight": 10.001}'` beside them and
`--paired_against uniform uniform-again`, pool the reference (each seed's mean of the two) and show in
uniform-again's row how far chance alone moves a run. `--paired_metrics APs AR100 ...` (or `all`) repeats the
paired comparison on other scores, to see which part of the score a difference comes from.
Every run is a `liaf_hf.experiments` spec that calls what examples/distill.py calls, so it measures what users run.

By default the data are the generated shapes set (`--difficulty`). Your own data and teacher (needs them on
disk, or the network for a Hub id and pretrained weights):

    python benchmarks/distill_gain.py --dataset_format kitti --data_dir /data/kitti \\
        --teacher_model_name_or_path runs/kitti-teacher --student_backbone resnet18 --backbone_pretrained \\
        --shortest_edge 384 --longest_edge 1280 --student_steps 20000 --batch_size 16 --methods none aid liaf \\
        --training_flags "--optim sgd --learning_rate 0.01 --warmup_steps 500"

On KITTI-layout data the runs are also scored with VOC mAP at IoU 0.5 and KITTI AP40, and the gain and the
share of the gap recovered are given in VOC mAP50 (the paper's KITTI metric; `--metric` picks another).
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import statistics
import sys
import time
from datetime import date
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))  # _provenance, also when a test loads this file by path
from _provenance import provenance, write_result  # noqa: E402
from liaf_hf.distillation import available_methods, method_settings, parse_method_spec  # noqa: E402
from liaf_hf.experiments import (  # noqa: E402
    add_experiment_arguments,
    check_experiment_arguments,
    experiment_from_args,
)

PRESETS = {
    # Two CPU cores, under two hours for 8 methods x 3 seeds (about 4 minutes per distillation run, 11 for the
    # teacher when it is not cached): the demo's data and model sizes. Students at batch 8 for 400 steps: at
    # the same cost per run, 200 steps of batch 16 left the plain student at AP 0.25 against 0.44 (one seed).
    "cpu": {
        "difficulty": "easy", "image_size": 128, "num_train": 2000, "num_val": 500, "channels": 64,
        "teacher_backbone": "resnet50", "teacher_steps": 600, "student_steps": 400, "batch_size": 8,
        "teacher_batch_size": 16,
    },
    # A machine with a GPU: harder set, larger images and a longer schedule. Run in full it takes about 3 hours
    # on one H200 (speeds of a shortened run on a lent one, docs/benchmarks.md); only the shortened run is done.
    "gpu": {
        "difficulty": "medium", "image_size": 256, "num_train": 10000, "num_val": 2000, "channels": 128,
        "teacher_backbone": "resnet50", "teacher_steps": 6000, "student_steps": 3000, "teacher_batch_size": 16,
        "dataloader_num_workers": 8,
    },
}  # fmt: skip
METRICS = ("AP", "AP50", "APs", "APm", "APl")
# Scored besides COCO's on KITTI-layout data (VOC mAP at IoU 0.5 is the paper's KITTI metric).
KITTI_METRICS = ("VOC_mAP50", "KITTI_mAP40_easy", "KITTI_mAP40_moderate", "KITTI_mAP40_hard")
DEFAULT_METHODS = ["none", "mimic", "fgd", "pkd", "ld", "aid", "liaf", "liaf+ld"]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", choices=sorted(PRESETS), default="cpu")
    parser.add_argument("--methods", nargs="+", default=None, help="Methods or label=method:{json} variants.")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--data_dir", default=None)
    parser.add_argument(
        "--output_dir",
        default=None,
        help="Students' folders (default: runs/distill_gain/<settings>, so --reuse never mixes schedules).",
    )
    parser.add_argument("--student_backbone", default="resnet18")
    parser.add_argument("--reuse", action="store_true", help="Keep students that already have results.")
    parser.add_argument(
        "--selector_train_images",
        type=int,
        default=0,
        help="Methods with selectors also record their weights on this many training images when training ends "
        "(<student>/selector_weights/train_weights.json, for benchmarks/selector_facts.py --split train).",
    )
    parser.add_argument(
        "--resume_from",
        default=None,
        help="A results JSON of an earlier run of this benchmark (e.g. on another machine, whose runs/ folder is "
        "gone): its runs of the requested methods and seeds count as done, if they were trained with the same "
        "settings, method settings and a teacher with the same scores, which a retrained teacher has when "
        "training is deterministic. Each such run is marked `restored_from` in the new JSON.",
    )
    parser.add_argument("--output", default=None, help="JSON file (default: results/distill_gain_<preset>.json).")
    parser.add_argument("--teacher_backbone", default=None, help="Overrides the preset's.")
    parser.add_argument("--teacher_steps", type=int, default=None, help="Overrides the preset's.")
    parser.add_argument("--student_steps", type=int, default=None, help="Overrides the preset's.")
    parser.add_argument("--image_size", type=int, default=None, help="Overrides the preset's.")
    parser.add_argument("--teacher_batch_size", type=int, default=None, help="Overrides the preset's.")
    parser.add_argument(
        "--metric",
        default=None,
        help="The metric of the gain and the gap recovered (default: VOC_mAP50 on KITTI-layout data, else AP).",
    )
    parser.add_argument(
        "--paired_against",
        nargs="+",
        default=["aid"],
        help="Compare every method seed by seed with this one (a label of --methods; skipped when absent): each "
        "seed fixes the initial weights and data order of every method, so per-seed differences cancel the "
        "spread that seeds share. Several labels (e.g. uniform weights run twice, at weights 10 and 10.001): the "
        "reference is their per-seed mean on the seeds all of them ran, which halves the part of its error that "
        "is each run's own luck.",
    )
    parser.add_argument(
        "--paired_metrics",
        nargs="*",
        default=[],
        help="Also compare seed by seed on these metrics (e.g. APs AR100 KITTI_mAP40_moderate; `all`: every metric "
        "the runs have), to see which part of the score a difference comes from.",
    )
    add_experiment_arguments(parser, teacher_cache_dir=ROOT / "runs" / "teachers")
    # The preset supplies defaults; a flag given on the command line wins over it.
    preset, _ = parser.parse_known_args(argv)
    parser.set_defaults(**PRESETS[preset.preset])
    args = parser.parse_args(argv)
    if args.dataset_format == "generated":
        args.data_dir = args.data_dir or str(ROOT / "data" / f"shapes-{args.difficulty}")
    args = check_experiment_arguments(parser, args)
    if args.output_dir is None:
        # Named by every setting of the runs, so --reuse never mixes schedules.
        draft = experiment_from_args(argparse.Namespace(**{**vars(args), "output_dir": "."}))
        args.output_dir = str(ROOT / "runs" / "distill_gain" / draft.students_dir())
    args.methods = args.methods or [m for m in DEFAULT_METHODS if all(p in available_methods() for p in m.split("+"))]
    args.output = args.output or str(ROOT / "benchmarks" / "results" / f"distill_gain_{args.preset}.json")
    return args


def trained_with(summary_file: Path, settings: dict) -> bool:
    """Whether the run in `summary_file` finished with exactly these method settings (defaults included):
    a run recorded before a default changed, or without its settings, is trained again."""
    if not summary_file.is_file():
        return False
    recorded = json.loads(summary_file.read_text()).get("method_settings")
    if recorded != json.loads(json.dumps(settings)):  # as JSON stores them (tuples read back as lists)
        print(f"Training {summary_file.parent.name} again: its recorded settings {recorded} are not {settings}.")
        return False
    return True


# Settings that may differ between a run and the one it resumes: where files live, and which seeds and rows.
RESUMABLE_DIFFERENCES = {"seeds", "data_dir", "output_dir", "teacher_cache_dir", "resume_from", "reuse"}


def restore_runs(args: argparse.Namespace, teacher: dict) -> int:
    """Write the summaries of `args.resume_from`'s matching runs into this run's student folders (so that
    `--reuse` keeps them); refuse a file trained with other settings or another teacher. Returns how many."""
    earlier = json.loads(Path(args.resume_from).read_text())
    ours = {k: v for k, v in vars(args).items() if k not in ("methods", "output")}
    theirs = earlier.get("settings", {})
    differing = sorted(
        k for k in set(ours) | set(theirs) if k not in RESUMABLE_DIFFERENCES and ours.get(k) != theirs.get(k)
    )
    if differing:
        raise SystemExit(
            f"--resume_from {args.resume_from}: trained with other settings ({', '.join(differing)}: "
            + "; ".join(f"{k} {theirs.get(k)!r} there, {ours.get(k)!r} here" for k in differing)
            + ")"
        )
    scores = [
        key
        for key in earlier["teacher"]
        if key.startswith("eval_") and "runtime" not in key and "per_second" not in key
    ]
    changed = [key for key in scores if earlier["teacher"][key] != teacher.get(key)]
    if changed:
        raise SystemExit(
            f"--resume_from {args.resume_from}: its teacher scored differently ({changed[0]} "
            f"{earlier['teacher'][changed[0]]} there, {teacher.get(changed[0])} here), so its students are not "
            "comparable with new ones; run every seed here instead"
        )
    restored = 0
    wanted = {
        (label, seed): (method, options)
        for seed in args.seeds
        for label, method, options in map(parse_method_spec, args.methods)
    }
    for run in earlier["runs"]:
        key = (run["label"], run["seed"])
        if key not in wanted:
            continue
        method, options = wanted[key]
        summary = {k: v for k, v in run.items() if k not in ("label", "method", "options", "seed")}
        if summary.get("method_settings") != json.loads(json.dumps(method_settings(method, options))):
            print(f"Not restoring {key}: its method settings {summary.get('method_settings')} differ.")
            continue
        summary_file = (
            Path(args.output_dir) / f"student-{args.student_backbone}-{run['label']}-seed{run['seed']}" / "summary.json"
        )
        if summary_file.is_file():
            continue
        summary_file.parent.mkdir(parents=True, exist_ok=True)
        summary["restored_from"] = earlier.get("command", args.resume_from)
        summary_file.write_text(json.dumps(summary, indent=2))
        restored += 1
    print(f"Restored {restored} runs from {args.resume_from}.")
    return restored


def summarise(values: list[float]) -> dict[str, float]:
    return {"mean": statistics.fmean(values), "std": statistics.stdev(values) if len(values) > 1 else 0.0}


def pooled_reference(runs: list[dict], labels: list[str]) -> tuple[str, list[dict]]:
    """The label of the reference `labels` make and its runs: for one label, that label and no new runs; for
    several, "a+b" and one run per seed that all of them ran, each numeric score (`eval_*`) their mean."""
    if len(labels) == 1:
        return labels[0], []
    label = "+".join(labels)
    by_label_seed = {(run["label"], run["seed"]): run for run in runs}
    pooled = []
    for seed in dict.fromkeys(run["seed"] for run in runs):
        members = [by_label_seed.get((member, seed)) for member in labels]
        if any(member is None for member in members):
            continue
        keys = [
            key for key in members[0]
            if key.startswith("eval_") and all(isinstance(member.get(key), (int, float)) for member in members)
        ]  # fmt: skip
        pooled.append({"label": label, "seed": seed, **{k: statistics.fmean(m[k] for m in members) for k in keys}})
    return label, pooled


def paired_differences(runs: list[dict], *, reference: str, metric: str) -> list[dict]:
    """Every other method's score minus `reference`'s on the seeds both ran (the plain student `none` left out).

    Returns one row per label that shares at least one seed with the reference: its seeds, the differences
    in seed order, their mean, standard deviation and standard error, and on how many seeds it was ahead.
    """
    scores = {(run["label"], run["seed"]): run[f"eval_{metric}"] for run in runs}
    rows = []
    for label in dict.fromkeys(run["label"] for run in runs):
        if label in (reference, "none"):
            continue
        seeds = [seed for (other, seed) in scores if other == label and (reference, seed) in scores]
        if not seeds:
            continue
        differences = [scores[label, seed] - scores[reference, seed] for seed in seeds]
        spread = summarise(differences)
        rows.append(
            {
                "label": label,
                "seeds": seeds,
                "differences": differences,
                **spread,
                "standard_error": spread["std"] / math.sqrt(len(seeds)),
                "ahead_on": sum(difference > 0 for difference in differences),
            }
        )
    return rows


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    started = time.perf_counter()
    experiment = experiment_from_args(args, teacher_batch_size=args.teacher_batch_size)
    teacher_source = experiment.teacher()
    teacher = teacher_source.metrics
    if args.resume_from:
        restore_runs(args, teacher)
        args.reuse = True
    runs = []
    # Seed by seed, so a run stopped part way still compares every method on the seeds it finished.
    for seed in args.seeds:
        for spec in args.methods:
            label, method, options = parse_method_spec(spec)
            name = f"{label}-seed{seed}"
            student_dir = Path(args.output_dir) / f"student-{args.student_backbone}-{name}"
            summary_file = student_dir / "summary.json"
            if not (args.reuse and trained_with(summary_file, method_settings(method, options))):
                run_started = time.perf_counter()
                experiment.student(
                    teacher_source, method, options, name=name, seed=seed,
                    selector_train_images=args.selector_train_images,
                )  # fmt: skip
                summary = json.loads(summary_file.read_text())
                summary["run_seconds"] = round(time.perf_counter() - run_started, 1)
                summary_file.write_text(json.dumps(summary, indent=2))
            summary = json.loads(summary_file.read_text())
            runs.append({"label": label, "method": method, "options": options, "seed": seed, **summary})

    # The metrics every run has: COCO's, and KITTI's on KITTI-layout data.
    metrics = [metric for metric in METRICS + KITTI_METRICS if all(f"eval_{metric}" in run for run in runs)]
    headline = args.metric or ("VOC_mAP50" if "VOC_mAP50" in metrics else "AP")
    if headline not in metrics:
        raise ValueError(f"--metric {headline}: the runs were scored with {', '.join(metrics)}")
    # Any score every run has (AR100, VOC_AP50_Car, ...); `all`: the table's, less those pycocotools left at -1.
    scored = [
        key[len("eval_") :] for key in runs[0]
        if key.startswith("eval_") and not key.endswith(("runtime", "_per_second"))
        and all(isinstance(run.get(key), (int, float)) for run in runs)
    ]  # fmt: skip
    if args.paired_metrics == ["all"]:
        extra_metrics = [metric for metric in metrics if any(run[f"eval_{metric}"] >= 0 for run in runs)]
    else:
        extra_metrics = list(dict.fromkeys(args.paired_metrics))
        unknown = [metric for metric in extra_metrics if metric not in scored]
        if unknown:
            raise ValueError(
                f"--paired_metrics {' '.join(unknown)}: not a score of every run (they have {', '.join(scored)}); "
                "the trained students are kept, so the same command with --reuse and other names trains nothing"
            )
    baseline = [run[f"eval_{headline}"] for run in runs if run["label"] == "none"]
    baseline_score = statistics.fmean(baseline) if baseline else None
    rows = []
    for label in dict.fromkeys(run["label"] for run in runs):
        chosen = [run for run in runs if run["label"] == label]
        row = {"label": label, "method": chosen[0]["method"], "options": chosen[0]["options"], "seeds": len(chosen)}
        for metric in metrics:
            row[metric] = summarise([run[f"eval_{metric}"] for run in chosen])
        row["run_seconds"] = statistics.fmean(run.get("run_seconds", float("nan")) for run in chosen)
        if baseline_score is not None:
            row[f"gain_{headline}"] = row[headline]["mean"] - baseline_score
            gap = teacher[f"eval_{headline}"] - baseline_score
            row["gap_recovered"] = row[f"gain_{headline}"] / gap if gap > 0 else None
        rows.append(row)

    teacher_name = args.teacher_model_name_or_path or f"{args.teacher_backbone} ({args.teacher_steps} steps)"
    print(f"\nTeacher {teacher_name}: " + ", ".join(f"{m} {teacher[f'eval_{m}']:.3f}" for m in metrics))
    print(f"| method | seeds | {' | '.join(metrics)} | gain {headline} | gap recovered | s/run |")
    print("|---|---|" + "---|" * (len(metrics) + 3))
    for row in rows:
        # pycocotools reports -1 for an area range with no objects (APl on the small shapes sets).
        cells = [f"{row[m]['mean']:.3f} ± {row[m]['std']:.3f}" if row[m]["mean"] >= 0 else "-" for m in metrics]
        gain = row.get(f"gain_{headline}")
        gain = f"{gain:+.3f}" if gain is not None else "-"
        recovered = f"{row['gap_recovered']:.0%}" if row.get("gap_recovered") is not None else "-"
        seconds = f"{row['run_seconds']:.0f}" if row["run_seconds"] == row["run_seconds"] else "-"  # NaN: not timed
        print(f"| {row['label']} | {row['seeds']} | " + " | ".join(cells) + f" | {gain} | {recovered} | {seconds} |")

    reference, pooled = pooled_reference(runs, args.paired_against)
    paired = []
    if any(run["label"] == reference for run in runs + pooled):
        paired = paired_differences(runs + pooled, reference=reference, metric=headline)
    if paired:
        against = reference if not pooled else f"the per-seed mean of {', '.join(args.paired_against)}"
        print(f"\nSeed by seed against {against} ({headline}, on the seeds both ran):")
        print("| method | seeds | mean difference | std | standard error | ahead on |")
        print("|---|---|---|---|---|---|")
        for row in paired:
            print(
                f"| {row['label']} | {len(row['seeds'])} | {row['mean']:+.4f} | {row['std']:.4f} | "
                f"{row['standard_error']:.4f} | {row['ahead_on']} of {len(row['seeds'])} |"
            )

    paired_by_metric = {}
    if paired:
        for metric in (metric for metric in extra_metrics if metric != headline):
            paired_by_metric[metric] = paired_differences(runs + pooled, reference=reference, metric=metric)
    if paired_by_metric:
        labels = [row["label"] for row in paired]
        print(f"\nMean difference (standard error) against {against}, metric by metric:")
        print(f"| metric | {' | '.join(labels)} |")
        print("|---|" + "---|" * len(labels))
        for metric, rows_of_metric in {headline: paired, **paired_by_metric}.items():
            cells = [f"{row['mean']:+.4f} ({row['standard_error']:.4f})" for row in rows_of_metric]
            print(f"| {metric} | " + " | ".join(cells) + " |")

    command = "python benchmarks/distill_gain.py " + " ".join(
        f"'{arg}'" if any(c in arg for c in ' {}"') else arg for arg in (sys.argv[1:] if argv is None else argv)
    )
    result = {
        "provenance": provenance(),
        "command": command.strip(),
        "date": date.today().isoformat(),
        "machine": {
            "cpus": torch.get_num_threads(),
            "platform": platform.platform(),
            "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        },
        "settings": {k: v for k, v in vars(args).items() if k not in ("methods", "output")},
        "teacher": {
            "name_or_path": teacher_source.name_or_path,
            **{k: v for k, v in teacher.items() if k.startswith("eval_") or k == "parameters"},
        },
        "headline_metric": headline,
        "rows": rows,
        "paired_against": reference if paired else None,
        "paired_against_labels": args.paired_against if paired else None,
        "paired": paired,
        "paired_by_metric": paired_by_metric,
        "runs": runs,
        "total_minutes": round((time.perf_counter() - started) / 60, 1),
    }
    print(f"\n{result['total_minutes']} minutes in all")
    write_result(args.output, result)
    return result


if __name__ == "__main__":
    main()
