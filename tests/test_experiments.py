"""The typed run specs the demo and the benchmarks are built on: the folders they keep trained teachers in, the
script arguments they build, and a whole experiment (a teacher, then students) run end to end."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from liaf_hf.data.synthetic import generate_coco_dataset
from liaf_hf.experiments import DataSpec, Experiment, Schedule, build_arguments
from liaf_hf.scripts import DISTILLATION_ARGUMENTS


def test_cached_teachers_and_students_keep_their_folder_names():
    # The names runs/ already holds: a renamed key would train every cached teacher again.
    experiment = Experiment(
        data=DataSpec(data_dir="data/shapes-varied-harsh", generated="varied-harsh"),
        output_dir=Path("runs/x"),
        teacher_cache_dir=Path("runs/teachers"),
        batch_size=8,
    )
    assert experiment.teacher_dir() == Path("runs/teachers/resnet50-600steps-varied-harsh-128px-2000images-64ch")
    assert (
        experiment.students_dir() == "resnet50-600steps-to-resnet18-400steps-batch8-varied-harsh-128px-2000images-64ch"
    )
    other = Experiment(
        data=DataSpec(data_dir="data/shapes", generated="easy", shortest_edge=96, longest_edge=160),
        output_dir=Path("runs/x"),
        teacher_cache_dir=Path("t"),
        teacher_batch_size=8,
        pretrained=True,
        flags=("--optim", "sgd"),
    )
    # Other settings, other folders: the batch, pretrained weights and extra flags are all in the name.
    assert other.teacher_dir().name.startswith("resnet50-600steps-easy-96x160px-2000images-pretrained-flags")
    assert other.teacher_dir().name.endswith("-64ch-batch8")


def test_flags_win_over_the_specs_values_and_bad_ones_are_named():
    values = {
        "distillation": {"teacher_model_name_or_path": "teacher", "method": "liaf"},
        "data": {"data_dir": "data"},
        "training": {"output_dir": "out", "learning_rate": 2e-3, "max_steps": 10},
    }
    built = build_arguments(
        DISTILLATION_ARGUMENTS, values, ["--learning_rate", "0.01", "--nonfinite_loss", "skip", "--optim", "sgd"]
    )
    assert built["training"].learning_rate == 0.01 and built["training"].max_steps == 10
    assert built["faults"].nonfinite_loss == "skip" and built["distillation"].method == "liaf"
    with pytest.raises(SystemExit):
        build_arguments(DISTILLATION_ARGUMENTS, values, ["--no_such_flag", "1"])
    with pytest.raises(ValueError, match="--method_options"):
        build_arguments(
            DISTILLATION_ARGUMENTS,
            {**values, "distillation": {**values["distillation"], "method_options": '{"alpah": 1}'}},
        )


def test_a_schedules_evaluations_are_spread_over_its_steps():
    assert "eval_strategy" not in Schedule(steps=350, batch_size=16).training_arguments("o", "run")
    spread = Schedule(steps=350, batch_size=16, evaluations=3).training_arguments("o", "run")
    assert spread["eval_strategy"] == "steps" and spread["eval_steps"] == 88  # three before the last step
    assert Schedule(steps=350, batch_size=16, eval_every=50).training_arguments("o", "run")["eval_steps"] == 50


def tiny_experiment(tmp_path: Path, **settings) -> Experiment:
    """An experiment of 8 generated 64-px images (of the easy set unless `data` says otherwise) and one-step
    resnet18 runs, writing under `tmp_path`."""
    data = DataSpec(
        data_dir=str(tmp_path / "data"), generated="easy", num_train=8, num_val=4, shortest_edge=64, longest_edge=64
    )
    defaults = {
        "data": data,
        "teacher_backbone": "resnet18",
        "teacher_steps": 1,
        "student_steps": 1,
        "batch_size": 4,
        "channels": 32,
    }
    return Experiment(output_dir=tmp_path / "runs", teacher_cache_dir=tmp_path / "teachers", **{**defaults, **settings})


def test_an_experiment_trains_its_teacher_once_and_distils_students_from_it(tmp_path, capsys):
    experiment = tiny_experiment(tmp_path)
    teacher = experiment.teacher()
    assert Path(teacher.name_or_path) == experiment.teacher_dir() and "eval_AP" in teacher.metrics
    model_file = experiment.teacher_dir() / "model.safetensors"
    trained_at = model_file.stat().st_mtime_ns
    assert experiment.teacher() == teacher and model_file.stat().st_mtime_ns == trained_at
    assert "Reusing the teacher" in capsys.readouterr().out

    plain = experiment.student(teacher, "none", {})
    distilled = experiment.student(
        teacher, "aid", {"decay": 0.0}, name="uniform-seed1", seed=1, baseline_metrics_file=plain / "summary.json"
    )
    assert distilled == tmp_path / "runs" / "student-resnet18-uniform-seed1"
    summary = json.loads((distilled / "summary.json").read_text())
    assert summary["method"] == "aid" and summary["method_settings"]["decay"] == 0.0
    card = (distilled / "README.md").read_text()
    # The card lists the plain student and the teacher's scores, read from their files.
    assert "without distillation" in card.lower() and "teacher" in card.lower()


def test_a_teacher_trained_on_fewer_images_is_kept_apart_and_sees_only_those(tmp_path):
    experiment = tiny_experiment(tmp_path, teacher_batch_size=4, teacher_num_train=4)
    # Its own folder, and the students distilled from it theirs: a teacher of all 8 images is never reused.
    assert experiment.teacher_dir().name == "resnet18-1steps-on4images-easy-64px-8images-32ch-batch4"
    assert experiment.students_dir().startswith("resnet18-1steps-on4images-to-")
    experiment.teacher()
    state = json.loads((experiment.teacher_dir() / "trainer_state.json").read_text())
    assert state["epoch"] == 1.0  # one step of 4 images is a whole epoch of the 4 it trains on, not half of 8

    with pytest.raises(ValueError, match="teacher_num_train"):
        tiny_experiment(tmp_path, teacher_model_name_or_path="t", teacher_num_train=4)
    with pytest.raises(ValueError, match="--max_train_samples"):
        DataSpec(data_dir="d", generated="easy", max_train_samples=0)
    with pytest.raises(ValueError, match="--max_train_samples"):
        tiny_experiment(tmp_path, teacher_num_train=0)


def test_a_teacher_of_another_label_set_trains_on_the_same_scenes_beside_the_data(tmp_path):
    data = DataSpec(
        data_dir=str(tmp_path / "data"), generated="varied", num_train=8, num_val=4, shortest_edge=64, longest_edge=64
    )
    experiment = tiny_experiment(tmp_path, data=data, teacher_difficulty="varied-coarse")
    assert experiment.teacher_dir().name.startswith("resnet18-1steps-on-varied-coarse-varied-64px")
    assert experiment.students_dir().startswith("resnet18-1steps-on-varied-coarse-to-")
    teacher = experiment.teacher()
    assert "eval_AP" in teacher.metrics
    coarse = tmp_path / "data-teacher-varied-coarse"
    manifest = json.loads((coarse / "synthetic_spec.json").read_text())
    assert ["ring", "circle"] in manifest["spec"]["merged_classes"]
    # The teacher's images are the students' (their set is generated when a student's run first loads it).
    generate_coco_dataset(tmp_path / "data", difficulty="varied", num_train=8, num_val=4)
    assert (coarse / "train" / "000000.png").read_bytes() == (tmp_path / "data" / "train" / "000000.png").read_bytes()

    with pytest.raises(ValueError, match="draws other scenes than the students' 'easy'.*class_names"):
        tiny_experiment(tmp_path, teacher_difficulty="varied-coarse")
    with pytest.raises(ValueError, match="teacher_difficulty trains the teacher here"):
        tiny_experiment(tmp_path, teacher_difficulty="varied-coarse", teacher_model_name_or_path="t")


def test_a_students_weights_do_not_depend_on_what_the_process_trained_before(tmp_path):
    # The benchmarks train every method of a seed one after another in one process, and compare them seed by
    # seed: state left behind by one run (a random generator, a cache) would bias the next run's score.
    experiment = tiny_experiment(tmp_path, student_steps=3)
    teacher = experiment.teacher()
    first = experiment.student(teacher, "aid", {"decay": 0.0}, name="uniform-first", seed=1)
    experiment.student(teacher, "liaf", {}, name="liaf-between", seed=0)
    again = experiment.student(teacher, "aid", {"decay": 0.0}, name="uniform-after-liaf", seed=1)
    assert (first / "model.safetensors").read_bytes() == (again / "model.safetensors").read_bytes()
