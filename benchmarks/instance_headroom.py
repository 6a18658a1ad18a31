"""Can weighting the instances of the instance feature loss beat uniform weights at all, and does LIAF-KD?

An oracle headroom test on the generated `varied` set, whose instances differ as real ones do (long-tailed
classes, a 10x range of sizes, crowds, occlusion, truncation, faint objects and 10% wrong annotations;
`liaf_hf.data.synthetic`). One teacher, then the student trained with each weighting of the same instance
loss at the same strength, seed by seed, every row compared with uniform weights on the same seeds:

    python benchmarks/instance_headroom.py                          # every row, six seeds
    python benchmarks/instance_headroom.py --rows uniform oracle-noise liaf --seeds 0 1 2

Rows (`--rows`; labels as in the results JSON):
    none                  the student alone
    uniform               the instance loss with every instance weighted 1 (`aid` with decay 0)
    uniform-again         the same at weight 10.001 instead of 10: a change too small to matter, which shows how
                          far chance alone moves a row (two runs that differ in the last digits of one number
                          part ways over a few hundred steps)
    aid                   AID as published: each instance by exp(-0.1 x the teacher's loss on it)
    aid-batch             AID with one factor per batch (the teacher's loss on the batch)
    oracle-noise          weight 0 on the annotations the generator corrupted (knowledge no method has)
    oracle-teacher        weights from the teacher's correctness on each instance (score x IoU)
    oracle-teacher-wrong  the opposite: weights from how wrong the teacher is on each instance (1 - score x IoU)
    oracle-student        weights from the student's own loss on each instance
    oracle-teacher-student  the teacher's correctness x the student's loss
    oracle-unseen         weight 0 on the instances of the classes the teacher's training labels lack or merge into
                          others (with --teacher_difficulty varied-partial, varied-coarse or varied-misnamed), 1 on
                          the others
    liaf                  LIAF-KD at its defaults
    liaf-informed         LIAF-KD's `task` objective with every per-instance input (the teacher's quality and
                          loss, the student's loss, scale, class), weights normalised over the batch, and
                          sharper selection (entropy_weight 0.3)
    liaf-lookahead        LIAF-KD's `lookahead` objective at its other defaults: the selectors seek the instances
                          whose imitation lowers the student's detection loss on the other half of the batch
    liaf-joint, liaf-task LIAF-KD's `joint` and `task` objectives at their other defaults
    liaf-teacher-quality  LIAF-KD at its defaults, its selectors also shown the teacher's correctness and loss on
                          each instance (what oracle-teacher weighs by)
The oracles' weights are normalised to the strength of uniform weights over the batch
(`liaf_hf.distillation.aid.normalise_over_batch`). Runs go through benchmarks/distill_gain.py (and so
through examples/distill.py): any of its flags passes through, e.g. `--num_train 1000`, `--preset gpu`,
`--teacher_num_train 500` (a teacher that saw a quarter of the images), `--teacher_difficulty varied-coarse`
(a teacher trained on the same images with each rare class labelled as its common look-alike) or
`--teacher_difficulty varied-partial` (with the rare classes left unannotated: taught that they are background) or
`--teacher_difficulty varied-misnamed` (each rare class labelled as a common class of another shape).

Rows with selectors also record their weights on the first 500 training images when training ends
(`--selector_train_images`; `<student>/selector_weights/train_weights.json`), which
`benchmarks/selector_facts.py --split train` sets against the generator's facts, wrong annotations included.

Prints distill_gain's tables, then the verdict: which rows lead uniform by more than two paired standard
errors, and the issue's targets for LIAF-KD. Every row shares the uniform runs, so when they fall low (or high)
by chance every row seems ahead (or behind) together; with `uniform-again` among the rows, the verdict and the
per-class table compare each row with the per-seed mean of `uniform` and `uniform-again` instead, and report
how far `uniform-again` is from `uniform`: the lead a change that does nothing gets. Writes
benchmarks/results/instance_headroom_<preset>.json.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

import distill_gain  # noqa: E402
from _provenance import write_result  # noqa: E402
from liaf_hf.data.synthetic import DIFFICULTIES, SyntheticSpec  # noqa: E402

DIFFICULTY = "varied"
REFERENCE = "uniform"
# Uniform weights again, at a weight no reader would tell from 10: chance's own row, and half the pooled reference.
CHANCE = "uniform-again"
# Rows with selectors record their weights on this many training images at the end (wrong annotations included).
SELECTOR_TRAIN_IMAGES = 500


def unseen_classes(teacher_difficulty: str | None) -> tuple[str, ...]:
    """The classes a teacher trained on `teacher_difficulty`'s labels was never taught: those its training split
    leaves unannotated or writes as another class."""
    if teacher_difficulty is None:
        return ()
    spec = SyntheticSpec.preset(teacher_difficulty)
    return (*spec.unlabelled_classes, *(fine for fine, _ in spec.merged_classes))


def row_specs(facts_file: Path, unseen: tuple[str, ...] = ()) -> dict[str, str]:
    """Every row's `label=method:{options}` spec for distill_gain.py; `unseen` names the classes the teacher was
    never taught (`oracle-unseen`)."""
    return {
        "none": "none",
        "uniform": 'uniform=aid:{"decay": 0.0}',
        "uniform-again": 'uniform-again=aid:{"decay": 0.0, "weight": 10.001}',
        "aid": "aid",
        "aid-batch": 'aid-batch=aid:{"weighting": "batch"}',
        "oracle-noise": "oracle-noise=oracle:" + json.dumps({"source": "noise", "facts_file": str(facts_file)}),
        "oracle-teacher": 'oracle-teacher=oracle:{"source": "teacher_quality"}',
        "oracle-teacher-wrong": 'oracle-teacher-wrong=oracle:{"source": "teacher_error"}',
        "oracle-student": 'oracle-student=oracle:{"source": "student_loss"}',
        "oracle-teacher-student": 'oracle-teacher-student=oracle:{"source": "teacher_right_student_wrong"}',
        "oracle-unseen": "oracle-unseen=oracle:" + json.dumps({"source": "classes", "classes": list(unseen)}),
        "liaf": "liaf",
        "liaf-informed": "liaf-informed=liaf:"
        + json.dumps(
            {
                "objective": "task", "use_teacher_quality": True, "use_student_loss": True, "use_scale": True,
                "use_class": True, "normalise_over": "batch", "entropy_weight": 0.3,
            }
        ),
        "liaf-lookahead": 'liaf-lookahead=liaf:{"objective": "lookahead"}',
        "liaf-joint": 'liaf-joint=liaf:{"objective": "joint"}',
        "liaf-task": 'liaf-task=liaf:{"objective": "task"}',
        "liaf-teacher-quality": 'liaf-teacher-quality=liaf:{"use_teacher_quality": true}',
    }  # fmt: skip


def verdict(paired: list[dict]) -> dict:
    """The headroom and the targets, read from distill_gain's paired rows against uniform weights."""
    by_label = {row["label"]: row for row in paired}

    def lead(row: dict) -> dict:
        return {
            "mean": row["mean"],
            "standard_error": row["standard_error"],
            "seeds": len(row["seeds"]),
            "beyond_two_standard_errors": row["mean"] > 2 * row["standard_error"] and len(row["seeds"]) > 1,
            "behind_by_two_standard_errors": row["mean"] < -2 * row["standard_error"] and len(row["seeds"]) > 1,
        }

    result_rows = {label: lead(row) for label, row in by_label.items()}
    oracles = {label: row for label, row in result_rows.items() if label.startswith("oracle-")}
    leading = [label for label, row in oracles.items() if row["beyond_two_standard_errors"]]
    best = max(oracles, key=lambda label: oracles[label]["mean"], default=None)
    result = {
        "rows": result_rows,
        "oracles": oracles,
        "oracles_ahead": leading,
        "best_oracle": best,
        "headroom": bool(leading),
    }
    liaf = result_rows.get("liaf")
    if liaf is not None:
        result["liaf"] = liaf
        best_lead = oracles[best]["mean"] if best else 0.0
        result["liaf_at_least_half_the_best_oracle"] = best_lead > 0 and liaf["mean"] >= best_lead / 2
        if "aid" in by_label and "liaf" in by_label:
            common = [seed for seed in by_label["liaf"]["seeds"] if seed in by_label["aid"]["seeds"]]
            differences = dict(zip(by_label["liaf"]["seeds"], by_label["liaf"]["differences"]))
            aid_differences = dict(zip(by_label["aid"]["seeds"], by_label["aid"]["differences"]))
            result["liaf_minus_aid"] = sum(differences[s] - aid_differences[s] for s in common) / max(len(common), 1)
    return result


