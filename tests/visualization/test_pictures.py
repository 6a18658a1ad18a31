"""Pictures of distillation: the selector-weights callback, the drawing of weights, the benchmark charts, and
the teacher's metrics on the distilled student's card."""

import json
from functools import partial

import pytest
import torch
from PIL import Image
from transformers import TrainerControl, TrainerState, TrainingArguments

from liaf_hf import GFLConfig, GFLForObjectDetection, GFLImageProcessor
from liaf_hf.data import label_maps, load_coco_detection
from liaf_hf.data.synthetic import generate_coco_dataset
from liaf_hf.distillation import build_distiller
from liaf_hf.trainer import LIAFDistillationTrainer
from liaf_hf.trainer.integration import configure_for_detection, detection_trainer_kwargs
from liaf_hf.visualization.drawing import draw_instance_weights, weight_colour, weight_legend
from liaf_hf.visualization.selector_weights import (
    PICTURES_DIR,
    TRAINING_WEIGHTS_FILE,
    SelectorWeightsCallback,
    add_selector_pictures,
    add_training_weights_record,
    selector_weights,
)
from tiny import ROOT, load_script
from tiny import tiny_config as shared_tiny_config

tiny_config = partial(shared_tiny_config, num_fpn_levels=3)


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    root = generate_coco_dataset(tmp_path_factory.mktemp("shapes"), num_train=8, num_val=4, seed=3)
    train, val = load_coco_detection(root, "train"), load_coco_detection(root, "val")
    return train, val, label_maps(train)[0]


@pytest.fixture(scope="module")
def teacher_dir(shapes, tmp_path_factory):
    torch.manual_seed(1)
    directory = tmp_path_factory.mktemp("teacher")
    GFLForObjectDetection(tiny_config(shapes[2], channels=48)).save_pretrained(directory)
    return directory


def make_trainer(shapes, teacher_dir, output_dir, *, method, max_steps=4, report_to="none", method_options=None):
    train, val, id2label = shapes
    torch.manual_seed(0)
    student = GFLForObjectDetection(tiny_config(id2label))
    processor = GFLImageProcessor.for_model_config(student.config, size={"shortest_edge": 64, "longest_edge": 64})
    args = configure_for_detection(
        TrainingArguments(
            output_dir=str(output_dir),
            max_steps=max_steps,
            per_device_train_batch_size=4,
            per_device_eval_batch_size=4,
            learning_rate=1e-3,
            eval_strategy="steps",
            eval_steps=2,
            save_strategy="no",
            report_to=report_to,
            logging_steps=2,
            disable_tqdm=True,
        )
    )
    return LIAFDistillationTrainer(
        model=student,
        teacher=teacher_dir,
        method=method,
        method_options=method_options,
        evaluate_teacher_at_start=False,
        args=args,
        **detection_trainer_kwargs(image_processor=processor, train_dataset=train, eval_dataset=val),
    )


@pytest.fixture(scope="module")
def liaf_run(shapes, teacher_dir, tmp_path_factory):
    """A tiny LIAF run with two evaluations (steps 2 and 4), logging to TensorBoard."""
    pytest.importorskip("tensorboard")
    output_dir = tmp_path_factory.mktemp("liaf-run")
    trainer = make_trainer(shapes, teacher_dir, output_dir, method="liaf", report_to="tensorboard")
    callback = add_selector_pictures(trainer, num_images=3)
    trainer.train()
    return trainer, callback, output_dir


def test_one_picture_per_evaluation_and_the_over_training_picture(liaf_run):
    trainer, callback, output_dir = liaf_run
    pictures = output_dir / PICTURES_DIR
    # The "before" picture at step 0, then one per evaluation.
    assert sorted(path.name for path in pictures.glob("step-*.png")) == ["step-0.png", "step-2.png", "step-4.png"]
    assert [step for step, _ in callback.history] == [0, 2, 4]
    step_picture = Image.open(pictures / "step-4.png")
    over_training = Image.open(pictures / "over_training.png")
    # Three 256-pixel tiles side by side; three 160-pixel rows, one per recorded step.
    assert step_picture.width >= 3 * 256 and step_picture.height >= 256
    assert over_training.height >= 3 * 160
    recorded = json.loads((pictures / "weights.json").read_text())
    assert [entry["step"] for entry in recorded] == [0, 2, 4] and len(recorded[0]["images"]) == 3
    # The selectors trained in between: the weights drawn changed.
    assert recorded[0]["images"] != recorded[-1]["images"]


