"""Write a generated shapes set as a Hub-format dataset folder (parquet, with the columns of the Hub's
cppe-5: image_id, image, width, height, objects with id, area, bbox, category), in images of several sizes.

    python examples/hub_dataset.py --output data/shapes-hub --sizes 160x96 96x128 128x128

The folder holds `data/train-*.parquet`, `data/validation-*.parquet` and `data/test-*.parquet` (the
generated validation images, halved), with the images inside, so `datasets.load_dataset("data/shapes-hub")`
reads it, `push_to_hub` shares it, and transformers' object-detection example trains on it
(`--dataset_name data/shapes-hub`). Each size is its own generated set (seed `--seed` + its position), so
the sizes mix within every split.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import sys
import tempfile
from pathlib import Path

import datasets
from datasets.table import embed_table_storage

from liaf_hf.data import DIFFICULTIES, SyntheticSpec, generate_coco_dataset, load_coco_detection

logger = logging.getLogger("hub_dataset")


def parse_size(text: str) -> tuple[int, int]:
    """`WIDTHxHEIGHT` as (width, height)."""
    try:
        width, height = (int(part) for part in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"--sizes takes WIDTHxHEIGHT, e.g. 160x96; got {text!r}") from None
    if width < 32 or height < 32:
        raise argparse.ArgumentTypeError(f"--sizes {text}: each side must be at least 32 px")
    return width, height


def shapes_in_sizes(
    sizes: list[tuple[int, int]], *, difficulty: str, num_train: int, num_val: int, seed: int, work_dir: Path
) -> datasets.DatasetDict:
    """One generated set per size, concatenated per split with image and object ids made unique; the
    generated validation split halved into `validation` and `test`."""
    splits: dict[str, list[datasets.Dataset]] = {"train": [], "val": []}
    preset = SyntheticSpec.preset(difficulty)
    for position, (width, height) in enumerate(sizes):
        spec = dataclasses.replace(preset, image_width=width, image_height=height)
        root = generate_coco_dataset(
            work_dir / f"{width}x{height}", spec=spec, num_train=num_train, num_val=num_val, seed=seed + position
        )
        for split in splits:
            splits[split].append(load_coco_detection(root, split))
    merged = {}
    for split, parts in splits.items():
        image_offset, object_offset, renumbered = 0, 0, []
        for part in parts:
            renumbered.append(
                part.map(
                    lambda row, images=image_offset, objects=object_offset: {
                        "image_id": row["image_id"] + images,
                        "objects": {**row["objects"], "id": [i + objects for i in row["objects"]["id"]]},
                    }
                )
            )
            image_offset += max(part["image_id"], default=0) + 1
            object_offset += max((max(row["id"], default=0) for row in part["objects"]), default=0) + 1
        merged[split] = datasets.concatenate_datasets(renumbered).shuffle(seed=seed)
    halves = merged["val"].train_test_split(test_size=0.5, seed=seed, shuffle=False)
    return datasets.DatasetDict({"train": merged["train"], "validation": halves["train"], "test": halves["test"]})


def write_parquet_folder(dataset: datasets.DatasetDict, output: Path) -> None:
    """`output/data/<split>-00000-of-00001.parquet`, the images' bytes inside (as `push_to_hub` stores them)."""
    (output / "data").mkdir(parents=True, exist_ok=True)
    for split, rows in dataset.items():
        embedded = rows.with_format("arrow").map(embed_table_storage, batched=True).with_format(None)
        embedded.to_parquet(str(output / "data" / f"{split}-00000-of-00001.parquet"))


def main(argv: list[str] | None = None) -> Path:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output", required=True, type=Path, help="The folder to write (must not hold files).")
    parser.add_argument("--sizes", nargs="+", type=parse_size, default=[(160, 96), (96, 128), (128, 128)])
    parser.add_argument("--difficulty", choices=DIFFICULTIES, default="easy")
    parser.add_argument("--num_train", type=int, default=300, help="Training images per size.")
    parser.add_argument("--num_val", type=int, default=100, help="Validation + test images per size.")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.output.exists() and any(args.output.iterdir()):
        parser.error(f"--output {args.output} already holds files; give an empty or new folder")
    with tempfile.TemporaryDirectory() as work_dir:
        dataset = shapes_in_sizes(
            args.sizes,
            difficulty=args.difficulty,
            num_train=args.num_train,
            num_val=args.num_val,
            seed=args.seed,
            work_dir=Path(work_dir),
        )
        write_parquet_folder(dataset, args.output)
    counts = ", ".join(f"{split} {len(rows)}" for split, rows in dataset.items())
    logger.info("Wrote %s (%s images; sizes %s)", args.output, counts, " ".join(f"{w}x{h}" for w, h in args.sizes))
    return args.output


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s", stream=sys.stdout)
    main()
