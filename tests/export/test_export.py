"""liaf_hf.export on a tiny random detector: ONNX (with and without post-processing), torch.export and INT8 files
that give PyTorch's detections, at other batch and image sizes than they were traced at, and the bad inputs.

One export (every format) is shared by the module's tests: tracing and converting take most of the time."""
# (about 100 s on two busy cores, most of it the ONNX exporter's decompositions of the two graphs)

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from liaf_hf import DataError, GFLImageProcessor, LiafError
from liaf_hf.data import generate_coco_dataset, load_coco_detection
from liaf_hf.export import ExportError, OnnxDetector, ProgramDetector, check_parity
from liaf_hf.export.exporter import export_detector, export_loaded, load_images
from liaf_hf.export.parity import pytorch_detector
from liaf_hf.hub.model_card import add_export_section, write_model_card
from liaf_hf.inference import load_detector
from tiny import load_example, tiny_detector

pytestmark = pytest.mark.slow

ID2LABEL = {index: name for index, name in enumerate(["circle", "ring", "square", "square_hole", "tri_up", "tri_down"])}


def _spread_scores(model) -> None:
    """A random head scores every anchor near the class prior (0.01), below any threshold; wider class weights
    give each image a few dozen confident, distinct detections, so parity compares something."""
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        weight = model.head.class_logits.weight
        weight.copy_(torch.randn(weight.shape, generator=generator) * 0.3)
        model.head.class_logits.bias.fill_(-3.0)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("shapes")
    generate_coco_dataset(root, difficulty="easy", num_train=6, num_val=6, seed=0)
    return root


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    directory = tmp_path_factory.mktemp("student")
    model = tiny_detector(ID2LABEL, channels=16, norm_groups=4)
    _spread_scores(model)
    model.save_pretrained(directory)
    GFLImageProcessor.for_model_config(model.config, size={"shortest_edge": 96, "longest_edge": 128}).save_pretrained(
        directory
    )
    write_model_card(directory, metrics={"eval_AP": 0.0}, dataset_name="shapes")
    return directory


@pytest.fixture(scope="module")
def exported(tmp_path_factory, model_dir, data_dir):
    """The example script's export of every format, INT8 included, with AP on the generated val split."""
    output = tmp_path_factory.mktemp("exports") / "student"
    summary = load_example("export").main(
        [
            "--model", str(model_dir), "--output", str(output), "--format", "onnx", "torch_export", "--int8",
            "--calibration_data", str(data_dir), "--calibration_samples", "4", "--parity_samples", "4",
        ]
    )  # fmt: skip
    return output, summary


def _scenes(count: int, *, seed: int, size: tuple[int, int]) -> list[Image.Image]:
    rng = np.random.default_rng(seed)
    return [Image.fromarray(rng.integers(0, 255, (*size, 3), dtype=np.uint8)) for _ in range(count)]


def test_export_writes_every_file_and_documents_the_inputs(exported):
    output, summary = exported
    names = {path.name for path in output.iterdir()}
    assert {"model.onnx", "model_raw.onnx", "model_int8.onnx", "model.pt2"} <= names
    assert {"preprocessor_config.json", "README.md", "export_summary.json"} <= names
    assert json.loads((output / "export_summary.json").read_text())["files"] == summary["files"]
    readme = (output / "README.md").read_text()
    assert "| `pixel_values` | float32 | (batch, 3, height, width) | RGB" in readme
    assert "`num_detections`" in readme and "model_raw.onnx" in readme
    assert not [path for path in output.parent.iterdir() if path.name.endswith(".partial")]


def test_float32_files_give_pytorchs_detections_and_int8_reports_its_ap(exported):
    _, summary = exported
    for name in ("onnx", "torch_export"):
        report = summary["parity"][name]
        assert report["passed"], report["mismatches"]
        assert report["reference_detections"] >= 20  # parity on detections, not on empty lists
        assert report["max_score_difference"] <= 1e-4 and report["max_box_difference"] <= 1e-2
    assert summary["parity"]["onnx_raw"]["max_score_difference"] <= 1e-4
    assert set(summary["evaluation"]) == {"pytorch", "onnx", "torch_export", "onnx_int8"}
    assert summary["evaluation"]["onnx"]["AP"] == pytest.approx(summary["evaluation"]["pytorch"]["AP"], abs=1e-4)
    assert summary["calibration_images"] == 4


