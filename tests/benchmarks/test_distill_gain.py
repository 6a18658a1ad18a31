"""benchmarks/distill_gain.py on data other than the generated shapes set: a KITTI-layout root on disk, a
teacher trained elsewhere, extra training flags."""

import json

import pytest

from liaf_hf.data.synthetic import generate_kitti_dataset
from tiny import ROOT, load_script


def distill_gain():
    return load_script(ROOT / "benchmarks" / "distill_gain.py", "distill_gain")


def tiny_flags(tmp_path, *more):
    """A run small enough for the test suite: 48 x 144 px frames, two training steps per student."""
    return [
        "--student_steps", "2", "--batch_size", "4", "--channels", "32",
        "--shortest_edge", "48", "--longest_edge", "144", "--seeds", "0",
        "--teacher_cache_dir", str(tmp_path / "teachers"), "--output", str(tmp_path / "results.json"),
        "--training_flags", "--per_device_eval_batch_size 3 --logging_steps 1",
        *more,
    ]  # fmt: skip


def test_your_kitti_data_and_teacher_are_scored_with_kittis_metric(tmp_path):
    """A KITTI-layout root read as it lies: the gain is in VOC mAP50; then a teacher given by path is scored
    once, the students of the first run are kept with --reuse, and the extra flags reach every run."""
    data_dir = tmp_path / "kitti"
    generate_kitti_dataset(data_dir, num_train=12, num_val=6, seed=0)
    students = tmp_path / "students"
    first = distill_gain().main(
        ["--dataset_format", "kitti", "--data_dir", str(data_dir), "--output_dir", str(students)]
        + ["--teacher_backbone", "resnet18", "--teacher_steps", "3", "--teacher_batch_size", "4"]
        + tiny_flags(tmp_path, "--methods", "none", "liaf")
    )
    assert first["headline_metric"] == "VOC_mAP50"
    plain, liaf = first["rows"]
    assert {"VOC_mAP50", "KITTI_mAP40_moderate", "AP"} <= set(liaf)
    assert liaf["gain_VOC_mAP50"] == pytest.approx(liaf["VOC_mAP50"]["mean"] - plain["VOC_mAP50"]["mean"])
    (teacher_dir,) = (tmp_path / "teachers").iterdir()
    # --logging_steps 1 won over the default 50: a training loss logged at each of the student's 2 steps.
    log = json.loads((students / "student-resnet18-liaf-seed0" / "trainer_state.json").read_text())["log_history"]
    assert [entry["step"] for entry in log if "loss" in entry] == [1, 2]

    student_file = students / "student-resnet18-liaf-seed0" / "summary.json"
    trained = student_file.stat().st_mtime_ns
    for _ in range(2):
        second = distill_gain().main(
            ["--dataset_format", "auto", "--data_dir", str(data_dir), "--output_dir", str(students), "--reuse"]
            + ["--teacher_model_name_or_path", str(teacher_dir), "--metric", "AP50"]
            + tiny_flags(tmp_path, "--methods", "none", "liaf")
        )
        assert second["headline_metric"] == "AP50" and "gain_AP50" in second["rows"][1]
        assert second["teacher"]["name_or_path"] == str(teacher_dir)
        assert second["teacher"]["eval_VOC_mAP50"] == first["teacher"]["eval_VOC_mAP50"]
    assert student_file.stat().st_mtime_ns == trained  # the same student settings: not trained again
    # The given teacher was scored once, not trained: beside it, one folder with its scores.
    scores = [path for path in (tmp_path / "teachers").iterdir() if path != teacher_dir]
    assert len(scores) == 1 and (scores[0] / "summary.json").is_file()
    assert not (scores[0] / "model.safetensors").exists()


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--dataset_format", "coco"], "give exactly one of --data_dir and --dataset_name"),
        (["--dataset_format", "hub", "--data_dir", "a", "--dataset_name", "b"], "exactly one of --data_dir"),
        (["--dataset_name", "cppe-5"], "give --dataset_format hub"),
        (["--training_flags", '--optim "sgd'], "is not a valid command line"),
    ],
)
def test_contradictory_data_settings_stop_before_any_training(tmp_path, capsys, flags, message):
    with pytest.raises(SystemExit):
        distill_gain().main(flags + ["--teacher_cache_dir", str(tmp_path / "teachers")])
    assert message in capsys.readouterr().err
    assert not (tmp_path / "teachers").exists()


def test_methods_are_compared_seed_by_seed_on_the_seeds_they_share():
    """The paired table: differences per seed (not of the means), only on seeds both methods ran, without the
    plain student; a method ahead on two seeds of three by a margin below its spread reads as such."""
    runs = [
        {"label": label, "seed": seed, "eval_AP": score}
        for label, scores in {
            "none": [0.10, 0.20, 0.30],
            "aid": [0.50, 0.60, 0.70],
            "liaf": [0.52, 0.59, 0.73],
        }.items()
        for seed, score in enumerate(scores)
    ] + [{"label": "liaf", "seed": 7, "eval_AP": 0.99}]  # a seed the reference did not run
    (liaf,) = distill_gain().paired_differences(runs, reference="aid", metric="AP")
    assert liaf["label"] == "liaf" and liaf["seeds"] == [0, 1, 2]
    assert liaf["differences"] == pytest.approx([0.02, -0.01, 0.03])
    assert liaf["mean"] == pytest.approx(0.04 / 3)
    assert liaf["std"] == pytest.approx(0.0208167, rel=1e-5)
    assert liaf["standard_error"] == pytest.approx(0.0208167 / 3**0.5, rel=1e-5)
    assert liaf["ahead_on"] == 2
    assert distill_gain().paired_differences(runs, reference="pkd", metric="AP") == []


