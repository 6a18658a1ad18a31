"""Training detectors with `transformers.Trainer`: plain detection training (`DetectionTrainer`), distillation
(`LIAFDistillationTrainer`, which runs any registered method), and the pieces that make the Trainer handle
detection batches, metrics, callbacks and checkpoints."""

from .callbacks import AugmentationEpochCallback, TrainingProgressCallback
from .checkpoints import check_checkpoint, require_safetensors_checkpoint
from .detection import DetectionTrainer, check_processes_are_one_run
from .distillation import (
    DistillationModel,
    DistillationOutput,
    LIAFDistillationTrainer,
    check_teacher_fits,
    inherit_from_teacher,
    load_teacher,
)
from .integration import DetectionsForMetrics, configure_for_detection, detection_trainer_kwargs

__all__ = [
    "AugmentationEpochCallback",
    "DetectionTrainer",
    "DetectionsForMetrics",
    "DistillationModel",
    "DistillationOutput",
    "LIAFDistillationTrainer",
    "TrainingProgressCallback",
    "check_checkpoint",
    "check_processes_are_one_run",
    "check_teacher_fits",
    "configure_for_detection",
    "detection_trainer_kwargs",
    "inherit_from_teacher",
    "load_teacher",
    "require_safetensors_checkpoint",
]
