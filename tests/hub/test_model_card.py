"""Model cards and Hub upload: the card's content and metadata, the exact folder that would be uploaded, the
push with only the network calls mocked, and the example scripts writing the card and pushing the student."""

import json
import re
import shutil
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from huggingface_hub import HfApi, ModelCard
from PIL import Image
from transformers import ResNetConfig, pipeline

import liaf_hf
from liaf_hf import GFLConfig, GFLForObjectDetection, GFLImageProcessor, LiafError
from liaf_hf.distillation import method_settings
from liaf_hf.hub import push_student, take_over_push_to_hub
from liaf_hf.hub.model_card import backbone_name, count_parameters, read_metrics_file, template_path, write_model_card
from liaf_hf.hub.upload import prepare_upload_folder, upload_file_names
from tiny import ROOT, load_example, tiny_detector_flags

ID2LABEL = {0: "circle", 1: "square"}
STUDENT_FILES = [
    "README.md",
    "config.json",
    "configuration_gfl.py",
    "image_processing_gfl.py",
    "loss_gfl.py",
    "model.safetensors",
    "modeling_gfl.py",
    "preprocessor_config.json",
]


def tiny_config(**overrides) -> GFLConfig:
    settings = dict(
        backbone="resnet18",
        fpn_channels=16,
        head_channels=16,
        head_stacked_convs=1,
        head_norm_groups=4,
        id2label=ID2LABEL,
    )
    settings.update(overrides)
    return GFLConfig(**settings)


def save_tiny_detector(directory: Path) -> GFLForObjectDetection:
    torch.manual_seed(0)
    model = GFLForObjectDetection(tiny_config())
    model.save_pretrained(directory)
    GFLImageProcessor.for_model_config(model.config, size={"shortest_edge": 64, "longest_edge": 96}).save_pretrained(
        directory
    )
    return model


@pytest.fixture(scope="module")
def saved_student(tmp_path_factory):
    directory = tmp_path_factory.mktemp("student")
    model = save_tiny_detector(directory)
    return directory, sum(p.numel() for p in model.parameters())


@pytest.fixture
def student_dir(saved_student, tmp_path):
    """A fresh copy, so a test may write its card or add files."""
    directory = tmp_path / "student"
    shutil.copytree(saved_student[0], directory)
    return directory


def distilled_card(directory: Path, **overrides) -> ModelCard:
    settings = dict(
        metrics={"eval_AP": 0.4123, "eval_AP50": 0.7, "eval_loss": 1.5, "epoch": 1.0},
        dataset_name="shapes-easy",
        method="liaf",
        method_options={"objective": "robust"},
        teacher_name="runs/teacher-r34",
        teacher_config=tiny_config(backbone="resnet34", fpn_channels=32, head_channels=32, head_norm_groups=8),
        teacher_metrics={"teacher_AP": 0.5, "teacher_AP50": 0.8},
        baseline_metrics={"eval_AP": 0.35, "eval_AP50": 0.61},
        model_id="me/gfl-r18-liaf",
        training={"steps": 400, "learning rate": 0.002},
    )
    settings.update(overrides)
    return write_model_card(directory, **settings)


def table_rows(text: str, header: str) -> list[list[str]]:
    """The body rows of the markdown table whose header row starts with `header`."""
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(header))
    rows = []
    for line in lines[start + 2 :]:
        if not line.startswith("|"):
            break
        rows.append([cell.strip() for cell in line.strip("|").split("|")])
    return rows


# ------------------------------------------------------------------------------------------------ card


