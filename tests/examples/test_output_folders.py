"""Output folders of the training scripts: a run never writes over a trained model, its checkpoints or its
teacher unless told to, and says so before any data or model loads."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from liaf_hf import DataError, LiafError
from liaf_hf.experiments import DataSpec, DetectorRun, DetectorSpec, DistillationRun, Schedule
from tiny import load_example, tiny_detector

ID2LABEL = {0: "circle", 1: "square"}


@pytest.fixture(scope="module")
def trained_dir(tmp_path_factory) -> Path:
    """A folder as a finished run leaves it: a saved detector."""
    directory = tmp_path_factory.mktemp("trained")
    tiny_detector(ID2LABEL, channels=16, norm_groups=4).save_pretrained(directory)
    return directory


def contents(directory: Path) -> dict[str, bytes]:
    return {str(path.relative_to(directory)): path.read_bytes() for path in directory.rglob("*") if path.is_file()}


def flags(data_dir: Path, output_dir: Path, *more: str) -> list[str]:
    """A training run on COCO data in `data_dir`; the tests give a folder that does not exist, so a run that
    gets past the output check stops when it reads the data, naming it."""
    return ["--data_dir", str(data_dir), "--output_dir", str(output_dir), "--do_train", "--max_steps", "1", *more]


def data_refusal(data_dir: Path):
    """What a run that got past the output check raises: the missing data, named."""
    return pytest.raises(DataError, match=re.escape(str(data_dir)))


def test_train_detector_refuses_an_output_dir_holding_a_model_or_checkpoints(trained_dir, tmp_path):
    train_detector = load_example("train_detector").main
    data_dir = tmp_path / "no-data"
    before = contents(trained_dir)
    with pytest.raises(LiafError, match=r"already holds a trained model \(config.json, model.safetensors\)"):
        train_detector(flags(data_dir, trained_dir))
    run = tmp_path / "run"
    for step in (2, 10):
        (run / f"checkpoint-{step}").mkdir(parents=True)
    refusal = r"already holds checkpoints \(checkpoint-2, checkpoint-10\).*--resume_from_checkpoint \S*checkpoint-10 "
    with pytest.raises(LiafError, match=refusal):
        train_detector(flags(data_dir, run))
    assert contents(trained_dir) == before and not data_dir.exists()
    # Told to replace them, resuming, or only scoring: the run goes on (to the data, which is missing here).
    for allowed in (
        flags(data_dir, trained_dir, "--overwrite_output_dir", "true"),
        flags(data_dir, run, "--resume_from_checkpoint", str(run / "checkpoint-10")),
        ["--data_dir", str(data_dir), "--output_dir", str(trained_dir), "--do_eval"],
    ):
        with data_refusal(data_dir):
            train_detector(allowed)


def distill_flags(teacher: Path, data_dir: Path, output_dir: Path, *more: str) -> list[str]:
    return ["--teacher_model_name_or_path", str(teacher), "--method", "none", *flags(data_dir, output_dir, *more)]


def test_distill_refuses_to_write_into_its_teachers_folder_whatever_it_is_told(trained_dir, tmp_path):
    distill = load_example("distill").main
    data_dir = tmp_path / "no-data"
    before = contents(trained_dir)
    same_folder = str(trained_dir / "." / "sub" / "..")  # the teacher's folder, spelled otherwise
    for more in ((), ("--overwrite_output_dir", "true"), ("--resume_from_checkpoint", str(trained_dir))):
        with pytest.raises(LiafError, match=r"is the folder of --teacher_model_name_or_path"):
            distill(distill_flags(trained_dir, data_dir, Path(same_folder), *more))
    with pytest.raises(LiafError, match=r"is the folder of --teacher_model_name_or_path"):
        distill(["--teacher_model_name_or_path", str(trained_dir), "--data_dir", str(data_dir)]
                + ["--output_dir", str(trained_dir), "--do_eval"])  # fmt: skip
    # A teacher kept in a checkpoint folder of the output: checkpointing would overwrite or delete it.
    run = tmp_path / "run"
    teacher = run / "checkpoint-2"
    teacher.mkdir(parents=True)
    for name, data in before.items():
        (teacher / name).write_bytes(data)
    with pytest.raises(LiafError, match=r"lies in \S*checkpoint-2, a checkpoint folder of --output_dir"):
        distill(distill_flags(teacher, data_dir, run, "--overwrite_output_dir", "true"))
    assert contents(trained_dir) == before and contents(teacher) == before and not data_dir.exists()
    # An output folder inside the teacher's leaves the teacher's own files alone.
    with data_refusal(data_dir):
        distill(distill_flags(trained_dir, data_dir, trained_dir / "student"))


def test_distill_refuses_an_output_dir_holding_a_model_unless_told_or_resuming(trained_dir, tmp_path):
    distill = load_example("distill").main
    data_dir, run = tmp_path / "no-data", tmp_path / "run"
    (run / "checkpoint-4").mkdir(parents=True)
    (run / "config.json").write_text((trained_dir / "config.json").read_text())
    with pytest.raises(LiafError, match=r"already holds a trained model \(config.json\) and checkpoints"):
        distill(distill_flags(trained_dir, data_dir, run))
    for more in (("--overwrite_output_dir", "true"), ("--resume_from_checkpoint", str(run / "checkpoint-4"))):
        with data_refusal(data_dir):
            distill(distill_flags(trained_dir, data_dir, run, *more))


def test_the_demos_runs_train_again_into_their_own_folders(trained_dir, tmp_path):
    """The demo and the benchmarks retrain their teachers and students into the same folders on every run:
    their run specs say to replace what is there."""
    data = DataSpec(data_dir=str(tmp_path / "no-data"), dataset_format="coco")
    schedule = Schedule(steps=1, batch_size=2)
    with data_refusal(tmp_path / "no-data"):
        DetectorRun(
            data=data, output_dir=trained_dir, detector=DetectorSpec(backbone="resnet18"), schedule=schedule
        ).run()
    with data_refusal(tmp_path / "no-data"):
        DistillationRun(
            data=data, student=DetectorSpec(backbone="resnet18"), schedule=schedule, teacher=str(tmp_path / "t"),
            output_dir=trained_dir,
        ).run()  # fmt: skip
