"""What a saved GFL detector folder holds, and the checks that it holds it.

A saved detector is a directory written by `save_pretrained` (of the model and its image processor):
`config.json` with `model_type` "gfl", the weights (`model.safetensors`, or shards with their index) and
`preprocessor_config.json`, and the model code that `trust_remote_code=True` runs. Loading, the model card, the
upload and the export all start from such a folder; everything here refuses anything else with a `LiafError`
naming the file and what is wrong, before transformers would fail with a less direct message.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from transformers.dynamic_module_utils import get_relative_import_files
from transformers.utils import CONFIG_NAME, SAFE_WEIGHTS_INDEX_NAME, SAFE_WEIGHTS_NAME

from ..errors import LiafError
from ..models.gfl.configuration_gfl import GFLConfig

PROCESSOR_CONFIG_NAME = "preprocessor_config.json"


def read_json_object(path: Path) -> dict[str, Any]:
    """The JSON object in `path`; a `LiafError` naming the file when it is missing, malformed or not an object."""
    if not path.is_file():
        raise LiafError(f"{path} does not exist.")
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise LiafError(f"{path} is not valid JSON: {error}") from error
    if not isinstance(value, dict):
        raise LiafError(f"{path} must hold a JSON object, got {type(value).__name__}.")
    return value


def weight_files(directory: str | os.PathLike) -> list[str]:
    """Names of the weight files of the saved model in `directory`: `model.safetensors`, or the shard index
    `model.safetensors.index.json` and every shard it names.

    Raises:
        LiafError: no weights, or a shard the index names is missing.
    """
    directory = Path(directory)
    if (directory / SAFE_WEIGHTS_NAME).is_file():
        return [SAFE_WEIGHTS_NAME]
    index_path = directory / SAFE_WEIGHTS_INDEX_NAME
    if not index_path.is_file():
        raise LiafError(f"{directory} has no weights: expected {SAFE_WEIGHTS_NAME} or {SAFE_WEIGHTS_INDEX_NAME}.")
    weight_map = read_json_object(index_path).get("weight_map")
    if not isinstance(weight_map, dict) or not weight_map:
        raise LiafError(f"{index_path}: 'weight_map' must be a non-empty object naming the shard of every weight.")
    shards = sorted(set(weight_map.values()))
    missing = [shard for shard in shards if not (directory / shard).is_file()]
    if missing:
        raise LiafError(f"{index_path} names shards that are not in {directory}: {missing}.")
    return [SAFE_WEIGHTS_INDEX_NAME, *shards]


def code_files(directory: str | os.PathLike) -> list[str]:
    """Names of the Python files in `directory` that loading with `trust_remote_code=True` runs: the modules
    named in the `auto_map` of `config.json` and `preprocessor_config.json`, and every file they import
    relatively. Empty when neither config has an `auto_map`.

    Example:
        >>> code_files("runs/r18")  # doctest: +SKIP
        ['configuration_gfl.py', 'image_processing_gfl.py', 'loss_gfl.py', 'modeling_gfl.py']

    Raises:
        LiafError: a file the `auto_map` or an import names is not in `directory`.
    """
    directory = Path(directory)
    modules = []
    for name in (CONFIG_NAME, PROCESSOR_CONFIG_NAME):
        if not (directory / name).is_file():
            continue
        for value in (read_json_object(directory / name).get("auto_map") or {}).values():
            for reference in value if isinstance(value, (list, tuple)) else [value]:
                # "repo--module.Class" names code in another repository; None marks an absent tokenizer class.
                if reference and "--" not in reference:
                    modules.append((name, reference.rsplit(".", 1)[0] + ".py"))
    files = set()
    for config_name, module in modules:
        if not (directory / module).is_file():
            raise LiafError(f"{directory / config_name}: auto_map names {module}, which is not in {directory}.")
        files.add(module)
        for imported in get_relative_import_files(directory / module):
            if not Path(imported).is_file():
                raise LiafError(f"{directory / module} imports {Path(imported).name}, which is not in {directory}.")
            files.add(Path(imported).name)
    return sorted(files)


def check_saved_detector(directory: str | os.PathLike) -> dict[str, Any]:
    """Check that `directory` holds a saved GFL detector and return its `config.json` as a dict.

    Example:
        >>> config = check_saved_detector("runs/r18")  # doctest: +SKIP
        >>> config["backbone"]  # doctest: +SKIP
        'resnet18'

    Raises:
        LiafError: the directory does not exist, or its config, weights or image processor config is
            missing or is not a GFL detector's; the message names the file and the field.
    """
    directory = Path(directory)
    if not directory.is_dir():
        raise LiafError(f"{directory} is not a directory; expected a saved GFL detector (config.json, weights).")
    config_path = directory / CONFIG_NAME
    if not config_path.is_file():
        raise LiafError(f"{directory} is not a saved GFL detector: it has no {CONFIG_NAME}.")
    config = read_json_object(config_path)
    model_type = config.get("model_type")
    if model_type != GFLConfig.model_type:
        raise LiafError(
            f"{config_path}: model_type is {model_type!r}, expected {GFLConfig.model_type!r} (a GFL detector)."
        )
    weight_files(directory)
    if not (directory / PROCESSOR_CONFIG_NAME).is_file():
        raise LiafError(
            f"{directory} has no {PROCESSOR_CONFIG_NAME}: save the image processor beside the model "
            "(GFLImageProcessor.save_pretrained) so images are resized and post-processed as in training."
        )
    return config


__all__ = ["PROCESSOR_CONFIG_NAME", "check_saved_detector", "code_files", "read_json_object", "weight_files"]
