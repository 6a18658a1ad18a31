"""The package's top level: the main names importable from it, without loading the rest of the library."""

import ast
import subprocess
import sys
from pathlib import Path

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


def _code_lines(function: ast.FunctionDef | ast.AsyncFunctionDef) -> int:
    """Lines of a function from its `def` to its last line, less its docstring's."""
    lines = function.end_lineno - function.lineno + 1
    body = function.body
    if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
        if isinstance(body[0].value.value, str):
            lines -= body[0].end_lineno - body[0].lineno + 1
    return lines


def test_no_function_of_the_package_has_over_80_lines_of_code():
    package = Path(liaf_hf.__file__).parent
    too_long = []
    for path in sorted(package.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and _code_lines(node) > 80:
                too_long.append(f"{path.relative_to(package)}:{node.lineno} {node.name} ({_code_lines(node)} lines)")
    assert not too_long, "functions over 80 lines (docstrings not counted): " + ", ".join(too_long)