def test_card_metadata_carries_the_object_detection_eval_result(student_dir):
    distilled_card(student_dir)
    card = ModelCard.load(student_dir / "README.md")
    assert card.data.pipeline_tag == "object-detection"
    assert card.data.library_name == "transformers"
    assert {"object-detection", "knowledge-distillation", "liaf"} <= set(card.data.tags)
    results = {result.metric_type: result for result in card.data.eval_results}
    assert set(results) == {"mAP", "mAP@0.5"}
    ap = results["mAP"]
    assert (ap.task_type, ap.dataset_name, ap.dataset_type, ap.dataset_split) == (
        "object-detection",
        "shapes-easy",
        "shapes-easy",
        "val",
    )
    assert ap.metric_value == pytest.approx(41.23)
    assert results["mAP@0.5"].metric_value == pytest.approx(70.0)
    assert card.data.model_name == "gfl-r18-liaf"
    # The metadata block is what the Hub reads: it holds the model-index the metric is shown from.
    assert "model-index:" in card.content and "type: object-detection" in card.content


def test_card_describes_teacher_method_student_and_results(student_dir, saved_student):
    card = distilled_card(student_dir)
    text = (student_dir / "README.md").read_text()
    assert text == str(card)
    assert "distilled from the teacher `runs/teacher-r34` (`resnet34` backbone) with the `liaf` method" in text
    assert "AP 50.0 on the same evaluation set" in text
    assert "LIAF-KD, arXiv 2603.26088, as reconstructed in liaf-hf" in text
    assert '"objective": "robust"' in text
    architecture = dict(table_rows(text, "| | |"))
    assert architecture["backbone"] == "`resnet18` (timm)"
    assert architecture["FPN"] == "5 levels, 16 channels"
    assert architecture["parameters"] == f"{saved_student[1] / 1e6:.2f} M"
    assert architecture["input size"] == "shorter edge resized to 64 px, longer edge at most 96 px"
    assert "It detects 2 classes: circle, square." in text
    assert table_rows(text, "| model | AP | AP50 |") == [
        ["teacher `runs/teacher-r34`", "50.0", "80.0"],
        ["student without distillation", "35.0", "61.0"],
        ["**this model (distilled, liaf)**", "41.2", "70.0"],
    ]
    assert ["learning rate", "0.002"] in table_rows(text, "| setting | value |")


def test_card_loading_snippets_name_the_repo(student_dir):
    text = str(distilled_card(student_dir))
    assert 'pipeline("object-detection", model="me/gfl-r18-liaf", trust_remote_code=True)' in text
    assert 'AutoModelForObjectDetection.from_pretrained("me/gfl-r18-liaf", trust_remote_code=True)' in text
    assert "configuration_gfl.py, image_processing_gfl.py, loss_gfl.py, modeling_gfl.py" in text
    assert "## Intended use and limitations" in text


def test_card_of_a_detector_trained_without_distillation(student_dir):
    card = write_model_card(student_dir, metrics={"eval_AP": 0.3, "eval_AP50": 0.5}, dataset_name="shapes-easy")
    text = str(card)
    assert "trained on shapes-easy without distillation" in text
    assert "## Distillation" not in text and "teacher" not in text.lower()
    assert "knowledge-distillation" not in card.data.tags
    assert table_rows(text, "| model | AP | AP50 |") == [["**this model (no distillation)**", "30.0", "50.0"]]
    # Without a repo id the snippets name the directory itself.
    assert f'pipeline("object-detection", model="{student_dir}", trust_remote_code=True)' in text
    assert card.data.eval_results[0].metric_value == pytest.approx(30.0)


def test_card_of_an_undistilled_run_lists_its_teacher_for_reference_only(student_dir):
    text = str(distilled_card(student_dir, method="none", baseline_metrics=None))
    assert "## Distillation" not in text and "without distillation" in text
    assert table_rows(text, "| model | AP | AP50 |") == [
        ["teacher `runs/teacher-r34` (for reference; not distilled from)", "50.0", "80.0"],
        ["**this model (no distillation)**", "41.2", "70.0"],
    ]


def test_card_accepts_another_template(student_dir, tmp_path):
    template = tmp_path / "card.md"
    template.write_text("---\n{{ card_data }}\n---\n\n{{ model_name }}: {{ student.backbone }}, {{ results[0][1] }}\n")
    card = write_model_card(
        student_dir, metrics={"AP": 0.25}, dataset_name="shapes", model_id="me/x", template=template
    )
    assert card.text.strip() == "x: resnet18, 25.0"
    assert card.data.eval_results[0].metric_value == pytest.approx(25.0)


