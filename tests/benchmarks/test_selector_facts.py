"""benchmarks/selector_facts.py: a run's selector weights matched with the generator's facts about each instance."""

import json

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
