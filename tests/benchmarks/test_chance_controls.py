"""benchmarks/chance_controls.py: every no-op control in the result files, six seeds a block, beside the
methods compared with the same reference runs."""

import json

import pytest

from tiny import ROOT, load_script


@pytest.fixture(scope="module")
def script():
    return load_script(ROOT / "benchmarks" / "chance_controls.py", "chance_controls")


UNIFORM = ("aid", {"decay": 0.0})
TWIN = ("aid", {"decay": 0.0, "weight": 10.001})


def result_file(path, runs, *, date, teacher_ap=0.5, folder="students-easy"):
    """A results JSON in the layout distill_gain.py writes: settings, teacher, headline metric and runs."""
    path.write_text(
        json.dumps(
            {
                "provenance": {"date": date},
                "settings": {"output_dir": f"/somewhere/{folder}"},
                "teacher": {"eval_AP": teacher_ap},
                "headline_metric": "AP",
                "runs": [
                    {"label": label, "method": method, "options": options, "seed": seed, "eval_AP": score}
                    for label, (method, options), seed, score in runs
                ],
            }
        )
    )
    return path


def test_the_probabilities_are_students_t_and_the_exact_sign_flip_count(script):
    assert script.student_t_two_sided(2.0, 5) == pytest.approx(0.1019, abs=1e-4)
    assert script.student_t_two_sided(2.5706, 5) == pytest.approx(0.05, abs=1e-4)  # the 5% critical value
    assert script.student_t_two_sided(0.0, 5) == pytest.approx(1.0)
    # Six differences of one sign: only they and their mirror image are as far from 0, 2 of 64 flips.
    assert script.sign_flip_probability([0.001, 0.002, 0.003, 0.004, 0.005, 0.006]) == pytest.approx(2 / 64)
    assert script.sign_flip_probability([0.001, -0.001, 0.002, -0.002]) == 1.0


def test_each_run_counts_once_and_the_seeds_split_into_blocks(script, tmp_path):
    reference = [0.30, 0.31, 0.29, 0.33, 0.32, 0.30, 0.28, 0.31, 0.30, 0.29, 0.32, 0.31]
    twin_lead = [0.001, 0.002, 0.003, 0.004, 0.005, 0.006, -0.002, 0.001, -0.001, 0.002, -0.003, 0.0]
    first = [("uniform", UNIFORM, s, reference[s]) for s in range(6)]
    first += [("uniform-again", TWIN, s, reference[s] + twin_lead[s]) for s in range(6)]
    first += [("liaf", ("liaf", {}), s, reference[s] - 0.01) for s in range(6)]
    # A later file repeats seeds 0-5 of both uniform runs (under another label) and adds seeds 6-11.
    second = [("uniform", UNIFORM, s, reference[s]) for s in range(12)]
    second += [("uniform-weight10.001", TWIN, s, reference[s] + twin_lead[s]) for s in range(12)]
    # Another teacher on the same student folder is another setting, with too few seeds for a block.
    other = [("uniform", UNIFORM, s, 0.2) for s in range(3)] + [("uniform-again", TWIN, s, 0.2) for s in range(3)]
    files = [
        result_file(tmp_path / "a.json", first, date="2026-12-01T10:00:00+00:00"),
        result_file(tmp_path / "b.json", second, date="2026-12-02T10:00:00+00:00"),
        result_file(tmp_path / "c.json", other, date="2026-12-03T10:00:00+00:00", teacher_ap=0.4),
    ]
    (tmp_path / "other-benchmark.json").write_text(json.dumps({"rows": [1, 2]}))  # no runs: passed over
    output = tmp_path / "controls.json"
    result = script.main(
        ["--results", *map(str, files), str(tmp_path / "other-benchmark.json"), "--output", str(output)]
    )

    assert [block["seeds"] for block in result["blocks"]] == [list(range(6)), list(range(6, 12))]
    early, late = result["blocks"]
    assert early["control"]["differences"] == pytest.approx(twin_lead[:6])
    assert early["control"]["ahead_on"] == 6 and early["control"]["sign_flip_probability"] == pytest.approx(2 / 64)
    assert early["control"]["t"] == pytest.approx(4.583, abs=1e-3)  # mean 0.0035 over its SE 0.000764
    assert early["methods"]["liaf"]["against_reference"]["mean"] == pytest.approx(-0.01)
    assert early["methods"]["liaf"]["against_both"]["mean"] == pytest.approx(-0.01 - 0.0035 / 2)
    assert late["methods"] == {}  # liaf ran seeds 0-5 only
    summary = result["summary"]
    assert summary["blocks"] == 2 and summary["beyond_3_se"] == 1 and summary["all_one_sign"] == 1
    assert summary["expected_beyond_2_se"] == pytest.approx(2 * 0.1019, abs=1e-3)
    assert json.loads(output.read_text())["summary"] == summary


def test_files_without_the_pair_or_missing_files_are_named(script, tmp_path):
    lonely = result_file(tmp_path / "lonely.json", [("uniform", UNIFORM, s, 0.3) for s in range(6)], date="d")
    with pytest.raises(ValueError, match="ran both .*weight.*10.001"):
        script.main(["--results", str(lonely), "--output", str(tmp_path / "out.json")])
    with pytest.raises(FileNotFoundError, match="nowhere.json"):
        script.main(["--results", str(tmp_path / "nowhere.json"), "--output", str(tmp_path / "out.json")])
    (tmp_path / "broken.json").write_text("{not json")
    with pytest.raises(ValueError, match="broken.json"):
        script.main(["--results", str(tmp_path / "broken.json"), "--output", str(tmp_path / "out.json")])
    with pytest.raises(SystemExit):
        script.main(["--results", str(lonely), "--block", "1"])
    with pytest.raises(ValueError, match="'lia'"):  # read as distill_gain reads --methods, so a typo is named
        script.main(["--results", str(lonely), "--methods", "lia", "--output", str(tmp_path / "out.json")])


def test_it_reads_what_distill_gain_writes(script, tmp_path):
    distill_gain = load_script(ROOT / "benchmarks" / "distill_gain.py", "distill_gain")
    written = distill_gain.main(
        ["--data_dir", str(tmp_path / "data"), "--num_train", "8", "--num_val", "4", "--image_size", "64"]
        + ["--teacher_backbone", "resnet18", "--teacher_steps", "2", "--teacher_batch_size", "4"]
        + ["--student_steps", "2", "--batch_size", "4", "--channels", "32", "--seeds", "0", "1"]
        + ["--output_dir", str(tmp_path / "students"), "--teacher_cache_dir", str(tmp_path / "teachers")]
        + ["--methods", 'uniform=aid:{"decay": 0.0}', 'uniform-again=aid:{"decay": 0.0, "weight": 10.001}']
        + ["--paired_against", "uniform", "--output", str(tmp_path / "gain.json")]
    )
    result = script.main(
        ["--results", str(tmp_path / "gain.json"), "--block", "2", "--methods", "--output", str(tmp_path / "c.json")]
    )
    (block,) = result["blocks"]
    (paired,) = written["paired"]  # distill_gain's own uniform-again row
    assert block["seeds"] == paired["seeds"] == [0, 1]
    assert block["control"]["differences"] == pytest.approx(paired["differences"])