def test_card_of_an_unevaluated_model_has_no_eval_result(student_dir):
    card = write_model_card(student_dir, metrics=None, dataset_name="shapes-easy")
    assert not card.data.eval_results
    assert "This model was not evaluated" in str(card)
    assert table_rows(str(card), "| model | AP | AP50 |") == [["**this model (no distillation)**", "–", "–"]]


def test_card_loading_snippets_run(student_dir, tmp_path, monkeypatch):
    text = str(write_model_card(student_dir, metrics=None, dataset_name="shapes-easy"))
    snippets = re.findall(r"```python\n(.*?)```", text, flags=re.DOTALL)
    assert len(snippets) == 2
    monkeypatch.chdir(tmp_path)
    Image.new("RGB", (80, 60), (120, 90, 40)).save("image.jpg")
    namespace: dict = {}
    for snippet in snippets:
        exec(snippet, namespace)  # the card's own code, against this directory
    assert isinstance(namespace["detections"], dict)
    assert set(namespace["detections"]) == {"scores", "labels", "boxes"}


def test_distillation_without_teacher_is_refused(student_dir):
    with pytest.raises(LiafError, match="method 'liaf'.*no teacher_name"):
        write_model_card(student_dir, metrics=None, dataset_name="shapes", method="liaf")


def test_card_refuses_a_directory_that_is_not_a_gfl_detector(tmp_path, student_dir):
    with pytest.raises(LiafError, match="no config.json"):
        write_model_card(tmp_path, metrics=None, dataset_name="shapes")
    config = json.loads((student_dir / "config.json").read_text())
    (student_dir / "config.json").write_text(json.dumps({**config, "model_type": "detr"}))
    with pytest.raises(LiafError, match=r"config.json: model_type is 'detr', expected 'gfl'"):
        write_model_card(student_dir, metrics=None, dataset_name="shapes")
    (student_dir / "config.json").write_text(json.dumps(config))
    (student_dir / "model.safetensors").unlink()
    with pytest.raises(LiafError, match="has no weights: expected model.safetensors"):
        write_model_card(student_dir, metrics=None, dataset_name="shapes")


def test_read_metrics_file_takes_summaries_and_refuses_files_without_ap(tmp_path):
    summary = tmp_path / "summary.json"
    summary.write_text(json.dumps({"backbone": "resnet18", "eval_AP": 0.25, "eval_AP50": 0.5, "eval_APs": -1.0}))
    assert read_metrics_file(summary) == {"AP": 0.25, "AP50": 0.5}
    (tmp_path / "bad.json").write_text(json.dumps({"eval_loss": 1.0}))
    with pytest.raises(LiafError, match=r"bad.json has no AP"):
        read_metrics_file(tmp_path / "bad.json")
    (tmp_path / "broken.json").write_text("{")
    with pytest.raises(LiafError, match=r"broken.json is not valid JSON"):
        read_metrics_file(tmp_path / "broken.json")
    with pytest.raises(LiafError, match=r"missing.json does not exist"):
        read_metrics_file(tmp_path / "missing.json")


def test_parameters_are_counted_without_building_weights():
    assert count_parameters(tiny_config(backbone_pretrained=True)) == sum(
        p.numel() for p in GFLForObjectDetection(tiny_config()).parameters()
    )


def test_transformers_backbone_is_named_and_counted():
    """A transformers backbone has no timm name: cards and run summaries call it by its checkpoint, else by
    its model type, and its parameters are counted on the meta device too."""
    resnet = ResNetConfig(
        embedding_size=8,
        hidden_sizes=[8, 8, 16, 16],
        depths=[1, 1, 1, 1],
        layer_type="basic",
        out_features=["stage2", "stage3", "stage4"],
    )
    config = tiny_config(backbone=None, backbone_config=resnet)
    assert backbone_name(config) == "resnet" and backbone_name(tiny_config()) == "resnet18"
    assert count_parameters(config) == sum(p.numel() for p in GFLForObjectDetection(config).parameters())


