"""`DetectionTrainer`: `transformers.Trainer` for detectors that guards against faults a long run meets.

- A non-finite loss (NaN or inf in the total or any `loss_dict` component) stops the run with a
  `FloatingPointError` naming the components and the step, or, with `nonfinite_loss="skip"`, the step is
  skipped: no weight, optimizer moment, step count or buffer (BatchNorm's running statistics) changes, and
  `nonfinite_steps_skipped` counts it in the logs and the final train metrics.
- Unreadable images that a `DetectionTransform(skip_bad_images=True)` dropped are counted as
  `bad_images_skipped` in the same logs.
- Resuming loads weights only from `model.safetensors`, never from a pickled `pytorch_model.bin`, and reads every
  file of the checkpoint before the first step: a truncated or corrupt one is named (`check_checkpoint`).

`LIAFDistillationTrainer` builds on this class, so distillation gets the same guards.
"""

from __future__ import annotations

import logging

import torch
from torch import nn
from transformers import Trainer, TrainingArguments

from ..data.collate import DetectionTransform
from .checkpoints import check_checkpoint

logger = logging.getLogger(__name__)

NONFINITE_POLICIES = ("error", "skip")


def nonfinite_components(loss: torch.Tensor, loss_dict: dict[str, torch.Tensor] | None) -> list[str] | None:
    """Names of the non-finite loss components, `["loss"]` when only the total is; None when all is finite."""
    if bool(torch.isfinite(loss).all()):
        return None
    bad = [name for name, value in (loss_dict or {}).items() if not bool(torch.isfinite(value).all())]
    return bad or ["loss"]


