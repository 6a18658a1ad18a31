"""Publishing a trained or distilled detector on the Hugging Face Hub: exactly the model, nothing of its run.

An output directory holds more than the model: `training_args.bin`, `trainer_state.json`, `*_results.json`,
`summary.json`, `checkpoint-*/` (with `distiller.safetensors`, optimizer and RNG states), log folders.
`transformers.Trainer.push_to_hub` uploads all of it except names starting with "_" or "checkpoint-",
replaces `README.md` with its own generated card, and with `args.push_to_hub` set it also pushes the output
directory at every checkpoint save. `push_student` uploads only what a user of the model needs: the
weights, `config.json`, `preprocessor_config.json`, the `README.md` model card and the model code that
`trust_remote_code=True` runs. The example scripts switch the Trainer's own pushing off
(`take_over_push_to_hub`) and call `push_student` once the card is written.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from huggingface_hub import HfApi
from transformers.utils import CONFIG_NAME

from ..errors import LiafError
from .model_card import CARD_NAME
from .saved_folder import PROCESSOR_CONFIG_NAME, check_saved_detector, code_files, weight_files


@dataclass(frozen=True)
class HubTarget:
    """Where to publish: the `hub_*` settings of a `TrainingArguments`."""

    repo_id: str
    token: str | None = None
    private: bool | None = None
    revision: str | None = None

    def push(self, student_dir: str | os.PathLike, **kwargs: Any) -> Any:
        """`push_student(student_dir, ...)` to this target; `kwargs` as `push_student` takes them."""
        return push_student(
            student_dir, self.repo_id, token=self.token, private=self.private, revision=self.revision, **kwargs
        )


def upload_file_names(student_dir: str | os.PathLike) -> list[str]:
    """The files of `student_dir` that are published, sorted: `README.md`, `config.json`,
    `preprocessor_config.json`, the weights (`model.safetensors`, or the shard index and its shards) and the
    model code `trust_remote_code=True` loads (`configuration_gfl.py`, `modeling_gfl.py`,
    `loss_gfl.py`, `image_processing_gfl.py`).

    Example:
        >>> upload_file_names("runs/student-liaf")  # doctest: +SKIP
        ['README.md', 'config.json', 'configuration_gfl.py', 'image_processing_gfl.py', 'loss_gfl.py',
         'model.safetensors', 'modeling_gfl.py', 'preprocessor_config.json']

    Raises:
        LiafError: `student_dir` is not a saved GFL detector, has no model card, or its configs name no model
            code (it could not be loaded with `trust_remote_code=True`).
    """
    student_dir = Path(student_dir)
    check_saved_detector(student_dir)
    if not (student_dir / CARD_NAME).is_file():
        raise LiafError(
            f"{student_dir} has no {CARD_NAME} model card; write it first with "
            "liaf_hf.hub.write_model_card (the example scripts do this after evaluation)."
        )
    code = code_files(student_dir)
    if not code:
        raise LiafError(
            f"{student_dir / CONFIG_NAME} has no auto_map, so the model could not be loaded with "
            "trust_remote_code=True; save it from a process that imported liaf_hf."
        )
    return sorted({CARD_NAME, CONFIG_NAME, PROCESSOR_CONFIG_NAME, *weight_files(student_dir), *code})


def prepare_upload_folder(student_dir: str | os.PathLike, *, destination: str | os.PathLike) -> Path:
    """Fill the new folder `destination` with exactly the files to publish from `student_dir`
    (`upload_file_names`), hard-linked where the file system allows, copied otherwise.

    Example:
        >>> folder = prepare_upload_folder("runs/student-liaf", destination="upload/student-liaf")  # doctest: +SKIP
        >>> sorted(path.name for path in folder.iterdir())  # doctest: +SKIP
        ['README.md', 'config.json', 'configuration_gfl.py', ...]

    Raises:
        LiafError: `destination` exists, or `student_dir` cannot be published (see `upload_file_names`).
    """
    student_dir, destination = Path(student_dir), Path(destination)
    names = upload_file_names(student_dir)
    if destination.exists():
        raise LiafError(f"Upload folder {destination} already exists; give a path that does not.")
    destination.mkdir(parents=True)
    for name in names:
        try:
            os.link(student_dir / name, destination / name)
        except OSError:  # another file system, or links not supported
            shutil.copy2(student_dir / name, destination / name)
    return destination


def push_student(
    student_dir: str | os.PathLike,
    repo_id: str,
    *,
    token: str | None = None,
    private: bool | None = None,
    revision: str | None = None,
    commit_message: str = "Upload GFL detector",
    delete_other_files: bool = False,
) -> Any:
    """Create the Hub model repository `repo_id` if needed and upload the detector in `student_dir` to it:
    exactly the files `upload_file_names` lists.

    Args:
        student_dir: a saved GFL detector with its model card (`README.md`).
        repo_id: "user/name", or a bare name for the token owner's namespace.
        token: a Hub token with write access; by default the logged-in user's.
        private: make a new repository private (no effect on an existing one).
        revision: the branch to commit to; by default the main branch.
        commit_message: the commit's message.
        delete_other_files: also delete every file of the repository not in this upload (except
            `.gitattributes`), e.g. a `training_args.bin` an earlier `Trainer.push_to_hub` left there.

    Returns:
        The `huggingface_hub.CommitInfo` of the upload.

    Example:
        >>> push_student("runs/student-liaf", "me/gfl-r18-liaf")  # doctest: +SKIP
        CommitInfo(commit_url='https://huggingface.co/me/gfl-r18-liaf/commit/...', ...)

    Raises:
        LiafError: `student_dir` cannot be published (see `upload_file_names`), checked before any network call.
    """
    api = HfApi(token=token)
    with tempfile.TemporaryDirectory(prefix="liaf-hf-upload-") as staging:
        folder = prepare_upload_folder(student_dir, destination=Path(staging) / "model")
        repo_url = api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
        return api.upload_folder(
            repo_id=repo_url.repo_id,
            folder_path=folder,
            repo_type="model",
            revision=revision,
            commit_message=commit_message,
            delete_patterns="*" if delete_other_files else None,
        )


def take_over_push_to_hub(training_args: Any) -> HubTarget | None:
    """Where `--push_to_hub` asks the model to be published, with the Trainer's own pushing switched off.

    With `training_args.push_to_hub` set, `transformers.Trainer` would create the repository when it is
    built, push the whole output directory at every checkpoint save and at `save_model`, and overwrite the
    model card. This returns the target (`hub_model_id`, or the output directory's name as the Trainer
    uses it, with `hub_token`, `hub_private_repo`, `hub_revision`) and sets `training_args.push_to_hub` to
    False, so the caller publishes with `push_student` once the card is written. Call it before building
    the Trainer.

    Example:
        >>> target = take_over_push_to_hub(training_args)  # doctest: +SKIP
        >>> trainer = Trainer(model=model, args=training_args, ...)  # doctest: +SKIP
        >>> trainer.train(); trainer.save_model()  # doctest: +SKIP
        >>> if target:  # doctest: +SKIP
        ...     target.push(training_args.output_dir)

    Returns:
        The target, or None when `push_to_hub` is not set.
    """
    if not training_args.push_to_hub:
        return None
    training_args.push_to_hub = False
    return HubTarget(
        repo_id=training_args.hub_model_id or Path(training_args.output_dir).absolute().name,
        token=training_args.hub_token,
        private=training_args.hub_private_repo,
        revision=training_args.hub_revision,
    )


__all__ = ["HubTarget", "prepare_upload_folder", "push_student", "take_over_push_to_hub", "upload_file_names"]
