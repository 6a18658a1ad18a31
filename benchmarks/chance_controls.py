"""How far does chance alone move a run? Every no-op control in the results, read six seeds at a time.

A no-op control is a second run of the reference that changes nothing anyone could mean: uniform instance
weights at 10.001 instead of 10 (`'uniform-again=aid:{"decay": 0.0, "weight": 10.001}'`). Training is
deterministic, but the two runs of a seed part ways over a few hundred steps, so their seed-by-seed
difference is a draw from chance alone. If the paired standard error described chance fully, that
difference would lie beyond two standard errors in about one block of seeds in ten (Student's t with
seeds - 1 degrees of freedom). This script collects every such pair that the result files of
`distill_gain.py` and `instance_headroom.py` hold, one setting (student folder and teacher) at a time and
each run counted once however many files repeat it, splits each setting's seeds into blocks of `--block`
(seeds 0-5, 6-11, ...), and for each block puts the control's paired t beside that of the methods named
by `--methods`, against the same reference runs:

    python benchmarks/chance_controls.py                                   # every file in benchmarks/results
    python benchmarks/chance_controls.py --results a.json b.json --methods liaf 'flat=liaf:{"entropy_weight": 1000.0}'

Runs are matched by method and options, not by label, so a control that one file calls `uniform-weight10.001`
and another `uniform-again` is the same run.

A method's lead counts for something only when it is clearly larger than the leads the controls reach.
The summary gives how many control blocks fell beyond two and three standard errors, next to how many a
t distribution expects, and the exact sign-flip probability of each block (the share of the 2^n ways of
flipping the differences' signs whose mean is at least as far from 0; it assumes only that the
differences are symmetric about 0). Prints a table and writes benchmarks/results/chance_controls.json
(or --output).
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import statistics
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
from _provenance import provenance, write_result  # noqa: E402
from liaf_hf.distillation import parse_method_spec  # noqa: E402

_DEFAULT_REFERENCE = 'uniform=aid:{"decay": 0.0}'
_DEFAULT_TWIN = 'uniform-again=aid:{"decay": 0.0, "weight": 10.001}'


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--results", nargs="+", type=Path,
        help="result files of distill_gain.py or instance_headroom.py (default: every one in benchmarks/results)",
    )  # fmt: skip
    parser.add_argument(
        "--reference", default=_DEFAULT_REFERENCE, help="the reference runs, as distill_gain's --methods names them"
    )
    parser.add_argument("--twin", default=_DEFAULT_TWIN, help="the no-op control: the reference changed in nothing")
    parser.add_argument(
        "--methods", nargs="*", default=["aid", "liaf"],
        help="methods whose blocks are set beside the control's, as distill_gain's --methods names them",
    )  # fmt: skip
    parser.add_argument("--block", type=int, default=6, help="seeds per block, taken in seed order")
    parser.add_argument("--output", default=str(ROOT / "benchmarks" / "results" / "chance_controls.json"))
    args = parser.parse_args(argv)
    if args.block < 2:
        parser.error("--block must be at least 2: one seed has no standard error")
    return args


def student_t_two_sided(t: float, degrees: int) -> float:
    """P(|T| >= |t|) for Student's t with `degrees` degrees of freedom (its density integrated numerically)."""
    if degrees < 1:
        raise ValueError(f"degrees of freedom must be at least 1, not {degrees}")
    t = abs(t)
    if math.isinf(t):
        return 0.0
    log_norm = math.lgamma((degrees + 1) / 2) - math.lgamma(degrees / 2) - 0.5 * math.log(degrees * math.pi)

    def density(x: float) -> float:
        return math.exp(log_norm - (degrees + 1) / 2 * math.log1p(x * x / degrees))

    intervals = 2000  # Simpson's rule on [0, |t|]; the density is smooth, so this is exact to ~1e-10
    step = t / intervals
    total = density(0.0) + density(t)
    total += sum((4 if i % 2 else 2) * density(i * step) for i in range(1, intervals))
    return max(0.0, 1.0 - 2.0 * total * step / 3.0)


