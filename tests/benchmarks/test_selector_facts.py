"""benchmarks/selector_facts.py: a run's selector weights matched with the generator's facts about each instance."""

import json

import pytest

from liaf_hf.data.synthetic import generate_coco_dataset
from tiny import ROOT, load_script


def test_weights_are_matched_to_their_instances_and_grouped(tmp_path):
    data_dir = generate_coco_dataset(tmp_path / "varied", difficulty="varied", num_train=2, num_val=3, seed=4)
    annotations = json.loads((data_dir / "annotations" / "instances_val.json").read_text())
    image_id = annotations["images"][1]["id"]
    boxes = [
        [x, y, x + width, y + height]
        for x, y, width, height in (a["bbox"] for a in annotations["annotations"] if a["image_id"] == image_id)
    ]
    weights = [2.0] + [0.5] * (len(boxes) - 1)
    run = tmp_path / "run"
    (run / "selector_weights").mkdir(parents=True)
    image = {"boxes_xyxy": boxes, "class_labels": [0] * len(boxes), "weights": weights}
    (run / "selector_weights" / "weights.json").write_text(
        json.dumps([{"step": 0, "images": []}, {"step": 4, "images": [image]}])
    )

    script = load_script(ROOT / "benchmarks" / "selector_facts.py", "selector_facts")
    result = script.main(["--runs", str(run), "--data_dir", str(data_dir), "--output", str(tmp_path / "out.json")])
    (row,) = result["runs"]
    assert (row["instances"], row["min"], row["max"]) == (len(boxes), min(weights), max(weights))
    groups = {group["group"]: group for group in result["groups"]}
    assert groups["all"]["instances"] == len(boxes)
    assert groups["all"]["mean_weight"] == sum(weights) / len(boxes)
    facts = [
        r
        for r in json.loads((data_dir / "instance_facts_val.json").read_text())["annotations"]
        if r["image_id"] == image_id
    ]
    faint = [weight for weight, record in zip(weights, facts) if record["contrast"] < 1]
    if faint:
        assert groups["faint"]["mean_weight"] == sum(faint) / len(faint)


def test_training_weights_are_matched_with_the_training_annotations_wrong_ones_included(tmp_path):
    data_dir = generate_coco_dataset(tmp_path / "varied", difficulty="varied-harsh", num_train=12, num_val=1, seed=4)
    annotations = json.loads((data_dir / "annotations" / "instances_train.json").read_text())
    facts = json.loads((data_dir / "instance_facts_train.json").read_text())["annotations"]
    noise = {record["annotation_id"]: record["noise"] for record in facts}
    images = []
    for image in annotations["images"]:
        own = [a for a in annotations["annotations"] if a["image_id"] == image["id"]]
        boxes = [[x, y, x + width, y + height] for x, y, width, height in (a["bbox"] for a in own)]
        # The wrong annotations weighed 0.5, the others 1.5.
        weights = [0.5 if noise[a["id"]] != "none" else 1.5 for a in own]
        images.append({"boxes_xyxy": boxes, "class_labels": [0] * len(boxes), "weights": weights})
    run = tmp_path / "run"
    (run / "selector_weights").mkdir(parents=True)
    (run / "selector_weights" / "train_weights.json").write_text(json.dumps([{"step": 8, "images": images}]))

    script = load_script(ROOT / "benchmarks" / "selector_facts.py", "selector_facts")
    flags = ["--runs", str(run), "--data_dir", str(data_dir), "--output", str(tmp_path / "out.json")]
    groups = {group["group"]: group for group in script.main([*flags, "--split", "train"])["groups"]}
    assert groups["noise: none"]["mean_weight"] == 1.5 and groups["noise: none"]["run_means"] == [1.5]
    assert {groups[name]["mean_weight"] for name in ("noise: box", "noise: class") if name in groups} == {0.5}
    assert groups["all"]["instances"] == len(annotations["annotations"])
    # The evaluation images' weights are another file, which this run does not have.
    with pytest.raises(FileNotFoundError, match="weights.json"):
        script.main(flags)


def test_images_are_found_by_boxes_as_recorded_rounded_to_a_hundredth_of_a_pixel():
    script = load_script(ROOT / "benchmarks" / "selector_facts.py", "selector_facts")
    # 55.349 is 55.3 at one decimal, and recorded as 55.35, which is 55.4 at one decimal: within the tolerance.
    index = script.BoxIndex({7: [(55.349, 75.5, 62.35, 82.5)], 8: [(1.0, 2.0, 3.0, 4.0), (5.0, 6.0, 7.0, 8.0)]})
    assert index.find([[55.35, 75.5, 62.35, 82.5]]) == 7
    assert index.find([[1.0, 2.0, 3.0, 4.0], [5.0, 6.0, 7.0, 8.02]]) == 8
    assert index.find([[55.6, 75.5, 62.35, 82.5]]) is None
    assert index.find([[1.0, 2.0, 3.0, 4.0]]) is None
