"""benchmarks/selector_trace.py: the instance weights' spread that a training run logged, read back step by step."""

import pytest

from liaf_hf.models.gfl import GFLForObjectDetection
from tiny import ROOT, load_script, make_distillation_trainer


@pytest.fixture(scope="module")
def script():
    return load_script(ROOT / "benchmarks" / "selector_trace.py", "selector_trace")


def test_a_liaf_run_logs_its_weights_spread_each_step_and_a_plain_run_is_refused(script, shapes, teacher_dir, tmp_path):
    teacher = GFLForObjectDetection.from_pretrained(teacher_dir)
    runs = []
    for seed in (0, 1):
        trainer = make_distillation_trainer(shapes, teacher, tmp_path / f"liaf-{seed}", method="liaf", seed=seed)
        trainer.train()
        trainer.save_state()
        runs.append(tmp_path / f"liaf-{seed}")

    result = script.main(["--runs", *map(str, runs), "--output", str(tmp_path / "trace.json")])
    assert [row["step"] for row in result["steps"]] == [1, 2]  # logging_steps=1, two steps
    for row in result["steps"]:
        assert 0 < row["min"]["lowest"] <= row["min"]["mean"] <= row["min"]["highest"] <= 1.0
        assert 1.0 <= row["max"]["lowest"] <= row["max"]["highest"]
        assert row["discrepancy"]["mean"] > 0
    assert (tmp_path / "trace.json").is_file()

    plain = make_distillation_trainer(shapes, teacher, tmp_path / "plain")
    plain.train()
    plain.save_state()
    with pytest.raises(ValueError, match="no logged instance weights"):
        script.main(["--runs", str(tmp_path / "plain"), "--output", str(tmp_path / "other.json")])
    with pytest.raises(FileNotFoundError, match="no trainer_state.json"):
        script.main(["--runs", str(tmp_path / "nothing"), "--output", str(tmp_path / "other.json")])
