"""Pictures of what the instance selectors do: their weights drawn over fixed validation images, at the start
of training and at every evaluation.

`SelectorWeightsCallback` (a `transformers.TrainerCallback`) runs the student and the teacher on a few fixed
validation images without gradients, asks the distiller for its instance weights (`LIAFDistiller.select`)
and writes, under `<output_dir>/selector_weights/`:

- `step-<N>.png`: the images with each ground-truth box coloured and thickened by its weight, the weight
  printed on it, and the colour scale below;
- `over_training.png`: the same images, one row per recorded step, so the change over training reads top
  to bottom (rewritten each time);
- `weights.json`: the numbers drawn (per step, image and instance: box, class, weight, per-level weights).

`TrainingWeightsCallback` (`add_training_weights_record`) records the same numbers, without pictures, on many
training images once training ends (`train_weights.json`): the validation images carry clean annotations, the
training images the ones the selectors weighed, corrupted ones included.

With `report_to` including "tensorboard", the `step-<N>` grid also goes to TensorBoard as the image
`selector_weights` at that global step. A distiller that does not weigh instances (`Distiller.selects_instances`
is False for it and, in a combined method, for every part) has nothing to draw: `add_selector_pictures` then adds
no callback, and the callback itself draws nothing.

Usage:

```python
trainer = LIAFDistillationTrainer(model=student, teacher="runs/teacher", method="liaf", args=args, ...)
add_selector_pictures(trainer, num_images=6)
trainer.train()  # writes <output_dir>/selector_weights/step-0.png, ..., over_training.png
```
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import logging
import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from transformers import TrainerCallback
from transformers.integrations import TensorBoardCallback

from ..data.collate import DetectionTransform
from ..models.gfl.image_processing_gfl import GFLImageProcessor
from ..trainer.distillation import DistillationModel
from .drawing import draw_instance_weights, image_grid, weight_legend

logger = logging.getLogger(__name__)

#: Folder under the run's output directory that holds the pictures.
PICTURES_DIR = "selector_weights"
#: TensorBoard image tag of the per-evaluation grid.
TENSORBOARD_TAG = "selector_weights"
#: File under `PICTURES_DIR` with the selectors' weights on training images at the end of training.
TRAINING_WEIGHTS_FILE = "train_weights.json"

__all__ = [
    "InstanceWeights",
    "PICTURES_DIR",
    "SelectorWeightsCallback",
    "TRAINING_WEIGHTS_FILE",
    "TrainingWeightsCallback",
    "add_selector_pictures",
    "add_training_weights_record",
    "input_images",
    "selector_weights",
]


@dataclass
class InstanceWeights:
    """The selectors' weights of one image's ground-truth instances.

    Attributes:
        boxes: (n, 4) xyxy in pixels of the network input (the resized image, before padding).
        class_labels: (n,) class indices.
        level_weights: (L, n) each instance's weight on each FPN level, finest first; on every level the
            weights of an image's instances average 1.
    """

    boxes: torch.Tensor
    class_labels: torch.Tensor
    level_weights: torch.Tensor

    @property
    def weights(self) -> torch.Tensor:
        """(n,) the mean over FPN levels. `loss_liaf` is a mean over levels of each level's weighted
        discrepancies, so this is how much more (above 1) or less (below 1) than under even weighting the
        selectors make the instance's discrepancy count, averaged over the levels."""
        return self.level_weights.mean(dim=0)

    def to_dict(self) -> dict[str, Any]:
        return {
            "boxes_xyxy": [[round(float(v), 2) for v in box] for box in self.boxes.tolist()],
            "class_labels": [int(label) for label in self.class_labels.tolist()],
            "weights": [round(float(w), 4) for w in self.weights.tolist()],
            "level_weights": [[round(float(w), 4) for w in level] for level in self.level_weights.tolist()],
        }


def _to_device(labels: Sequence[Mapping[str, Any]], device: torch.device) -> list[dict[str, Any]]:
    return [
        {key: value.to(device) if isinstance(value, torch.Tensor) else value for key, value in label.items()}
        for label in labels
    ]


