"""What many test files share: detectors small enough to train in seconds on two cores, the flags that build
them in the example scripts, and loading an example script as a module."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import torch

from liaf_hf import GFLConfig, GFLForObjectDetection, GFLImageProcessor

ROOT = Path(__file__).resolve().parents[1]
#: Saved folders the tests load (written by earlier versions of the library, see each folder's README).
FIXTURES = Path(__file__).resolve().parent / "fixtures"


def tiny_config(
    id2label: dict[int, str],
    *,
    backbone: str = "resnet18",
    channels: int = 32,
    norm_groups: int = 8,
    num_fpn_levels: int = 5,
    **overrides,
) -> GFLConfig:
    """A GFL config with `channels`-wide FPN and head, one stacked conv per head branch."""
    return GFLConfig(
        backbone=backbone,
        fpn_channels=channels,
        head_channels=channels,
        head_stacked_convs=1,
        head_norm_groups=norm_groups,
        num_fpn_levels=num_fpn_levels,
        id2label=id2label,
        **overrides,
    )


def tiny_detector(id2label: dict[int, str], *, seed: int = 0, **config) -> GFLForObjectDetection:
    """A freshly initialised `tiny_config` detector, its weights drawn from `seed`."""
    torch.manual_seed(seed)
    return GFLForObjectDetection(tiny_config(id2label, **config))


def tiny_detector_flags(prefix: str = "", *, channels: int = 16, norm_groups: int = 4, **more) -> list[str]:
    """Example-script flags (`--<prefix>fpn_channels ...`) that build a tiny detector; `more` adds flags."""
    sizes = {
        "fpn_channels": channels,
        "head_channels": channels,
        "head_stacked_convs": 1,
        "head_norm_groups": norm_groups,
        **more,
    }
    return [part for name, value in sizes.items() for part in (f"--{prefix}{name}", str(value))]


def load_example(name: str) -> ModuleType:
    """`examples/<name>.py` as a module (the examples are scripts, not a package)."""
    return load_script(ROOT / "examples" / f"{name}.py", f"example_{name}")


def load_script(path: Path, name: str) -> ModuleType:
    """The script at `path` as a module called `name`."""
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses resolve the script's annotations through sys.modules
    spec.loader.exec_module(module)
    return module


def make_distillation_trainer(shapes, teacher, output_dir, *, method="none", max_steps=2, seed=0, **extra):
    """A `LIAFDistillationTrainer` of a `tiny_detector` student on `shapes` (the conftest fixture), checkpointing
    every 2 steps, fully deterministic; `extra` goes to the trainer."""
    from liaf_hf.trainer import LIAFDistillationTrainer
    from liaf_hf.trainer.integration import configure_for_detection, detection_trainer_kwargs

    train, val, id2label = shapes
    student = tiny_detector(id2label, seed=seed)
    processor = GFLImageProcessor.for_model_config(student.config, size={"shortest_edge": 64, "longest_edge": 64})
    from transformers import TrainingArguments

    args = configure_for_detection(
        TrainingArguments(
            output_dir=str(output_dir),
            max_steps=max_steps,
            per_device_train_batch_size=4,
            per_device_eval_batch_size=4,
            learning_rate=1e-3,
            report_to="none",
            save_strategy="steps",
            save_steps=2,
            logging_steps=1,
            seed=seed,
            data_seed=seed,
            full_determinism=True,
            disable_tqdm=True,
        )
    )
    return LIAFDistillationTrainer(
        model=student,
        teacher=teacher,
        method=method,
        args=args,
        **detection_trainer_kwargs(image_processor=processor, train_dataset=train, eval_dataset=val, seed=seed),
        **extra,
    )