def per_class(runs: list[dict], *, reference: str = REFERENCE) -> dict[str, dict[str, dict]]:
    """Each row's AP per class against `reference`, paired by seed: {label: {class: mean, standard_error}}.
    Which classes a weighting helps or costs (the rare ones, those the teacher never learned) is hidden in the
    mean AP over classes."""
    classes = sorted(key[len("eval_AP_") :] for key in runs[0] if key.startswith("eval_AP_")) if runs else []
    by_seed = {run["seed"]: run for run in runs if run["label"] == reference}
    result: dict[str, dict[str, dict]] = {}
    for label in dict.fromkeys(run["label"] for run in runs if run["label"] != reference):
        paired = [(run, by_seed[run["seed"]]) for run in runs if run["label"] == label and run["seed"] in by_seed]
        if not paired:
            continue
        result[label] = {}
        for name in classes:
            differences = [run[f"eval_AP_{name}"] - base[f"eval_AP_{name}"] for run, base in paired]
            spread = statistics.stdev(differences) / math.sqrt(len(differences)) if len(differences) > 1 else math.nan
            result[label][name] = {"mean": statistics.fmean(differences), "standard_error": spread}
    return result


def read_runs(result: dict) -> None:
    """Add to distill_gain's `result` the verdict, chance's own lead (`uniform-again` against `uniform`) when it
    ran, and the AP per class, all against the reference distill_gain paired with (`result["paired_against"]`:
    `uniform`, or the per-seed mean of `uniform` and `uniform-again`)."""
    runs, reference = result["runs"], result["paired_against"] or REFERENCE
    members = result.get("paired_against_labels") or [reference]
    _, pooled = distill_gain.pooled_reference(runs, members)
    result["verdict"] = verdict(result["paired"])
    result["verdict"]["reference"] = reference
    if CHANCE in members:
        against_one = distill_gain.paired_differences(runs, reference=REFERENCE, metric=result["headline_metric"])
        chance = next(row for row in against_one if row["label"] == CHANCE)
        result["verdict"]["chance"] = {key: chance[key] for key in ("mean", "standard_error", "seeds", "ahead_on")}
    result["per_class_AP"] = per_class(runs + pooled, reference=reference)


