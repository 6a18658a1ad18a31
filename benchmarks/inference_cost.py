"""What deploying a student costs and keeps: images per second at batch 1 and 8 for PyTorch eager,
`torch.compile`, onnxruntime float32 and onnxruntime INT8 on the same images, and the AP of each on the generated
set; with a plain student beside the distilled one, whether the distillation gain survives INT8.

    python benchmarks/inference_cost.py --model runs/demo/student-resnet18-liaf \
        --plain_model runs/demo/student-resnet18-none
    python benchmarks/inference_cost.py --train_steps 300    # no model given: train a ResNet-18 student first

Each model is exported with liaf_hf.export (ONNX with its post-processing inside, INT8 calibrated on
--calibration_samples training images) and scored on the validation split with pycocotools. Timing covers the
forward pass and the post-processing (inside the ONNX graphs; `post_process_object_detection` for PyTorch), not
the image preprocessing, which is the same for all. The backends take turns within each round and each reports
its median round, as examples/demo.py's images_per_second does, so the machine's noise hits them alike. Prints a
markdown table and writes benchmarks/results/inference_cost.json.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import sys
import time
from datetime import date
from pathlib import Path

import torch

from liaf_hf.data import generate_coco_dataset, load_coco_detection
from liaf_hf.export import OnnxDetector
from liaf_hf.export.exporter import INT8_ONNX_FILE, ONNX_FILE, export_detector, load_images
from liaf_hf.export.parity import evaluate_ap
from liaf_hf.inference import detect, load_detector

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))  # _provenance, also when a test loads this file by path
from _provenance import provenance, write_result  # noqa: E402

BACKENDS = ("pytorch", "torch_compile", "onnx", "onnx_int8")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", help="A saved (distilled) student; without it one is trained (--train_steps).")
    parser.add_argument("--plain_model", help="The same student trained without distillation, for the INT8 gain.")
    parser.add_argument("--data_dir", default=str(ROOT / "data" / "shapes-easy"))
    parser.add_argument("--num_train", type=int, default=2000, help="Generated training images (when generating).")
    parser.add_argument("--num_val", type=int, default=500, help="Generated validation images (when generating).")
    parser.add_argument("--num_eval", type=int, default=500, help="Validation images that measure AP.")
    parser.add_argument("--calibration_samples", type=int, default=200)
    parser.add_argument("--timing_images", type=int, default=64, help="Images timed per round and batch size.")
    parser.add_argument("--batch_sizes", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads(), help="For PyTorch and onnxruntime.")
    parser.add_argument("--train_steps", type=int, default=300, help="Steps of the student trained without --model.")
    parser.add_argument("--work_dir", default=str(ROOT / "runs" / "inference_cost"))
    parser.add_argument("--output", default=str(ROOT / "benchmarks" / "results" / "inference_cost.json"))
    return parser.parse_args(argv)


def train_student(args: argparse.Namespace) -> Path:
    """A ResNet-18 GFL trained on the generated set with examples/train_detector.py (reused when present)."""
    output = Path(args.work_dir) / "student"
    if (output / "model.safetensors").is_file():
        return output
    command = [
        sys.executable, str(ROOT / "examples" / "train_detector.py"),
        "--data_dir", args.data_dir, "--generate_synthetic", "easy",
        "--synthetic_num_train", str(args.num_train), "--synthetic_num_val", str(args.num_val),
        "--backbone", "resnet18", "--fpn_channels", "64", "--head_channels", "64", "--head_stacked_convs", "2",
        "--shortest_edge", "128", "--longest_edge", "128", "--output_dir", str(output), "--do_train",
        "--overwrite_output_dir", "true",
        "--max_steps", str(args.train_steps), "--per_device_train_batch_size", "16", "--learning_rate", "2e-3",
        "--lr_scheduler_type", "cosine", "--save_strategy", "no", "--report_to", "none", "--seed", "0",
    ]  # fmt: skip
    subprocess.run(command, check=True)
    return output


def measure_model(args: argparse.Namespace, model_dir: Path, name: str, train_set, eval_set) -> dict:
    export_dir = Path(args.work_dir) / f"export-{name}"
    summary = export_detector(
        model_dir,
        export_dir,
        formats=["onnx"],
        int8=True,
        calibration_images=load_images(train_set, args.calibration_samples),
        parity_images=load_images(eval_set, 16),
        evaluation_set=eval_set,
        overwrite=True,
    )
    model, processor = load_detector(model_dir)
    compiled = torch.compile(model)
    runners = {
        "onnx": OnnxDetector(export_dir / ONNX_FILE, threads=args.threads),
        "onnx_int8": OnnxDetector(export_dir / INT8_ONNX_FILE, threads=args.threads),
    }
    ap = {backend: summary["evaluation"][backend]["AP"] for backend in ("pytorch", "onnx", "onnx_int8")}
    ap["torch_compile"] = evaluate_ap(
        lambda images: detect(compiled, processor, images, threshold=processor.score_threshold), eval_set
    )["AP"]

    images = load_images(eval_set, args.timing_images)
    if len(images) < max(args.batch_sizes):
        raise SystemExit(f"{len(images)} timing images cannot fill a batch of {max(args.batch_sizes)}.")
    throughput = {}
    for batch_size in args.batch_sizes:
        batches = []
        for start in range(0, len(images) - batch_size + 1, batch_size):
            chunk = images[start : start + batch_size]
            prepared = processor(images=chunk, return_tensors="pt")
            prepared["sizes"] = [(image.height, image.width) for image in chunk]
            batches.append(prepared)

        @torch.no_grad()
        def run_torch(module, batch):
            outputs = module(pixel_values=batch["pixel_values"], pixel_mask=batch["pixel_mask"])
            processor.post_process_object_detection(outputs, target_sizes=batch["sizes"])

        backends = {
            "pytorch": lambda batch: run_torch(model, batch),
            "torch_compile": lambda batch: run_torch(compiled, batch),
            "onnx": lambda batch: runners["onnx"].run(batch["pixel_values"], batch["pixel_mask"]),
            "onnx_int8": lambda batch: runners["onnx_int8"].run(batch["pixel_values"], batch["pixel_mask"]),
        }
        seconds = {backend: [] for backend in backends}
        for round_index in range(args.rounds + 1):  # round 0 warms up (and compiles)
            for backend, run in backends.items():
                started = time.perf_counter()
                for batch in batches:
                    run(batch)
                if round_index > 0:
                    seconds[backend].append(time.perf_counter() - started)
        timed = batch_size * len(batches)
        throughput[batch_size] = {backend: timed / statistics.median(times) for backend, times in seconds.items()}
    return {
        "model": str(model_dir),
        "AP": ap,
        "images_per_second": {str(size): values for size, values in throughput.items()},
        "parity": {kind: report.get("passed") for kind, report in summary["parity"].items()},
        "int8_parity": summary["parity"]["onnx_int8"],
        "export_dir": str(export_dir),
    }


def markdown(results: dict) -> str:
    sizes = [str(size) for size in results["batch_sizes"]]
    lines = [
        "| model | backend | AP | " + " | ".join(f"images/s, batch {size}" for size in sizes) + " |",
        "|---|---|---|" + "---|" * len(sizes),
    ]
    for name, measured in results["models"].items():
        for backend in BACKENDS:
            speeds = " | ".join(f"{measured['images_per_second'][size][backend]:.1f}" for size in sizes)
            lines.append(f"| {name} | {backend} | {measured['AP'][backend]:.3f} | {speeds} |")
    if "distillation_gain" in results:
        gain = results["distillation_gain"]
        lines += [
            "",
            "| distillation gain (AP) | float32 (PyTorch) | INT8 (onnxruntime) |",
            "|---|---|---|",
            f"| distilled - plain | {gain['float32']:+.3f} | {gain['int8']:+.3f} |",
        ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    if not (Path(args.data_dir) / "annotations" / "instances_val.json").is_file():
        generate_coco_dataset(args.data_dir, difficulty="easy", num_train=args.num_train, num_val=args.num_val, seed=0)
    model_dir = Path(args.model) if args.model else train_student(args)
    train_set = load_coco_detection(args.data_dir, "train")
    eval_set = load_coco_detection(args.data_dir, "val")
    eval_set = eval_set.select(range(min(args.num_eval, len(eval_set))))

    models = {"student": model_dir}
    if args.plain_model:
        models["plain"] = Path(args.plain_model)
    results = {
        "provenance": provenance(),
        "date": date.today().isoformat(),
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "threads": args.threads},
        "torch_version": torch.__version__,
        "batch_sizes": args.batch_sizes,
        "rounds": args.rounds,
        "timing_images": args.timing_images,
        "evaluation_images": len(eval_set),
        "calibration_samples": args.calibration_samples,
        "models": {name: measure_model(args, path, name, train_set, eval_set) for name, path in models.items()},
    }
    if args.plain_model:
        student, plain = results["models"]["student"]["AP"], results["models"]["plain"]["AP"]
        results["distillation_gain"] = {
            "float32": student["pytorch"] - plain["pytorch"],
            "int8": student["onnx_int8"] - plain["onnx_int8"],
        }
    write_result(args.output, results)
    print(markdown(results))
    return results


if __name__ == "__main__":
    main()