@torch.no_grad()
def selector_weights(
    model: DistillationModel, batch: Mapping[str, Any], *, progress: float
) -> list[InstanceWeights] | None:
    """The selectors' instance weights on `batch`, as the distiller computes them in training, but with the
    student in eval mode (so drawing leaves BatchNorm statistics alone) and without gradients.

    Args:
        model: the trainer's `DistillationModel`.
        batch: a collated batch, `pixel_values` (B, 3, H, W), `pixel_mask` (B, H, W) and `labels` (one dict
            per image, boxes normalised cxcywh); every image needs at least one instance.
        progress: training progress in [0, 1] given to the selectors (step / total steps).

    Returns:
        One `InstanceWeights` per image, or None when the distiller cannot select.
    """
    distiller = model.distiller.selecting_part()
    if distiller is None:
        return None
    device = next(model.student.parameters()).device
    pixel_values = batch["pixel_values"].to(device)
    pixel_mask = batch["pixel_mask"].to(device) if batch.get("pixel_mask") is not None else None
    labels = _to_device(batch["labels"], device)
    was_training = model.training
    model.eval()
    try:
        # With labels, as in training: selectors may read either detector's loss on each instance.
        targets = model.student.prepare_targets(labels, pixel_values, pixel_mask)
        teacher_output, student_output = model.detector_outputs(pixel_values, pixel_mask, targets)
        distillation_batch = dataclasses.replace(
            model.distillation_batch(pixel_values, pixel_mask, targets, student_output), progress=float(progress)
        )
        levels = distiller.select(student=student_output, teacher=teacher_output, batch=distillation_batch)
    finally:
        model.train(was_training)
    stacked = torch.stack([level.weights.float() for level in levels]).cpu()  # (L, B, n_max)
    return [
        InstanceWeights(
            boxes=boxes.detach().float().cpu(),
            class_labels=class_labels.detach().cpu(),
            level_weights=stacked[:, index, : boxes.shape[0]],
        )
        for index, (boxes, class_labels) in enumerate(zip(distillation_batch.boxes, distillation_batch.class_labels))
    ]


def input_images(batch: Mapping[str, Any], image_processor: GFLImageProcessor) -> list[Image.Image]:
    """The images of a collated batch as the network sees them (resized, unpadded), back in RGB: the frame
    in which `InstanceWeights.boxes` are drawn.

    Args:
        batch: `pixel_values` (B, 3, H, W) normalised by `image_processor`, `pixel_mask` (B, H, W).
        image_processor: the processor that made `pixel_values` (for its mean and std).
    """
    pixel_values = batch["pixel_values"].detach().float().cpu()
    if image_processor.do_normalize:
        mean = torch.tensor(image_processor.image_mean).view(1, 3, 1, 1)
        std = torch.tensor(image_processor.image_std).view(1, 3, 1, 1)
        pixel_values = pixel_values * std + mean
    pixels = (pixel_values.clamp(0, 1) * 255).round().to(torch.uint8)
    mask = batch.get("pixel_mask")
    images = []
    for index in range(pixels.shape[0]):
        height, width = pixels.shape[-2:]
        if mask is not None:
            valid = mask[index].bool()
            height, width = int(valid[:, 0].sum()), int(valid[0, :].sum())
        images.append(Image.fromarray(pixels[index, :, :height, :width].permute(1, 2, 0).numpy(), mode="RGB"))
    return images


