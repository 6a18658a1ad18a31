"""Checks on a checkpoint before a run resumes from it: safetensors weights only, and every file it reads intact.

A truncated or corrupt file would otherwise fail part way into resuming with the deserialiser's own message,
which names no file (and, for pickles, advises `weights_only=False`).
"""

from __future__ import annotations

import json
import os
import pickle
import re
import zipfile
from pathlib import Path

import torch
from safetensors import safe_open
from transformers.trainer import TRAINER_STATE_NAME
from transformers.trainer_pt_utils import safe_globals
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR
from transformers.utils import SAFE_WEIGHTS_NAME

from ..errors import DataError


def require_safetensors_checkpoint(checkpoint: str | os.PathLike, *, what: str = "Checkpoint") -> None:
    """Refuse a checkpoint (or, with `what`, another saved model such as a teacher) whose weights are not in
    `model.safetensors`: a pickled `pytorch_model.bin` can run code when loaded, and a run of this library
    never writes one."""
    if not os.path.isfile(os.path.join(checkpoint, SAFE_WEIGHTS_NAME)):
        found = sorted(os.listdir(checkpoint)) if os.path.isdir(checkpoint) else "no such directory"
        raise ValueError(
            f"{what} {checkpoint} has no {SAFE_WEIGHTS_NAME} (found: {found}); only safetensors weights are "
            "loaded, never pickled files such as pytorch_model.bin."
        )


def check_checkpoint(checkpoint: str | os.PathLike) -> None:
    """Refuse, before the first step, a checkpoint that cannot be resumed: weights not in `model.safetensors`
    (`require_safetensors_checkpoint`), no `trainer_state.json`, or a file that resuming reads and that is
    truncated or corrupt. Every `*.safetensors` file is read tensor by tensor, every `*.pt`/`*.pth` file
    (optimizer, scheduler, grad scaler, RNG states) is loaded as the Trainer loads it (weights only), every
    `*.json` file is parsed. Without this the run fails part way into resuming, with the deserialiser's own
    message, which names no file.

    Raises:
        ValueError: the weights are not in `model.safetensors`.
        DataError: naming the damaged or missing file, and the earlier checkpoints beside this one to resume from
            instead.
    """
    require_safetensors_checkpoint(checkpoint)
    checkpoint = Path(checkpoint)
    if not (checkpoint / TRAINER_STATE_NAME).is_file():
        raise DataError(
            f"Checkpoint {checkpoint} has no {TRAINER_STATE_NAME}, which resuming reads (the step, the logs): "
            f"it is not a complete checkpoint. {_earlier_checkpoints_advice(checkpoint)}"
        )
    for path in sorted(checkpoint.iterdir()):
        problem = _unreadable(path)
        if problem is not None:
            raise DataError(
                f"{path} is truncated or corrupt ({problem}), so checkpoint {checkpoint} cannot be resumed. "
                + _earlier_checkpoints_advice(checkpoint)
            )


def _unreadable(path: Path) -> str | None:
    """Why the checkpoint file `path` cannot be read as resuming reads it; None when it can, or is not read."""
    try:
        if path.suffix == ".safetensors":
            with safe_open(path, framework="pt") as weights:
                for name in weights.keys():
                    weights.get_tensor(name)
        elif path.suffix in (".pt", ".pth"):
            if not zipfile.is_zipfile(path):
                # What torch.load says of such a file is about its legacy formats and weights_only=False.
                return "not the zip archive torch.save writes"
            with safe_globals():
                torch.load(path, map_location="cpu", weights_only=True)
        elif path.suffix == ".json":
            if not isinstance(json.loads(path.read_text(encoding="utf-8")), dict):
                return "not a JSON object"
    except pickle.UnpicklingError:
        # Its message advises weights_only=False, which would run whatever code the file holds.
        return "not a file the Trainer saved: it does not load as plain tensors and numbers"
    except Exception as error:  # whatever a deserialiser raises on bad bytes: the file cannot be used
        details = (str(error).strip().splitlines() or ["no details"])[0][:200]
        return f"{type(error).__name__}: {details}"
    return None


def _earlier_checkpoints_advice(checkpoint: Path) -> str:
    """Which checkpoints beside `checkpoint` (`checkpoint-<step>` with a smaller step) to resume from instead."""
    step = _checkpoint_step(checkpoint)
    steps = {sibling: _checkpoint_step(sibling) for sibling in checkpoint.parent.iterdir() if sibling.is_dir()}
    earlier = sorted(
        (sibling for sibling, other in steps.items() if step is not None and other is not None and other < step),
        key=steps.get,
        reverse=True,
    )
    if not earlier:
        return "There is no earlier checkpoint beside it: start the run again without --resume_from_checkpoint."
    return (
        f"Resume from an earlier checkpoint instead: --resume_from_checkpoint {earlier[0]} (in that folder: "
        f"{', '.join(path.name for path in earlier)})."
    )


def _checkpoint_step(path: Path) -> int | None:
    """The step of a `checkpoint-<step>` folder; None for any other name."""
    match = re.fullmatch(rf"{PREFIX_CHECKPOINT_DIR}-(\d+)", path.name)
    return int(match.group(1)) if match else None