def test_template_ships_inside_the_package():
    path = template_path()
    assert path.is_file() and Path(liaf_hf.__file__).parent in path.parents
    assert '"hub/templates/*.md"' in (ROOT / "pyproject.toml").read_text()


# ------------------------------------------------------------------------------------------------- hub


def add_run_leftovers(directory: Path) -> None:
    """What a distillation run leaves beside the student: none of it may be published."""
    for name in ("training_args.bin", "trainer_state.json", "summary.json", "eval_results.json", "all_results.json"):
        (directory / name).write_text("{}")
    (directory / "distiller.safetensors").write_bytes(b"distiller")
    checkpoint = directory / "checkpoint-2"
    checkpoint.mkdir()
    for name in ("model.safetensors", "distiller.safetensors", "optimizer.pt", "rng_state.pth", "config.json"):
        (checkpoint / name).write_bytes(b"x")
    (directory / "runs").mkdir()
    (directory / "runs" / "events.out.tfevents").write_bytes(b"x")


def test_upload_folder_holds_exactly_the_student(student_dir, tmp_path):
    distilled_card(student_dir)
    add_run_leftovers(student_dir)
    assert upload_file_names(student_dir) == STUDENT_FILES
    folder = prepare_upload_folder(student_dir, destination=tmp_path / "upload")
    assert sorted(path.name for path in folder.iterdir()) == STUDENT_FILES
    for name in STUDENT_FILES:
        assert (folder / name).read_bytes() == (student_dir / name).read_bytes()
    # The folder alone is a working model for users without liaf-hf's Auto registration in mind.
    detector = pipeline("object-detection", model=str(folder), trust_remote_code=True)
    assert isinstance(detector(Image.new("RGB", (64, 48), "white"), threshold=0.0), list)
    with pytest.raises(LiafError, match="already exists"):
        prepare_upload_folder(student_dir, destination=folder)


def test_upload_needs_a_card_and_a_gfl_detector(student_dir, tmp_path):
    with pytest.raises(LiafError, match=r"has no README.md model card.*write_model_card"):
        upload_file_names(student_dir)
    with pytest.raises(LiafError, match="no config.json"):
        upload_file_names(tmp_path)


def mock_hub(monkeypatch) -> list[tuple[str, dict]]:
    """Replace the two network calls with recorders; the uploaded folder's files are recorded while it exists."""
    calls: list[tuple[str, dict]] = []

    def create_repo(self, repo_id, **kwargs):
        calls.append(("create_repo", {"repo_id": repo_id, **kwargs}))
        return SimpleNamespace(repo_id=repo_id if "/" in repo_id else f"me/{repo_id}")

    def upload_folder(self, **kwargs):
        folder = Path(kwargs["folder_path"])
        files = {path.name: path.read_bytes() for path in folder.iterdir()}
        calls.append(("upload_folder", {**kwargs, "files": files}))
        return SimpleNamespace(commit_url=f"https://huggingface.co/{kwargs['repo_id']}/commit/0")

    monkeypatch.setattr(HfApi, "create_repo", create_repo)
    monkeypatch.setattr(HfApi, "upload_folder", upload_folder)
    return calls


def test_push_student_uploads_only_the_student(student_dir, monkeypatch):
    distilled_card(student_dir)
    add_run_leftovers(student_dir)
    calls = mock_hub(monkeypatch)
    push_student(student_dir, "gfl-r18-liaf", private=True, commit_message="Upload")
    assert [name for name, _ in calls] == ["create_repo", "upload_folder"]
    create, upload = calls[0][1], calls[1][1]
    assert create["repo_id"] == "gfl-r18-liaf" and create["private"] is True and create["exist_ok"] is True
    assert upload["repo_id"] == "me/gfl-r18-liaf", "the namespaced id create_repo resolved"
    assert sorted(upload["files"]) == STUDENT_FILES
    assert upload["files"]["README.md"] == (student_dir / "README.md").read_bytes()
    assert upload["delete_patterns"] is None and upload["commit_message"] == "Upload"
    assert not Path(upload["folder_path"]).exists(), "the staging folder is removed afterwards"

    calls.clear()
    push_student(student_dir, "me/gfl-r18-liaf", delete_other_files=True)
    assert calls[1][1]["delete_patterns"] == "*"


