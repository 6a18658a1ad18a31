"""benchmarks/instance_headroom.py's reading of the runs: the verdict on headroom and LIAF-KD's targets, and the
AP per class against uniform weights, paired by seed."""

import json
import math

import pytest

from tiny import ROOT, load_script


@pytest.fixture(scope="module")
def headroom():
    return load_script(ROOT / "benchmarks" / "instance_headroom.py", "instance_headroom")


def paired_row(label, differences):
    mean = sum(differences) / len(differences)
    spread = math.sqrt(sum((d - mean) ** 2 for d in differences) / (len(differences) - 1))
    return {
        "label": label,
        "seeds": list(range(len(differences))),
        "differences": differences,
        "mean": mean,
        "standard_error": spread / math.sqrt(len(differences)),
    }


def test_an_oracle_beyond_two_standard_errors_is_headroom_and_liaf_is_held_to_it(headroom):
    paired = [
        paired_row("oracle-noise", [0.010, 0.012, 0.011, 0.009]),  # a steady lead
        paired_row("oracle-teacher", [0.03, -0.03, 0.02, -0.02]),  # level: noise both ways
        paired_row("liaf", [0.004, 0.006, 0.005, 0.005]),
        paired_row("aid", [0.001, 0.001, 0.001, 0.001]),
    ]
    verdict = headroom.verdict(paired)
    assert verdict["headroom"] and verdict["oracles_ahead"] == ["oracle-noise"]
    assert verdict["best_oracle"] == "oracle-noise"
    assert verdict["liaf"]["beyond_two_standard_errors"]
    assert not verdict["liaf_at_least_half_the_best_oracle"]  # 0.005 against half of 0.0105
    assert verdict["liaf_minus_aid"] == pytest.approx(0.004)

    level = headroom.verdict([paired_row("oracle-teacher", [0.03, -0.03, 0.02, -0.02])])
    assert not level["headroom"] and level["oracles_ahead"] == []
    assert not level["oracles"]["oracle-teacher"]["behind_by_two_standard_errors"]

    # A steady loss is no headroom either, and is told apart from a level row.
    behind = headroom.verdict([paired_row("oracle-teacher-wrong", [-0.015, -0.012, -0.018, -0.016])])
    row = behind["oracles"]["oracle-teacher-wrong"]
    assert not behind["headroom"] and row["behind_by_two_standard_errors"] and not row["beyond_two_standard_errors"]


def test_ap_per_class_is_paired_by_seed_and_skips_seeds_uniform_did_not_run(headroom):
    def run(label, seed, ring, circle):
        return {"label": label, "seed": seed, "eval_AP_ring": ring, "eval_AP_circle": circle}

    runs = [
        run("uniform", 0, 0.20, 0.40), run("uniform", 1, 0.30, 0.50),
        run("oracle-teacher", 0, 0.10, 0.41), run("oracle-teacher", 1, 0.22, 0.52),
        run("oracle-teacher", 2, 0.90, 0.90),  # no uniform run on seed 2: left out
    ]  # fmt: skip
    table = headroom.per_class(runs)
    assert list(table) == ["oracle-teacher"]
    assert table["oracle-teacher"]["ring"]["mean"] == pytest.approx(-0.09)
    assert table["oracle-teacher"]["circle"]["mean"] == pytest.approx(0.015)
    assert table["oracle-teacher"]["ring"]["standard_error"] == pytest.approx(0.01)


def test_with_uniform_again_every_row_is_read_against_the_mean_of_both_uniform_runs(headroom):
    def run(label, seed, ap, ring):
        return {"label": label, "seed": seed, "eval_AP": ap, "eval_AP_ring": ring, "eval_runtime": 5.0}

    # The uniform runs fell low by chance: uniform-again, which changes nothing, leads them on every seed, and so
    # does aid by the same margin. Against uniform alone aid is ahead by far more than 2 SE; against the pooled
    # reference it is level.
    runs = [
        run("uniform", 0, 0.20, 0.10), run("uniform", 1, 0.30, 0.20), run("uniform", 2, 0.25, 0.15),
        run("uniform-again", 0, 0.22, 0.12), run("uniform-again", 1, 0.33, 0.22), run("uniform-again", 2, 0.26, 0.17),
        run("aid", 0, 0.21, 0.11), run("aid", 1, 0.32, 0.21), run("aid", 2, 0.255, 0.13),
        run("aid", 3, 0.9, 0.9),  # no uniform runs on seed 3: left out
    ]  # fmt: skip
    gain = headroom.distill_gain
    against_uniform = gain.paired_differences(runs, reference="uniform", metric="AP")
    assert headroom.verdict(against_uniform)["rows"]["aid"]["beyond_two_standard_errors"]

    reference, pooled = gain.pooled_reference(runs, ["uniform", "uniform-again"])
    assert reference == "uniform+uniform-again"
    assert [(r["seed"], r["eval_AP"]) for r in pooled] == [
        (0, pytest.approx(0.21)),
        (1, pytest.approx(0.315)),
        (2, 0.255),
    ]
    # What distill_gain.py --paired_against uniform uniform-again hands instance_headroom.py.
    result = {
        "runs": runs,
        "paired": gain.paired_differences(runs + pooled, reference=reference, metric="AP"),
        "paired_against": reference,
        "paired_against_labels": ["uniform", "uniform-again"],
        "headline_metric": "AP",
    }
    headroom.read_runs(result)
    verdict = result["verdict"]
    assert verdict["reference"] == "uniform+uniform-again"
    assert verdict["chance"]["mean"] == pytest.approx(0.02) and verdict["chance"]["ahead_on"] == 3
    aid = verdict["rows"]["aid"]
    assert aid["mean"] == pytest.approx(0.0017, abs=1e-4) and aid["seeds"] == 3
    assert not aid["beyond_two_standard_errors"] and not aid["behind_by_two_standard_errors"]
    assert result["per_class_AP"]["aid"]["ring"]["mean"] == pytest.approx(-0.01)  # 0, 0 and -0.03

    # With one reference run nothing is pooled and there is no chance row.
    assert gain.pooled_reference(runs, ["uniform"]) == ("uniform", [])
    result = {"runs": runs, "paired": against_uniform, "paired_against": "uniform", "headline_metric": "AP"}
    headroom.read_runs(result)
    assert result["verdict"]["reference"] == "uniform" and "chance" not in result["verdict"]


def test_oracle_unseen_weighs_zero_the_classes_the_teachers_labels_lack_and_needs_such_a_teacher(headroom, capsys):
    assert headroom.unseen_classes(None) == ()
    assert headroom.unseen_classes("varied-partial") == ("ring", "square_hole", "triangle_down")
    assert headroom.unseen_classes("varied-coarse") == ("ring", "square_hole", "triangle_down")
    assert headroom.unseen_classes("varied-misnamed") == ("ring", "square_hole", "triangle_down")
    spec = headroom.row_specs(ROOT / "facts.json", headroom.unseen_classes("varied-partial"))["oracle-unseen"]
    label, options = spec.split("=oracle:")
    assert label == "oracle-unseen"
    assert json.loads(options) == {"source": "classes", "classes": ["ring", "square_hole", "triangle_down"]}
    with pytest.raises(SystemExit):
        headroom.main(["--rows", "uniform", "oracle-unseen", "--seeds", "0"])
    error = capsys.readouterr().err
    assert "row oracle-unseen weighs 0 the classes the teacher was never taught" in error
    assert "(varied-coarse, varied-partial, varied-misnamed)" in error