def sign_flip_probability(differences: list[float]) -> float:
    """The share of the 2^n sign flips of `differences` whose mean is at least as far from 0 as theirs."""
    observed = abs(sum(differences))
    magnitudes = [abs(difference) for difference in differences]
    tolerance = 1e-12 * max(1.0, sum(magnitudes))
    beyond = sum(
        abs(sum(sign * magnitude for sign, magnitude in zip(signs, magnitudes))) >= observed - tolerance
        for signs in itertools.product((1, -1), repeat=len(magnitudes))
    )  # fmt: skip
    return beyond / 2 ** len(magnitudes)


def paired_block(differences: list[float]) -> dict:
    """The mean, standard error, t, seeds ahead and both probabilities of one block of paired differences."""
    mean = statistics.fmean(differences)
    standard_error = statistics.stdev(differences) / math.sqrt(len(differences))
    t = mean / standard_error if standard_error > 0 else (0.0 if mean == 0 else math.copysign(math.inf, mean))
    return {
        "mean": mean,
        "standard_error": standard_error,
        "t": t,
        "ahead_on": sum(difference > 0 for difference in differences),
        "t_probability": student_t_two_sided(t, len(differences) - 1) if mean != 0 else 1.0,
        "sign_flip_probability": sign_flip_probability(differences),
    }


def collect_runs(files: list[Path]) -> tuple[dict, list[str]]:
    """{(setting, metric): {(method, options JSON, seed): score}} from every file, and the files that held runs.

    A setting is one student folder with one teacher (its headline score tells a retrained teacher apart).
    A run that several files repeat is counted once; where they disagree, the file written last wins.
    """
    loaded = []
    for path in files:
        try:
            result = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as error:
            raise ValueError(f"{path}: not a readable result file ({error})") from None
        if not isinstance(result, dict) or not isinstance(result.get("runs"), list) or "settings" not in result:
            continue  # another benchmark's result: nothing to pair
        loaded.append((result.get("provenance", {}).get("date") or result.get("date") or "", str(path), result))
    settings: dict = {}
    used = []
    for _, path, result in sorted(loaded):
        metric = result.get("headline_metric") or "AP"
        teacher_score = result.get("teacher", {}).get(f"eval_{metric}")
        folder = Path(result["settings"].get("output_dir") or path).name
        setting = (f"{folder} (teacher {metric} {teacher_score:.4f})" if teacher_score is not None else folder, metric)
        scores = settings.setdefault(setting, {})
        held = False
        for run in result["runs"]:
            score = run.get(f"eval_{metric}") if isinstance(run, dict) else None
            if not isinstance(score, (int, float)) or "method" not in run or "seed" not in run:
                continue
            scores[run["method"], json.dumps(run.get("options") or {}, sort_keys=True), int(run["seed"])] = score
            held = True
        if held:
            used.append(_relative(Path(path)))
    return settings, used


def _relative(path: Path) -> str:
    """`path` from the repository's root when it lies inside it, so a result file reads the same on every clone."""
    try:
        return str(path.resolve().relative_to(ROOT))
    except ValueError:
        return str(path)


def compare(settings: dict, *, reference: str, twin: str, methods: list[str], block: int) -> list[dict]:
    """One row per setting and block of `block` seeds where the reference and the twin both ran every seed;
    each of `methods` (method specs, as `parse_method_spec` reads them) under its label."""

    def key(spec: str) -> tuple[str, str]:
        _, method, options = parse_method_spec(spec)
        return method, json.dumps(options, sort_keys=True)

    rows = []
    for (setting, metric), scores in settings.items():
        by_spec: dict = {}
        for (method, options, seed), score in scores.items():
            by_spec.setdefault((method, options), {})[seed] = score
        reference_runs, twin_runs = by_spec.get(key(reference), {}), by_spec.get(key(twin), {})
        seeds = sorted(set(reference_runs) & set(twin_runs))
        for start in range(0, len(seeds) - block + 1, block):
            chosen = seeds[start : start + block]
            row = {
                "setting": setting,
                "metric": metric,
                "seeds": chosen,
                "control": {
                    "differences": [twin_runs[s] - reference_runs[s] for s in chosen],
                    **paired_block([twin_runs[s] - reference_runs[s] for s in chosen]),
                },
                "methods": {},
            }
            for spec in methods:
                runs = by_spec.get(key(spec), {})
                if not all(s in runs for s in chosen):
                    continue
                against_reference = [runs[s] - reference_runs[s] for s in chosen]
                against_both = [runs[s] - (reference_runs[s] + twin_runs[s]) / 2 for s in chosen]
                row["methods"][parse_method_spec(spec)[0]] = {
                    "against_reference": {"differences": against_reference, **paired_block(against_reference)},
                    "against_both": {"differences": against_both, **paired_block(against_both)},
                }
            rows.append(row)
    return rows