def test_push_student_checks_before_any_network_call(student_dir, monkeypatch):
    calls = mock_hub(monkeypatch)
    with pytest.raises(LiafError, match="has no README.md"):
        push_student(student_dir, "me/model")
    assert calls == []


def test_take_over_push_to_hub_switches_the_trainers_pushing_off(tmp_path):
    from transformers import TrainingArguments

    args = TrainingArguments(output_dir=str(tmp_path / "run-x"), push_to_hub=True, hub_private_repo=True)
    target = take_over_push_to_hub(args)
    assert args.push_to_hub is False
    assert (target.repo_id, target.private) == ("run-x", True)
    args = TrainingArguments(output_dir=str(tmp_path / "run-y"), push_to_hub=True, hub_model_id="me/model")
    assert take_over_push_to_hub(args).repo_id == "me/model"
    assert take_over_push_to_hub(TrainingArguments(output_dir=str(tmp_path / "z"))) is None


# ------------------------------------------------------------------------------------------- scripts


def test_scripts_write_the_card_and_push_only_the_student(tmp_path, monkeypatch):
    from liaf_hf.data.synthetic import generate_coco_dataset

    data_dir = generate_coco_dataset(tmp_path / "shapes", num_train=4, num_val=2, seed=1)
    common = [
        "--data_dir", str(data_dir), "--shortest_edge", "64", "--longest_edge", "64",
        "--do_train", "--do_eval", "--max_steps", "1", "--per_device_train_batch_size", "2",
        "--per_device_eval_batch_size", "2", "--report_to", "none", "--disable_tqdm", "true",
        "--card_dataset_name", "shapes-tiny",
    ]  # fmt: skip
    plain_dir, student_dir = tmp_path / "plain", tmp_path / "student"
    load_example("train_detector").main(
        common + tiny_detector_flags("") + ["--output_dir", str(plain_dir), "--save_strategy", "no"]
    )
    plain_card = ModelCard.load(plain_dir / "README.md")
    assert "without distillation" in plain_card.text and plain_card.data.eval_results[0].dataset_name == "shapes-tiny"

    calls = mock_hub(monkeypatch)
    load_example("distill").main(
        common
        + ["--output_dir", str(student_dir), "--teacher_model_name_or_path", str(plain_dir), "--method", "liaf"]
        + ["--baseline_metrics_file", str(plain_dir / "summary.json")]
        + ["--save_strategy", "steps", "--save_steps", "1", "--push_to_hub", "--hub_model_id", "me/tiny-liaf"]
        + tiny_detector_flags("student_")
    )
    # The run left its checkpoint (with the distiller) and its state beside the student ...
    assert (student_dir / "checkpoint-1" / "distiller.safetensors").is_file()
    assert (student_dir / "training_args.bin").is_file()
    # ... and the Trainer pushed nothing itself: one repo creation and one upload, both ours.
    assert [name for name, _ in calls] == ["create_repo", "upload_folder"]
    upload = calls[1][1]
    assert upload["repo_id"] == "me/tiny-liaf" and sorted(upload["files"]) == STUDENT_FILES
    card = upload["files"]["README.md"].decode()
    assert f"teacher `{plain_dir}`" in card and "`liaf` method" in card
    assert "| student without distillation |" in card
    assert 'model="me/tiny-liaf", trust_remote_code=True' in card
    # The card and the summary name every setting the run used, the defaults it did not set included.
    assert '"alpha": ' in card and '"entropy_weight": ' in card
    summary = json.loads((student_dir / "summary.json").read_text())
    assert summary["method_settings"] == json.loads(json.dumps(method_settings("liaf")))