def test_exported_graphs_run_at_other_batch_and_image_sizes(exported, model_dir):
    """Traced at batch 2 of 64x96; run on 3 images of another shape each (padded to 128 x 96 by the processor)."""
    output, _ = exported
    model, processor = load_detector(model_dir)
    reference = pytorch_detector(model, processor, threshold=processor.score_threshold)
    images = [*_scenes(2, seed=3, size=(120, 80)), *_scenes(1, seed=4, size=(70, 100))]
    for runner in (OnnxDetector(output / "model.onnx"), ProgramDetector(output / "model.pt2")):
        report = check_parity(reference, runner, images, batch_size=3)
        assert report.passed, report.mismatches
        assert report.reference_detections > 0
    int8 = OnnxDetector(output / "model_int8.onnx")([images[0]])[0]
    assert int8["boxes"].shape[1] == 4 and len(int8["scores"]) == len(int8["labels"])


def test_model_card_lists_the_exported_formats(exported, model_dir):
    output, summary = exported
    text = (model_dir / "README.md").read_text()
    assert "## Deployment" in text and text.index("## Deployment") < text.index("## How to use")
    assert "| ONNX, INT8 (QDQ: convolutions int8) | `model_int8.onnx` |" in text
    add_export_section(model_dir, summary)  # a second export replaces the section
    assert (model_dir / "README.md").read_text().count("## Deployment") == 1


def test_runner_refuses_images_the_graph_cannot_take(exported):
    detector = OnnxDetector(exported[0] / "model.onnx")
    with pytest.raises(LiafError, match=r"\(height, width, 3\) RGB arrays .* pixel_values: float32 \(batch, 3"):
        detector([np.zeros((64, 64, 4), dtype=np.uint8)])
    with pytest.raises(LiafError, match=r"pixel_values has shape \(1, 1, 64, 64\)"):
        detector.run(np.zeros((1, 1, 64, 64), dtype=np.float32))
    with pytest.raises(LiafError, match="without post-processing"):
        OnnxDetector(exported[0] / "model_raw.onnx")


def test_bad_inputs_are_refused_before_any_work(tmp_path, model_dir, data_dir, exported):
    not_a_model = tmp_path / "not-a-model"
    not_a_model.mkdir()
    (not_a_model / "config.json").write_text(json.dumps({"model_type": "detr"}))
    with pytest.raises(LiafError, match="model_type is 'detr', expected 'gfl'"):
        export_detector(not_a_model, tmp_path / "out")
    with pytest.raises(LiafError, match=r"Unknown export format\(s\) \['tflite'\]"):
        load_example("export").main(["--model", str(model_dir), "--output", str(tmp_path / "o"), "--format", "tflite"])
    with pytest.raises(LiafError, match="already holds files"):
        export_detector(model_dir, exported[0])
    empty = load_coco_detection(data_dir, "train").select([])
    with pytest.raises(DataError, match="calibration"):
        export_detector(model_dir, tmp_path / "out", int8=True, calibration_images=load_images(empty))
    assert not (tmp_path / "out").exists()


@torch.library.custom_op("liaf_test::halve", mutates_args=())
def _halve(x: torch.Tensor) -> torch.Tensor:
    return x * 0.5


class _HalvedConv(torch.nn.Module):
    """A head conv followed by a user's own operator, registered without the shape function tracing needs."""

    def __init__(self, conv: torch.nn.Module) -> None:
        super().__init__()
        self.conv = conv

    def forward(self, x):
        return _halve(self.conv(x))


def test_exporter_failure_names_the_operator_and_leaves_nothing(tmp_path, model_dir):
    model, processor = load_detector(model_dir)
    model.head.class_logits = _HalvedConv(model.head.class_logits)
    output = tmp_path / "exported"
    with pytest.raises(ExportError, match=r"Exporting my-student to onnx failed at operator liaf_test::halve") as info:
        export_loaded(model, processor, output, model_name="my-student", formats=["onnx", "torch_export"])
    assert info.value.operator.startswith("liaf_test")
    assert list(tmp_path.iterdir()) == []
