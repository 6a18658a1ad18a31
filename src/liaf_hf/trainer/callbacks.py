"""Trainer callbacks of detection runs: progress reports, and the epoch each training augmentation draws from.

`TrainingProgressCallback` announces a run when it starts and, once the first `probe_steps` steps are timed,
logs the time per step and the estimated time left; it logs the same once more at each quarter of the run,
so a long run's log shows it advancing even where a progress bar is off (`--disable_tqdm true`) or cannot
redraw (a log file, CI).
"""

from __future__ import annotations

import logging
import time

from transformers import TrainerCallback

from ..data.collate import DetectionTransform

logger = logging.getLogger(__name__)


def format_duration(seconds: float) -> str:
    """`seconds` in words a reader takes in at a glance: "45 s", "3.2 min", "1.4 h"."""
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 90 * 60:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


class TrainingProgressCallback(TrainerCallback):
    """Logs a training run's start, its measured time per step and its estimated time left.

    The first step is left out of the rate: it carries one-off costs (allocations, the data loader's start).
    Time spent evaluating during training is left out of the estimate too, since a run's first evaluation
    usually comes after the probe.

    Args:
        run_name: what the run trains, as the log should name it (e.g. "teacher GFL resnet34").
        probe_steps: steps timed (after the first) before the first estimate.
    """

    def __init__(self, run_name: str, *, probe_steps: int = 10) -> None:
        if probe_steps < 1:
            raise ValueError(f"probe_steps must be at least 1, got {probe_steps}")
        self.run_name = run_name
        self.probe_steps = probe_steps
        self._clock_start: float | None = None
        self._first_step = 0
        self._next_report = 0

    def on_train_begin(self, args, state, control, **kwargs):
        self._clock_start = None
        if not state.is_world_process_zero:  # one report per run, not one per process
            return control
        resumed = f", resuming at step {state.global_step}" if state.global_step else ""
        logger.info("Training %s: %d steps%s", self.run_name, state.max_steps, resumed)
        return control

    def on_step_end(self, args, state, control, **kwargs):
        if not state.is_world_process_zero:
            return control
        now = time.perf_counter()
        if self._clock_start is None:
            # The clock starts after the first step of this process (a resumed run's first step too).
            self._clock_start, self._first_step = now, state.global_step
            self._next_report = self._first_step + self.probe_steps
            return control
        if state.global_step >= self._next_report and state.global_step < state.max_steps:
            seconds_per_step = (now - self._clock_start) / (state.global_step - self._first_step)
            left = (state.max_steps - state.global_step) * seconds_per_step
            logger.info(
                "%s: step %d of %d, %.2f s per step, about %s of training left",
                self.run_name,
                state.global_step,
                state.max_steps,
                seconds_per_step,
                format_duration(left),
            )
            quarter = max(1, state.max_steps // 4)
            self._next_report = (state.global_step // quarter + 1) * quarter
        return control

    def on_train_end(self, args, state, control, **kwargs):
        if self._clock_start is not None:
            logger.info("%s: trained %d steps", self.run_name, state.global_step)
        return control


class AugmentationEpochCallback(TrainerCallback):
    """Tells the training transform which epoch starts, so its flips change from epoch to epoch and a
    resumed run (whose state carries the epoch) draws the same ones."""

    def __init__(self, transform: DetectionTransform) -> None:
        self.transform = transform

    def on_epoch_begin(self, args, state, control, **kwargs):
        # state.epoch holds the epochs completed so far (fractional when resuming mid-epoch).
        self.transform.set_epoch(int(state.epoch + 1e-6) if state.epoch else 0)
        return control


__all__ = ["AugmentationEpochCallback", "TrainingProgressCallback", "format_duration"]