def test_weights_drawn_are_the_selectors(liaf_run):
    trainer, callback, _ = liaf_run
    model = trainer.distillation_model
    model.eval()
    batch = callback.batch
    with torch.no_grad():
        student = model.student(pixel_values=batch["pixel_values"], pixel_mask=batch["pixel_mask"])
        teacher = model.teacher(pixel_values=batch["pixel_values"], pixel_mask=batch["pixel_mask"])
        pixels, mask = batch["pixel_values"], batch["pixel_mask"]
        distillation_batch = model.distillation_batch(pixels, mask, batch["labels"], student)
        distillation_batch.progress = 1.0  # the last picture was drawn at step 4 of 4
        levels = model.distiller.select(student=student, teacher=teacher, batch=distillation_batch)
    _, drawn = callback.history[-1]
    for index, image_weights in enumerate(drawn):
        count = len(batch["labels"][index]["class_labels"])
        expected = torch.stack([level.weights[index, :count] for level in levels]).mean(dim=0)
        torch.testing.assert_close(image_weights.weights, expected, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(image_weights.boxes, distillation_batch.boxes[index])
        # Each level's weights average 1 over the image's instances.
        torch.testing.assert_close(image_weights.level_weights.mean(dim=1), torch.ones(len(levels)))


def test_tensorboard_holds_the_grid_at_each_step(liaf_run):
    from tensorboard.backend.event_processing.event_accumulator import IMAGES, EventAccumulator

    _, _, output_dir = liaf_run
    event_dirs = {path.parent for path in output_dir.rglob("events.out.tfevents.*")}
    steps = set()
    for directory in event_dirs:
        events = EventAccumulator(str(directory), size_guidance={IMAGES: 0})
        events.Reload()
        if "selector_weights" in events.Tags()[IMAGES]:
            steps |= {event.step for event in events.Images("selector_weights")}
    assert steps == {0, 2, 4}
    # One run: the pictures share the trainer's TensorBoard writer, beside its scalars.
    assert len(event_dirs) == 1


def test_pictures_of_selectors_that_read_each_detectors_loss_per_instance(shapes, teacher_dir, tmp_path):
    # These selectors need the teacher and the student run with the batch's labels, in the picture as in training.
    options = {"use_teacher_quality": True, "use_student_loss": True}
    trainer = make_trainer(shapes, teacher_dir, tmp_path / "run", method="liaf", max_steps=2, method_options=options)
    callback = add_selector_pictures(trainer, num_images=2)
    trainer.train()
    assert [step for step, _ in callback.history] == [0, 2]
    assert (tmp_path / "run" / PICTURES_DIR / "step-2.png").is_file()
    for image_weights in callback.history[-1][1]:
        assert torch.isfinite(image_weights.weights).all()


def test_no_pictures_for_a_method_without_selectors(shapes, teacher_dir, tmp_path):
    trainer = make_trainer(shapes, teacher_dir, tmp_path / "run", method="mimic")
    assert add_selector_pictures(trainer) is None
    # A callback added by hand stays silent too.
    callback = SelectorWeightsCallback.from_dataset(
        trainer.eval_dataset, trainer.data_collator, trainer.processing_class, num_images=2
    )
    state = TrainerState()
    callback.on_evaluate(trainer.args, state, TrainerControl(), model=trainer.model)
    assert callback.history == [] and not (tmp_path / "run" / PICTURES_DIR).exists()


def test_the_selectors_weights_on_training_images_are_recorded_when_training_ends(shapes, teacher_dir, tmp_path):
    """With the training annotations, in order and not augmented: what benchmarks/selector_facts.py --split
    train matches with the generator's record of each annotation, wrong ones included."""
    train = shapes[0]
    trainer = make_trainer(shapes, teacher_dir, tmp_path / "run", method="liaf", max_steps=2)
    callback = add_training_weights_record(trainer, train, num_images=5, batch_size=2)
    trainer.train()
    recorded = json.loads((tmp_path / "run" / PICTURES_DIR / TRAINING_WEIGHTS_FILE).read_text())
    assert [entry["step"] for entry in recorded] == [2]
    images = recorded[0]["images"]
    rows = [row for row in train if len(row["objects"]["bbox"]) > 0][:5]
    batches = list(callback.batches())
    assert len(images) == 5 and [len(batch["labels"]) for batch in batches] == [2, 2, 1]
    for image, row in zip(images, rows):
        scale = 64 / max(row["width"], row["height"])
        expected = [[x * scale, y * scale, (x + w) * scale, (y + h) * scale] for x, y, w, h in row["objects"]["bbox"]]
        torch.testing.assert_close(torch.tensor(image["boxes_xyxy"]), torch.tensor(expected), atol=0.02, rtol=0)
        assert image["class_labels"] == list(row["objects"]["category"])
        # On every level an image's weights average 1.
        torch.testing.assert_close(torch.tensor(image["level_weights"]).mean(dim=1), torch.ones(3), atol=1e-3, rtol=0)
    # The selectors as they ended training gave these weights.
    now = selector_weights(trainer.distillation_model, batches[0], progress=1.0)
    for image, weights in zip(images[:2], now):
        torch.testing.assert_close(torch.tensor(image["weights"]), weights.weights, atol=1e-4, rtol=0)


def test_no_training_weights_for_a_method_without_selectors(shapes, teacher_dir, tmp_path):
    trainer = make_trainer(shapes, teacher_dir, tmp_path / "run", method="mimic")
    assert add_training_weights_record(trainer, shapes[0], num_images=3) is None
    with pytest.raises(ValueError, match="num_images must be at least 1"):
        add_training_weights_record(trainer, shapes[0], num_images=0)


def test_the_liaf_part_of_a_combined_method_is_found(shapes):
    config = tiny_config(shapes[2])
    combined = build_distiller("liaf+ld", student_config=config, teacher_config=config)
    assert combined.selecting_part() is combined.parts["liaf"]
    assert build_distiller("pkd", student_config=config, teacher_config=config).selecting_part() is None


def test_boxes_take_the_colour_of_their_weight():
    image = Image.new("RGB", (100, 100), (128, 128, 128))
    drawn = draw_instance_weights(image, [[10, 40, 60, 90], [50, 10, 90, 30]], [2.0, 0.25], font_size=10)
    # Left edges, below the tags: inside the dark halo, the weight's colour.
    assert drawn.getpixel((11, 70)) == weight_colour(2.0)
    assert drawn.getpixel((51, 25)) == weight_colour(0.25)
    assert weight_colour(1.0) != weight_colour(2.0) != weight_colour(4.0)
    assert weight_colour(100.0) == weight_colour(4.0) and weight_colour(0.0) == weight_colour(0.25)
    assert weight_legend(400).width == 400
    with pytest.raises(ValueError, match="one weight per box"):
        draw_instance_weights(image, [[0, 0, 5, 5]], [1.0, 2.0])


# ----------------------------------------------------------------------------------------- scripts


def gain_results(rows: list[tuple[str, list[float]]]) -> dict:
    """A distill_gain-style result: a teacher, and per label its runs (one AP per seed) and summary row."""
    runs, summary = [], []
    for label, values in rows:
        mean = sum(values) / len(values)
        std = (sum((v - mean) ** 2 for v in values) / max(1, len(values) - 1)) ** 0.5
        runs += [{"label": label, "seed": seed, "eval_AP": value} for seed, value in enumerate(values)]
        summary.append({"label": label, "method": label, "seeds": len(values), "AP": {"mean": mean, "std": std}})
    settings = {"teacher_backbone": "resnet50", "student_backbone": "resnet18"}
    return {"settings": settings, "teacher": {"eval_AP": 0.78}, "rows": summary, "runs": runs}


def test_plot_results_draws_the_distillation_and_capacity_charts(tmp_path):
    plot_results = load_script(ROOT / "benchmarks" / "plot_results.py", "plot_results")
    gain = tmp_path / "distill_gain_tiny.json"
    rows = [("none", [0.66, 0.65]), ("liaf-robust", [0.72, 0.71]), ("aid", [0.71, 0.715])]
    gain.write_text(json.dumps(gain_results(rows)))
    capacity = tmp_path / "detector_capacity_tiny.json"
    capacity.write_text(
        json.dumps({"results": [{"backbone": "resnet18", "parameters": 11.6e6, "eval_AP": 0.76, "eval_AP50": 0.93}]})
    )
    written = plot_results.main([str(gain), str(capacity)])
    assert written == [tmp_path / "distill_gain_tiny.png", tmp_path / "detector_capacity_tiny.png"]
    for path in written:
        assert Image.open(path).size[0] > 400
    broken = tmp_path / "distill_gain_broken.json"
    broken.write_text(json.dumps({"rows": [{"label": "none"}]}))
    from liaf_hf.errors import DataError

    with pytest.raises(DataError, match="distill_gain_broken.json"):
        plot_results.main([str(broken)])


def test_a_kitti_comparison_is_charted_in_its_headline_metric(tmp_path):
    """distill_gain's KITTI-layout results carry VOC mAP50 as their headline: the chart draws it, and a file
    that lacks it is named with the missing field."""
    plot_results = load_script(ROOT / "benchmarks" / "plot_results.py", "plot_results")
    results = gain_results([("none", [0.72, 0.75]), ("liaf", [0.87, 0.88])])
    for row in results["rows"]:
        row["VOC_mAP50"] = row.pop("AP")
    for run in results["runs"]:
        run["eval_VOC_mAP50"] = run.pop("eval_AP")
    results["teacher"] = {"eval_VOC_mAP50": 0.93}
    results["headline_metric"] = "VOC_mAP50"
    path = tmp_path / "distill_gain_kitti.json"
    path.write_text(json.dumps(results))
    assert plot_results.main([str(path)]) == [tmp_path / "distill_gain_kitti.png"]
    results["headline_metric"] = "KITTI_mAP40_moderate"
    path.write_text(json.dumps(results))
    from liaf_hf.errors import DataError

    with pytest.raises(DataError, match="KITTI_mAP40_moderate"):
        plot_results.main([str(path)])


def test_distilled_card_carries_the_teacher_ap_from_a_metrics_file(shapes, teacher_dir, tmp_path):
    from huggingface_hub import ModelCard

    data_dir = generate_coco_dataset(tmp_path / "shapes", num_train=4, num_val=2, seed=1)
    (tmp_path / "teacher_eval.json").write_text(json.dumps({"eval_AP": 0.6543, "eval_AP50": 0.8765}))
    student_dir = tmp_path / "student"
    sizes = {"fpn_channels": 16, "head_channels": 16, "head_stacked_convs": 1, "head_norm_groups": 4}
    teacher = tmp_path / "teacher16"
    torch.manual_seed(2)
    GFLForObjectDetection(
        GFLConfig(backbone="resnet18", **sizes, id2label=label_maps(load_coco_detection(data_dir, "train"))[0])
    ).save_pretrained(teacher)
    load_script(ROOT / "examples" / "distill.py", "example_distill_pictures").main(
        ["--data_dir", str(data_dir), "--shortest_edge", "64", "--longest_edge", "64"]
        + ["--do_train", "--do_eval", "--max_steps", "1", "--per_device_train_batch_size", "2"]
        + ["--per_device_eval_batch_size", "2", "--report_to", "none", "--disable_tqdm", "true"]
        + ["--output_dir", str(student_dir), "--save_strategy", "no", "--teacher_model_name_or_path", str(teacher)]
        + ["--method", "liaf", "--evaluate_teacher_at_start", "false", "--selector_picture_images", "2"]
        + ["--teacher_metrics_file", str(tmp_path / "teacher_eval.json"), "--selector_train_images", "3"]
        + [part for name, value in sizes.items() for part in (f"--student_{name}", str(value))]
    )
    card = ModelCard.load(student_dir / "README.md")
    teacher_row = next(line for line in card.text.splitlines() if line.startswith(f"| teacher `{teacher}`"))
    assert "65.4" in teacher_row
    assert json.loads((student_dir / "summary.json").read_text())["teacher_AP"] == pytest.approx(0.6543)
    # The default flags drew the selector's weights before training and at the final evaluation.
    assert sorted(path.name for path in (student_dir / PICTURES_DIR).glob("*.png")) == [
        "over_training.png",
        "step-0.png",
        "step-1.png",
    ]
    # --selector_train_images: the weights on three training images at the end.
    (recorded,) = json.loads((student_dir / PICTURES_DIR / TRAINING_WEIGHTS_FILE).read_text())
    assert recorded["step"] == 1 and len(recorded["images"]) == 3