def summarise(rows: list[dict], block: int) -> dict:
    """How many control blocks lie beyond 2 and 3 standard errors, against what Student's t expects."""
    t_values = [row["control"]["t"] for row in rows]
    summary = {"blocks": len(rows), "seeds_per_block": block}
    for bound in (2, 3):
        expected_share = student_t_two_sided(bound, block - 1)
        summary[f"beyond_{bound}_se"] = sum(abs(t) > bound for t in t_values)
        summary[f"expected_beyond_{bound}_se"] = expected_share * len(rows)
    summary["largest_abs_t"] = max((abs(t) for t in t_values), default=None)
    summary["all_one_sign"] = sum(row["control"]["ahead_on"] in (0, block) for row in rows)
    summary["expected_all_one_sign"] = len(rows) * 2 / 2**block
    return summary


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    output = Path(args.output).resolve()
    files = args.results or sorted(
        path for path in (ROOT / "benchmarks" / "results").glob("*.json") if path.resolve() != output
    )  # fmt: skip
    missing = [str(path) for path in files if not path.is_file()]
    if missing:
        raise FileNotFoundError(f"no such result file: {', '.join(missing)}")
    for spec in (args.reference, args.twin, *args.methods):
        parse_method_spec(spec)  # an unknown method or option is named before any file is read
    settings, used = collect_runs(files)
    rows = compare(settings, reference=args.reference, twin=args.twin, methods=args.methods, block=args.block)
    if not rows:
        raise ValueError(
            f"no setting in {len(files)} result file(s) ran both {args.reference} and {args.twin} "
            f"on {args.block} seeds; run distill_gain.py with both (see its docstring)"
        )
    summary = summarise(rows, args.block)

    labels = [parse_method_spec(spec)[0] for spec in args.methods]
    print(f"Paired t against {args.reference}, {args.block} seeds a block (the control: {args.twin})")
    print(f"| setting | seeds | control: mean (SE), t, ahead on | {' | '.join(f'{label}: t' for label in labels)} |")
    print("|---|---|---|" + "---|" * len(labels))
    for row in rows:
        control = row["control"]
        cells = [
            f"{row['methods'][label]['against_reference']['t']:+.2f}" if label in row["methods"] else "-"
            for label in labels
        ]  # fmt: skip
        print(
            f"| {row['setting']} | {row['seeds'][0]}-{row['seeds'][-1]} | {control['mean']:+.4f} "
            f"({control['standard_error']:.4f}), {control['t']:+.2f}, {control['ahead_on']} of {len(row['seeds'])} | "
            + " | ".join(cells) + " |"
        )  # fmt: skip
    print(
        f"\n{summary['blocks']} control blocks: {summary['beyond_2_se']} beyond 2 SE "
        f"(Student's t expects {summary['expected_beyond_2_se']:.1f}), {summary['beyond_3_se']} beyond 3 SE "
        f"(expects {summary['expected_beyond_3_se']:.2f}), {summary['all_one_sign']} with every seed on one side "
        f"(expects {summary['expected_all_one_sign']:.2f}); largest |t| {summary['largest_abs_t']:.2f}"
    )
    result = {
        "provenance": provenance(),
        "command": (
            "python benchmarks/chance_controls.py "
            + " ".join(f"'{a}'" if any(c in a for c in ' {}"') else a for a in (sys.argv[1:] if argv is None else argv))
        ).strip(),
        "reference": args.reference,
        "twin": args.twin,
        "files": used,
        "summary": summary,
        "blocks": rows,
    }
    write_result(args.output, result)
    return result


if __name__ == "__main__":
    main()