class DetectionTrainer(Trainer):
    """`transformers.Trainer` for `GFLForObjectDetection` (or any model whose output has `loss` and
    `loss_dict`) with the guards described in the module docstring.

    Args:
        nonfinite_loss: `"error"` (default) or `"skip"`.
        **kwargs: everything `transformers.Trainer` takes.
    """

    # The detector's loss is a per-batch mean; Trainer divides it by the accumulation steps.
    loss_is_scaled_for_ga = False

    def __init__(self, *args, nonfinite_loss: str = "error", **kwargs) -> None:
        if nonfinite_loss not in NONFINITE_POLICIES:
            raise ValueError(f"nonfinite_loss must be one of {NONFINITE_POLICIES}, got {nonfinite_loss!r}")
        super().__init__(*args, **kwargs)
        check_processes_are_one_run(self.args)
        self.nonfinite_loss = nonfinite_loss
        #: Steps skipped for a non-finite loss, including those a resumed run's checkpoint had logged.
        self.nonfinite_steps_skipped = 0
        self._counts_restored = False
        # Set by compute_loss when a micro-batch of the current optimizer step had a non-finite loss.
        self._nonfinite_in_step = False
        # With nonfinite_loss="skip": the model's buffers as the current optimizer step found them.
        self._buffers_at_step_start: list[torch.Tensor] | None = None

    # ------------------------------------------------------------------------------ non-finite losses

    def train(self, *args, **kwargs):
        self._nonfinite_in_step = False
        self._buffers_at_step_start = None
        self._counts_restored = False
        return super().train(*args, **kwargs)

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        outputs = model(**inputs)
        loss = outputs["loss"] if isinstance(outputs, dict) else outputs[0]
        if model.training:
            loss = self._guard_nonfinite(model, loss, outputs.get("loss_dict") if isinstance(outputs, dict) else None)
        if model.training and not self._nonfinite_in_step:
            self.record_loss_components(outputs)
        return (loss, outputs) if return_outputs else loss

    def record_loss_components(self, outputs) -> None:
        """Hook for subclasses that log the components of each finite training loss."""

    def _guard_nonfinite(self, model: nn.Module, loss: torch.Tensor, loss_dict: dict | None) -> torch.Tensor:
        bad = nonfinite_components(loss, loss_dict)
        if bad is None:
            return loss
        components = loss_dict or {"loss": loss}
        values = ", ".join(f"{name}={float(value.detach()):.4g}" for name, value in components.items())
        step = self.state.global_step + 1
        message = f"Non-finite training loss at step {step}: {', '.join(bad)} is not finite ({values})"
        if self.nonfinite_loss == "error":
            # Stop before the optimizer spreads NaN into every weight.
            raise FloatingPointError(message + ". Pass nonfinite_loss='skip' to skip such steps instead.")
        logger.warning("%s; skipping this optimizer step.", message)
        self._nonfinite_in_step = True
        # Backward still runs, on an exact zero that reaches every trainable parameter: under DDP every
        # process must take part in the gradient all-reduce, or the other processes wait forever.
        return sum((p.sum() * 0.0 for p in model.parameters() if p.requires_grad), loss.new_zeros(()))

    def training_step(self, model, inputs, num_items_in_batch=None):
        if not self._counts_restored:
            # The state is loaded by now: a resumed run goes on counting from its checkpoint's logs.
            logged = [entry.get("nonfinite_steps_skipped", 0) for entry in self.state.log_history]
            self.nonfinite_steps_skipped = max(logged, default=0)
            self._counts_restored = True
        if self.nonfinite_loss == "skip" and self._buffers_at_step_start is None:
            # The forward of a bad batch updates BatchNorm's running statistics (NaN) before its loss is seen;
            # a copy of the buffers (small beside the weights) taken as the step starts undoes that.
            self._buffers_at_step_start = [buffer.detach().clone() for buffer in model.buffers()]
        loss = super().training_step(model, inputs, num_items_in_batch)
        skipped_micro_batch = self._nonfinite_in_step
        if self.accelerator.sync_gradients:
            self._maybe_skip_optimizer_step(model)
        # NaN, not the zero that was back-propagated, so Trainer's logging_nan_inf_filter leaves it out of the
        # logged loss.
        return torch.full_like(loss, float("nan")) if skipped_micro_batch else loss

    def _maybe_skip_optimizer_step(self, model: nn.Module) -> None:
        """Called after the last backward of an optimizer step, before clipping and `optimizer.step()`."""
        skip = self._nonfinite_in_step
        if self.accelerator.num_processes > 1:
            # Every process must skip the same steps, or the replicas' weights drift apart.
            flag = torch.tensor(float(skip), device=self.args.device)
            skip = float(self.accelerator.reduce(flag, reduction="sum")) > 0
        self._nonfinite_in_step = False
        saved_buffers, self._buffers_at_step_start = self._buffers_at_step_start, None
        if not skip:
            return
        # torch optimizers pass over parameters whose grad is None: no moment update, no weight decay, no
        # step count, so the weights and the optimizer state stay exactly as they were.
        for parameter in model.parameters():
            parameter.grad = None
        if saved_buffers is not None:
            # Every micro-batch of the step ran its forward: the buffer updates of all are undone, as their
            # gradients are.
            with torch.no_grad():
                for buffer, saved in zip(model.buffers(), saved_buffers, strict=True):
                    buffer.copy_(saved)
        self.nonfinite_steps_skipped += 1

    # ------------------------------------------------------------------------------------- logging

    def bad_images_skipped(self) -> int:
        """Images this process's `DetectionTransform`s dropped as unreadable (train and eval sets)."""
        return sum(transform.bad_images_skipped for transform in self._detection_transforms())

    def _detection_transforms(self) -> list[DetectionTransform]:
        datasets = [self.train_dataset]
        eval_datasets = self.eval_dataset.values() if isinstance(self.eval_dataset, dict) else [self.eval_dataset]
        transforms = []
        for dataset in [*datasets, *eval_datasets]:
            transform = getattr(dataset, "format", {}).get("format_kwargs", {}).get("transform")
            if isinstance(transform, DetectionTransform) and transform not in transforms:
                transforms.append(transform)
        return transforms

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        # Training logs carry "loss", the final train metrics "train_loss".
        if "loss" in logs or "train_loss" in logs:
            logs["nonfinite_steps_skipped"] = self.nonfinite_steps_skipped
            logs["bad_images_skipped"] = self.bad_images_skipped()
        super().log(logs, start_time)

    # ---------------------------------------------------------------------------------- resuming

    def _load_from_checkpoint(self, resume_from_checkpoint: str, model: nn.Module | None = None) -> None:
        check_checkpoint(resume_from_checkpoint)
        super()._load_from_checkpoint(resume_from_checkpoint, model)


def check_processes_are_one_run(args: TrainingArguments) -> None:
    """Refuse a multi-process launch that the Trainer does not see as one: on a machine without GPUs,
    `accelerate launch --multi_gpu` starts the processes and their gloo group, but `TrainingArguments` without
    `use_cpu` sets up no distributed state, so each process would train alone on the whole data set and all
    would write the same files."""
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return
    launched = torch.distributed.get_world_size()
    if launched != args.world_size:
        raise RuntimeError(
            f"{launched} processes were launched, but the Trainer sees {args.world_size} "
            f"(parallel mode {args.parallel_mode.value}): each would train alone and overwrite the others' files. "
            "On a machine without GPUs pass --use_cpu true (TrainingArguments(use_cpu=True)), so that the "
            "processes train as one run over gloo."
        )