def _tile(image: Image.Image, weights: InstanceWeights, size: int) -> Image.Image:
    """`image` scaled so its longer edge is `size` pixels, with the weights drawn on it."""
    scale = size / max(image.size)
    scaled = image.resize((round(image.width * scale), round(image.height * scale)), Image.Resampling.BILINEAR)
    return draw_instance_weights(scaled, weights.boxes * scale, weights.weights, font_size=max(11, size // 16))


def _legend(width: int) -> Image.Image:
    return weight_legend(width, caption="instance weight (1 = the image's average)")


def draw_step(
    images: Sequence[Image.Image], weights: Sequence[InstanceWeights], *, step: int, columns: int = 3, size: int = 256
) -> Image.Image:
    """One evaluation's picture: `images` with their instance weights, `columns` per row, and the legend."""
    tiles = [_tile(image, image_weights, size) for image, image_weights in zip(images, weights)]
    rows = [tiles[start : start + columns] for start in range(0, len(tiles), columns)]
    width = min(len(tiles), columns) * (size + 6) + 6
    return image_grid(
        rows,
        title=f"Selector instance weights at step {step} (mean over FPN levels)",
        footer=_legend(max(width, 520)),
    )


def draw_over_training(
    images: Sequence[Image.Image],
    history: Sequence[tuple[int, Sequence[InstanceWeights]]],
    *,
    max_rows: int = 8,
    size: int = 160,
) -> Image.Image:
    """The same images drawn once per recorded step, one row per step (top: earliest), at most `max_rows`
    rows evenly spaced over the history (always the first and the last)."""
    if len(history) > max_rows:
        picks = sorted({round(i * (len(history) - 1) / (max_rows - 1)) for i in range(max_rows)})
        history = [history[i] for i in picks]
    rows = [
        [_tile(image, image_weights, size) for image, image_weights in zip(images, weights)] for _, weights in history
    ]
    width = len(images) * (size + 6) + 100
    return image_grid(
        rows,
        title="Selector instance weights over training (one row per step, mean over FPN levels)",
        row_labels=[f"step {step}" for step, _ in history],
        footer=_legend(max(width, 520)),
    )


def _examples_with_instances(dataset: Any, num_images: int, *, who: str) -> list[Mapping[str, Any]]:
    """The first `num_images` processed examples of `dataset` (in its order) with at least one instance."""
    if num_images < 1:
        raise ValueError(f"num_images must be at least 1, got {num_images}.")
    examples = []
    for index in range(len(dataset)):
        example = dataset[index]
        if len(example["labels"]["class_labels"]) > 0:
            examples.append(example)
            if len(examples) == num_images:
                break
    if not examples:
        raise ValueError(f"{who}: no image of the dataset has an instance to weigh.")
    return examples


def _weights_record(history: Sequence[tuple[int, Sequence[InstanceWeights]]]) -> str:
    return json.dumps(
        [{"step": step, "images": [w.to_dict() for w in image_weights]} for step, image_weights in history], indent=1
    )


class SelectorWeightsCallback(TrainerCallback):
    """Draws the selectors' instance weights over fixed validation images once when training starts (the
    "before" picture) and after every evaluation; see the module docstring for the files it writes.

    Each box's weight is the mean of its per-level weights: every FPN level contributes an equal share of
    `loss_liaf`, and an instance has a weight on every level (its Gaussian mask reaches every level), so
    the mean over levels is the factor by which the instance counts more or less than an even share of the
    loss. Per-level weights are in `weights.json`.

    Args:
        batch: the fixed images, collated as the trainer collates them (`pixel_values`, `pixel_mask`,
            `labels`); every image needs at least one instance.
        image_processor: the processor that made `pixel_values` (to turn them back into pictures).
        tensorboard_writer: returns the `SummaryWriter` to add the grid to, or None; by default the
            callback opens its own under `<output_dir>/runs/selector_weights` when `report_to` includes
            "tensorboard" (`add_selector_pictures` shares the trainer's TensorBoard writer instead).
        max_rows: most rows (steps) in `over_training.png`.
    """

    def __init__(
        self,
        *,
        batch: Mapping[str, Any],
        image_processor: GFLImageProcessor,
        tensorboard_writer: Callable[[], Any] | None = None,
        max_rows: int = 8,
    ) -> None:
        empty = [index for index, label in enumerate(batch["labels"]) if len(label["class_labels"]) == 0]
        if empty:
            raise ValueError(f"SelectorWeightsCallback: images {empty} of the batch have no instances to weigh.")
        self.batch = batch
        self.images = input_images(batch, image_processor)
        self.tensorboard_writer = tensorboard_writer
        self.max_rows = max_rows
        self.history: list[tuple[int, list[InstanceWeights]]] = []
        self._own_writer = None

    @classmethod
    def from_dataset(
        cls,
        dataset: Any,
        data_collator: Callable[[list], Mapping[str, Any]],
        image_processor: GFLImageProcessor,
        *,
        num_images: int = 6,
        **kwargs: Any,
    ) -> SelectorWeightsCallback:
        """The callback for the first `num_images` images of `dataset` (in its order) that have at least one
        instance. `dataset` yields processed examples, as the trainer's eval dataset does.

        Raises:
            ValueError: `num_images` is below 1, or no image of the dataset has an instance.
        """
        examples = _examples_with_instances(dataset, num_images, who="SelectorWeightsCallback")
        return cls(batch=data_collator(examples), image_processor=image_processor, **kwargs)

    # ------------------------------------------------------------------------------------------- events

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        self._record(args, state, model)

    def on_evaluate(self, args, state, control, model=None, **kwargs):
        self._record(args, state, model)

    def on_train_end(self, args, state, control, **kwargs):
        if self._own_writer is not None:
            self._own_writer.close()
            self._own_writer = None

    # ------------------------------------------------------------------------------------------ drawing

    def _record(self, args, state, model) -> None:
        # Under DDP the Trainer hands callbacks the wrapped model; the pictures need the DistillationModel.
        model = getattr(model, "module", model)
        if not state.is_world_process_zero or not isinstance(model, DistillationModel):
            return
        step = int(state.global_step)
        weights = selector_weights(model, self.batch, progress=step / max(1, state.max_steps))
        if weights is None:
            return
        # An evaluation right after another at the same step (the scripts' final evaluate) adds no row.
        self.history = [entry for entry in self.history if entry[0] != step] + [(step, weights)]
        directory = Path(args.output_dir) / PICTURES_DIR
        directory.mkdir(parents=True, exist_ok=True)
        grid = draw_step(self.images, weights, step=step)
        grid.save(directory / f"step-{step}.png")
        draw_over_training(self.images, self.history, max_rows=self.max_rows).save(directory / "over_training.png")
        (directory / "weights.json").write_text(_weights_record(self.history))
        self._to_tensorboard(args, grid, step)

    def _to_tensorboard(self, args, grid: Image.Image, step: int) -> None:
        if "tensorboard" not in (args.report_to or []):
            return
        writer = self.tensorboard_writer() if self.tensorboard_writer is not None else None
        if writer is None:
            writer = self._own_tensorboard_writer(args)
        if writer is None:
            return
        pixels = torch.from_numpy(np.array(grid)).permute(2, 0, 1)  # (3, H, W) uint8
        writer.add_image(TENSORBOARD_TAG, pixels, step)
        writer.flush()

    def _own_tensorboard_writer(self, args):
        if self._own_writer is None:
            if importlib.util.find_spec("tensorboard") is None:
                logger.warning("report_to includes tensorboard but it is not installed: selector pictures skipped.")
                return None
            from torch.utils.tensorboard import SummaryWriter

            self._own_writer = SummaryWriter(log_dir=os.path.join(args.output_dir, "runs", PICTURES_DIR))
        return self._own_writer


class TrainingWeightsCallback(TrainerCallback):
    """Records the selectors' instance weights on fixed training images once training ends, into
    `<output_dir>/selector_weights/train_weights.json` (the layout of `weights.json`, with one step).

    The images come as the evaluation transform makes them (resized, not augmented) and with their training
    annotations, wrong ones included: what the selectors do with the instances they weighed in training.
    `benchmarks/selector_facts.py --split train` matches them with a generated set's facts. They are read only
    when training ends, so the callback holds no images through training.

    Args:
        dataset: processed examples (as the trainer's eval dataset yields them) of the training split.
        data_collator: the trainer's collator.
        num_images: weigh the first this many images of `dataset` (in its order) that have an instance.
        batch_size: images per forward pass.
    """

    def __init__(
        self,
        *,
        dataset: Any,
        data_collator: Callable[[list], Mapping[str, Any]],
        num_images: int,
        batch_size: int = 16,
    ) -> None:
        if num_images < 1:
            raise ValueError(f"num_images must be at least 1, got {num_images}.")
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}.")
        self.dataset = dataset
        self.data_collator = data_collator
        self.num_images = num_images
        self.batch_size = batch_size
        self.weights: list[InstanceWeights] = []

    def batches(self) -> Iterator[Mapping[str, Any]]:
        """The images, collated `batch_size` at a time, read as they are needed."""
        pending, found = [], 0
        for index in range(len(self.dataset)):
            example = self.dataset[index]
            if len(example["labels"]["class_labels"]) == 0:
                continue
            pending.append(example)
            found += 1
            if len(pending) == self.batch_size or found == self.num_images:
                yield self.data_collator(pending)
                pending = []
            if found == self.num_images:
                return
        if pending:
            yield self.data_collator(pending)

    def on_train_end(self, args, state, control, model=None, **kwargs):
        model = getattr(model, "module", model)
        if not state.is_world_process_zero or not isinstance(model, DistillationModel):
            return
        step = int(state.global_step)
        weights = []
        for batch in self.batches():
            batch_weights = selector_weights(model, batch, progress=step / max(1, state.max_steps))
            if batch_weights is None:
                return
            weights.extend(batch_weights)
        if not weights:
            # The run itself is done and saved: a missing record is not a reason to fail it.
            logger.warning("The selector weights on training images are not recorded: no image has an instance.")
            return
        self.weights = weights
        directory = Path(args.output_dir) / PICTURES_DIR
        directory.mkdir(parents=True, exist_ok=True)
        (directory / TRAINING_WEIGHTS_FILE).write_text(_weights_record([(step, weights)]))


def add_training_weights_record(
    trainer: Any, train_dataset: Any, *, num_images: int, batch_size: int = 16
) -> TrainingWeightsCallback | None:
    """Add a `TrainingWeightsCallback` on the first `num_images` images (with instances) of `train_dataset`, the
    unprocessed training split (a `datasets.Dataset` of `liaf_hf.data`'s layout), to a `LIAFDistillationTrainer`
    whose method can select. Returns the callback, or None (nothing added) when the method has no selector."""
    if num_images < 1:
        raise ValueError(f"num_images must be at least 1, got {num_images}.")
    if trainer.distillation_model.distiller.selecting_part() is None:
        return None
    if trainer.processing_class is None:
        raise ValueError("add_training_weights_record: the trainer has no image processor to prepare the images.")
    # Lazy: an image is decoded only when the callback reads it, at the end of training.
    processed = DetectionTransform(trainer.processing_class, train=False).apply_to(train_dataset)
    callback = TrainingWeightsCallback(
        dataset=processed, data_collator=trainer.data_collator, num_images=num_images, batch_size=batch_size
    )
    trainer.add_callback(callback)
    return callback


def add_selector_pictures(trainer: Any, *, num_images: int = 6) -> SelectorWeightsCallback | None:
    """Add a `SelectorWeightsCallback` on the first `num_images` eval images (with instances) to a
    `LIAFDistillationTrainer` whose method can select, sharing the trainer's TensorBoard writer when it
    logs to TensorBoard. Returns the callback, or None (nothing added) when the method has no selector or
    the trainer has no eval dataset, image processor or eval image with an instance (with a warning)."""
    if num_images < 1:
        raise ValueError(f"num_images must be at least 1, got {num_images}.")
    if trainer.distillation_model.distiller.selecting_part() is None:
        return None
    dataset = trainer.eval_dataset
    if isinstance(dataset, Mapping):
        dataset = next(iter(dataset.values()), None)
    if dataset is None or trainer.processing_class is None:
        logger.warning("The selector weights are not drawn: the trainer has no eval dataset or image processor.")
        return None
    tensorboard = next(
        (callback for callback in trainer.callback_handler.callbacks if isinstance(callback, TensorBoardCallback)), None
    )
    try:
        callback = SelectorWeightsCallback.from_dataset(
            dataset,
            trainer.data_collator,
            trainer.processing_class,
            num_images=num_images,
            tensorboard_writer=(lambda: tensorboard.tb_writer) if tensorboard is not None else None,
        )
    except ValueError as error:
        # Pictures are a view on the run, not a reason to stop it.
        logger.warning("The selector weights are not drawn: %s", error)
        return None
    trainer.add_callback(callback)
    return callback