def test_several_references_are_pooled_seed_by_seed_on_the_seeds_all_of_them_ran():
    """--paired_against a b: the reference is a and b's per-seed mean, so a run of a that fell low by chance
    counts half; each of a and b is then compared with it like any method."""
    runs = [
        {"label": label, "seed": seed, "eval_AP": score, "eval_runtime": 5.0, "eval_note": "text"}
        for label, scores in {"a": [0.50, 0.40], "b": [0.54, 0.48], "liaf": [0.53, 0.45]}.items()
        for seed, score in enumerate(scores)
    ] + [{"label": "a", "seed": 2, "eval_AP": 0.9}]  # b did not run seed 2: no pooled run there
    reference, pooled = distill_gain().pooled_reference(runs, ["a", "b"])
    assert reference == "a+b" and [run["seed"] for run in pooled] == [0, 1]
    assert [run["eval_AP"] for run in pooled] == pytest.approx([0.52, 0.44])
    assert "eval_note" not in pooled[0]  # only scores are averaged
    rows = {row["label"]: row for row in distill_gain().paired_differences(runs + pooled, reference="a+b", metric="AP")}
    assert rows["liaf"]["differences"] == pytest.approx([0.01, 0.01])
    assert rows["a"]["differences"] == pytest.approx([-0.02, -0.04])


def test_resume_from_restores_matching_runs_and_refuses_another_teacher_or_settings(tmp_path):
    module = distill_gain()
    args = module.parse_args(["--methods", "none", 'uniform=aid:{"decay": 0.0}', "--seeds", "0", "1"])
    args.output_dir = str(tmp_path / "students")
    teacher = {"eval_AP": 0.38, "eval_loss": 0.65, "eval_runtime": 29.0}
    settings = {k: v for k, v in vars(args).items() if k not in ("methods", "output")}
    uniform = {"method_settings": module.method_settings("aid", {"decay": 0.0}), "eval_AP": 0.25}
    earlier = {
        "command": "earlier run",
        "settings": {**settings, "seeds": [0]},
        "teacher": {"eval_AP": 0.38, "eval_loss": 0.65, "eval_runtime": 31.0},  # another runtime is no matter
        "runs": [
            {"label": "uniform", "method": "aid", "options": {"decay": 0.0}, "seed": 0, **uniform},
            {"label": "uniform", "method": "aid", "options": {"decay": 0.5}, "seed": 1, "method_settings": {}},
        ],
    }
    args.resume_from = str(tmp_path / "earlier.json")
    (tmp_path / "earlier.json").write_text(json.dumps(earlier))
    assert module.restore_runs(args, teacher) == 1  # seed 1 was trained with other method settings
    restored = json.loads((tmp_path / "students" / "student-resnet18-uniform-seed0" / "summary.json").read_text())
    assert restored["eval_AP"] == 0.25 and restored["restored_from"] == "earlier run"

    with pytest.raises(SystemExit, match="its teacher scored differently .*eval_loss"):
        module.restore_runs(args, {**teacher, "eval_loss": 0.66})
    (tmp_path / "earlier.json").write_text(json.dumps({**earlier, "settings": {**settings, "student_steps": 1}}))
    with pytest.raises(SystemExit, match="trained with other settings .*student_steps"):
        module.restore_runs(args, teacher)


def test_paired_metrics_show_which_part_of_the_score_a_difference_comes_from(tmp_path):
    flags = ["--data_dir", str(tmp_path / "data"), "--num_train", "8", "--num_val", "4", "--image_size", "64"]
    flags += ["--teacher_backbone", "resnet18", "--teacher_steps", "2", "--teacher_batch_size", "4"]
    flags += ["--student_steps", "2", "--batch_size", "4", "--channels", "32", "--seeds", "0", "1"]
    flags += ["--output_dir", str(tmp_path / "students"), "--teacher_cache_dir", str(tmp_path / "teachers")]
    flags += ["--methods", 'uniform=aid:{"decay": 0.0}', "liaf", "--paired_against", "uniform"]
    flags += ["--output", str(tmp_path / "gain.json")]
    result = distill_gain().main([*flags, "--paired_metrics", "AP50", "AR100", "AP"])
    assert set(result["paired_by_metric"]) == {"AP50", "AR100"}  # the headline AP is the main table already
    (liaf,) = result["paired_by_metric"]["AR100"]
    score = {(run["label"], run["seed"]): run["eval_AR100"] for run in result["runs"]}
    assert liaf["differences"] == pytest.approx([score["liaf", s] - score["uniform", s] for s in (0, 1)])
    # `all`: the table's metrics, less APl, which pycocotools leaves at -1 where no object is large.
    everything = distill_gain().main([*flags, "--reuse", "--paired_metrics", "all"])
    assert "AP50" in everything["paired_by_metric"] and "APl" not in everything["paired_by_metric"]

    trained = (tmp_path / "students" / "student-resnet18-liaf-seed1" / "summary.json").stat().st_mtime_ns
    with pytest.raises(ValueError, match="--paired_metrics AR1000: not a score of every run .*AR100"):
        distill_gain().main([*flags, "--reuse", "--paired_metrics", "AR1000"])
    assert (tmp_path / "students" / "student-resnet18-liaf-seed1" / "summary.json").stat().st_mtime_ns == trained
