"""The package's top level: the main names importable from it, without loading the rest of the library."""

import subprocess
import sys

import liaf_hf


def test_import_liaf_hf_loads_only_the_detector():
    probe = (
        "import sys, liaf_hf; "
        "print(sorted(m for m in sys.modules if m.startswith(('liaf_hf.', 'datasets', 'pycocotools', 'onnx'))))"
    )
    loaded = subprocess.run([sys.executable, "-c", probe], check=True, capture_output=True, text=True).stdout
    for heavy in (
        "liaf_hf.distillation",
        "liaf_hf.trainer",
        "liaf_hf.cli",
        "liaf_hf.hub",
        "liaf_hf.data",
        "liaf_hf.metrics",
        "datasets",
        "pycocotools",
    ):
        assert f"'{heavy}" not in loaded, f"import liaf_hf loaded {heavy}: {loaded}"


def test_every_top_level_name_resolves_to_the_object_of_its_module():
    from liaf_hf import DetectionTrainer, LIAFDistillationTrainer, load_coco_detection
    from liaf_hf.data.coco import load_coco_detection as from_module
    from liaf_hf.trainer.detection import DetectionTrainer as detection_trainer_from_module
    from liaf_hf.trainer.distillation import LIAFDistillationTrainer as trainer_from_module

    assert LIAFDistillationTrainer is trainer_from_module and DetectionTrainer is detection_trainer_from_module
    assert load_coco_detection is from_module
    for name in liaf_hf.__all__:
        assert getattr(liaf_hf, name) is not None, name
    assert set(liaf_hf.__all__) <= set(dir(liaf_hf))
