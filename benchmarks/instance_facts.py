"""What does a trained detector's own loss and correctness say about each instance, against what the generator
did to it? The signal any instance weighting reads (AID's teacher loss, the teacher-quality oracle, LIAF-KD's
`use_teacher_quality` and `use_student_loss` inputs), grouped by the hidden facts of the generated set.

    python benchmarks/instance_facts.py --model runs/teachers/<teacher> --data_dir data/shapes-varied

For each training image (as the students see it, without flips) the model runs with the image's labels and
`output_instance_losses=True`; each instance's loss and quality (best class score x IoU) is matched with its
record in `instance_facts_train.json` and averaged per group: annotation noise (none / box / class), faint or
not, size (pixels), truncated or not, occluded or not, class. Prints a table and writes
benchmarks/results/instance_facts_<model>.json.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))  # _provenance, also when a test loads this file by path
from _provenance import provenance, write_result  # noqa: E402
from liaf_hf import GFLForObjectDetection, GFLImageProcessor  # noqa: E402
from liaf_hf.data import load_coco_detection, read_instance_facts  # noqa: E402
from liaf_hf.data.collate import DetectionCollator, DetectionTransform  # noqa: E402

SIZE_BINS = ((0, 12), (12, 24), (24, 48), (48, 1e9))


def groups_of(record: dict, category_names: dict[int, str]) -> list[str]:
    """The groups an instance's facts put it in."""
    size = record["size"]
    size_bin = next(f"size {low:g}-{high:g} px" for low, high in SIZE_BINS if low <= size < high).replace("-1e+09", "+")
    return [
        "all",
        f"noise: {record['noise']}",
        "faint" if record["contrast"] < 1 else "full contrast",
        size_bin,
        "truncated" if record["truncation"] > 0 else "not truncated",
        "occluded > 10%" if record["visible_fraction"] < 0.9 else "occluded <= 10%",
        f"class {category_names[record['clean_category_id']]}",
    ]


@torch.no_grad()
def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="A saved GFL detector (e.g. the benchmark's teacher).")
    parser.add_argument("--data_dir", default=str(ROOT / "data" / "shapes-varied"))
    parser.add_argument("--split", default="train")
    parser.add_argument("--max_images", type=int, default=1000)
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument("--output", default=None)
    args = parser.parse_args(argv)

    model = GFLForObjectDetection.from_pretrained(args.model).eval()
    processor = GFLImageProcessor.from_pretrained(args.model)
    dataset = load_coco_detection(args.data_dir, args.split)
    dataset = dataset.select(range(min(args.max_images, len(dataset))))
    facts = read_instance_facts(args.data_dir, args.split)
    names = json.loads((Path(args.data_dir) / "annotations" / f"instances_{args.split}.json").read_text())
    category_names = {category["id"]: category["name"] for category in names["categories"]}
    transformed = dataset.with_transform(DetectionTransform(processor, train=False))
    collate = DetectionCollator(processor)
    values: dict[str, dict[str, list[float]]] = {}
    for start in range(0, len(dataset), args.batch_size):
        batch = collate([transformed[i] for i in range(start, min(start + args.batch_size, len(dataset)))])
        output = model(
            pixel_values=batch["pixel_values"],
            pixel_mask=batch["pixel_mask"],
            labels=batch["labels"],
            output_instance_losses=True,
        )
        records = []
        for labels in batch["labels"]:
            image_facts = facts.get(int(labels["image_id"]), [])
            if len(image_facts) != len(labels["class_labels"]):
                raise ValueError(f"image {int(labels['image_id'])}: the facts do not match its annotations")
            records.extend(image_facts)
        for record, loss, quality in zip(records, output.instance_losses.tolist(), output.instance_quality.tolist()):
            for group in groups_of(record, category_names):
                entry = values.setdefault(group, {"loss": [], "quality": []})
                entry["loss"].append(loss)
                entry["quality"].append(quality)

    rows = [
        {
            "group": group,
            "instances": len(entry["loss"]),
            "loss": statistics.fmean(entry["loss"]),
            "quality": statistics.fmean(entry["quality"]),
            "aid_weight": statistics.fmean(torch.exp(-0.1 * torch.tensor(entry["loss"])).tolist()),
        }
        for group, entry in sorted(values.items(), key=lambda item: (item[0] != "all", item[0]))
    ]
    print(f"{args.model} on {len(dataset)} {args.split} images of {args.data_dir}:")
    print("| group | instances | loss | quality (score x IoU) | AID weight exp(-0.1 loss) |")
    print("|---|---|---|---|---|")
    for row in rows:
        print(
            f"| {row['group']} | {row['instances']} | {row['loss']:.3f} | {row['quality']:.3f} | "
            f"{row['aid_weight']:.3f} |"
        )
    output_file = Path(args.output or ROOT / "benchmarks" / "results" / f"instance_facts_{Path(args.model).name}.json")
    result = {
        "provenance": provenance(),
        "command": "python benchmarks/instance_facts.py " + " ".join(sys.argv[1:] if argv is None else argv),
        "model": args.model,
        "data_dir": args.data_dir,
        "images": len(dataset),
        "rows": rows,
    }
    write_result(output_file, result)
    return result


if __name__ == "__main__":
    main()