def _flag(row: dict) -> str:
    if row["beyond_two_standard_errors"]:
        return "ahead by > 2 SE"
    return "behind by > 2 SE" if row["behind_by_two_standard_errors"] else "within 2 SE"


def print_verdict(result: dict) -> None:
    summary = result["verdict"]
    pooled = "chance" in summary
    against = "the per-seed mean of uniform and uniform-again" if pooled else "uniform instance weights"
    print(f"\nAgainst {against} ({result['headline_metric']}, paired by seed):")
    if pooled:
        chance = summary["chance"]
        print(
            f"  chance alone, uniform-again minus uniform: {chance['mean']:+.4f} (SE {chance['standard_error']:.4f}, "
            f"ahead on {chance['ahead_on']} of {len(chance['seeds'])}): a change that does nothing, so a lead over "
            "uniform alone of this size is chance"
        )
    for label, row in summary["rows"].items():
        if pooled and label in (REFERENCE, CHANCE):
            continue  # each is half the chance line above from the pooled reference
        print(f"  {label}: {row['mean']:+.4f} (SE {row['standard_error']:.4f}, {row['seeds']} seeds): {_flag(row)}")
    print("  headroom: " + ("yes, " + ", ".join(summary["oracles_ahead"]) if summary["headroom"] else "none found"))
    if "liaf" in summary:
        print(
            f"  liaf: at least half the best oracle's lead: {summary['liaf_at_least_half_the_best_oracle']}"
            + (f"; minus aid: {summary['liaf_minus_aid']:+.4f}" if "liaf_minus_aid" in summary else "")
        )
    if result["per_class_AP"]:
        classes = list(next(iter(result["per_class_AP"].values())))
        print(f"\nAP per class against {against}, paired by seed (mean difference):")
        print("| row | " + " | ".join(classes) + " |\n|---|" + "---|" * len(classes))
        for label, row in result["per_class_AP"].items():
            print(f"| {label} | " + " | ".join(f"{row[name]['mean']:+.3f}" for name in classes) + " |")


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", nargs="+", default=None, help="Rows to run (default: all), by label.")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2, 3, 4, 5])
    parser.add_argument("--preset", default="cpu")
    parser.add_argument(
        "--difficulty",
        default=DIFFICULTY,
        help="The generated set: varied, or a preset whose instances differ more (varied-harsh).",
    )
    parser.add_argument("--data_dir", default=None, help="Where the set is generated.")
    parser.add_argument(
        "--teacher_difficulty",
        default=None,
        choices=DIFFICULTIES,
        help="Train the teacher on another preset of the same scenes (distill_gain.py's flag), e.g. varied-partial.",
    )
    parser.add_argument("--output", default=None, help="JSON file (default: results/instance_headroom_<preset>.json).")
    args, passed_on = parser.parse_known_args(argv)
    data_dir = Path(args.data_dir or ROOT / "data" / f"shapes-{args.difficulty}")
    unseen = unseen_classes(args.teacher_difficulty)
    specs = row_specs(data_dir.resolve() / "instance_facts_train.json", unseen)
    rows = args.rows or [row for row in specs if unseen or row != "oracle-unseen"]
    unknown = sorted(set(rows) - set(specs))
    if unknown:
        parser.error(f"unknown rows {unknown}; choose from {list(specs)}")
    if "oracle-unseen" in rows and not unseen:
        parser.error(
            "row oracle-unseen weighs 0 the classes the teacher was never taught: it needs a --teacher_difficulty "
            "whose training labels leave classes out or merge them ("
            + ", ".join(difficulty for difficulty in DIFFICULTIES if unseen_classes(difficulty))
            + ")"
        )
    if args.teacher_difficulty is not None:
        passed_on = ["--teacher_difficulty", args.teacher_difficulty, *passed_on]
    references = [REFERENCE, CHANCE] if CHANCE in rows else [REFERENCE]
    output = args.output or str(ROOT / "benchmarks" / "results" / f"instance_headroom_{args.preset}.json")
    result = distill_gain.main(
        [
            "--preset", args.preset, "--difficulty", args.difficulty, "--data_dir", str(data_dir), "--reuse",
            "--paired_against", *references, "--output", output, "--seeds", *map(str, args.seeds),
            "--selector_train_images", str(SELECTOR_TRAIN_IMAGES),
            "--methods", *(specs[row] for row in rows),
        ]
        + passed_on
    )  # fmt: skip
    read_runs(result)
    result["command"] = "python benchmarks/instance_headroom.py " + " ".join(sys.argv[1:] if argv is None else argv)
    print_verdict(result)
    write_result(output, result)
    return result


if __name__ == "__main__":
    main()
