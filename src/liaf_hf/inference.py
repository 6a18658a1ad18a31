"""Using a saved GFL detector: check that a directory holds one, load it, find images, detect objects.

A saved detector is a directory written by `save_pretrained` (of the model and its image processor):
`config.json` with `model_type` "gfl", the weights (`model.safetensors`, or shards with their index) and
`preprocessor_config.json`. Everything here refuses anything else with a `LiafError` naming the file and
what is wrong, before transformers would fail with a less direct message.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from transformers.dynamic_module_utils import get_relative_import_files
from transformers.utils import CONFIG_NAME, SAFE_WEIGHTS_INDEX_NAME, SAFE_WEIGHTS_NAME

from .data.images import read_image
from .errors import DataError, LiafError
from .models.gfl.configuration_gfl import GFLConfig
from .models.gfl.image_processing_gfl import GFLImageProcessor
from .models.gfl.modeling_gfl import GFLForObjectDetection

PROCESSOR_CONFIG_NAME = "preprocessor_config.json"

#: Image file extensions `find_images` picks up in a folder (lower case).
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp")


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
        ['configuration_gfl.py', 'image_processing_gfl.py', 'modeling_gfl.py']

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


def load_detector(
    directory: str | os.PathLike, *, device: str | torch.device = "cpu"
) -> tuple[GFLForObjectDetection, GFLImageProcessor]:
    """The saved detector in `directory` (in eval mode, on `device`) and its image processor.

    Example:
        >>> model, processor = load_detector("runs/r18")  # doctest: +SKIP
        >>> detections = detect(model, processor, [Image.open("street.jpg")], threshold=0.3)  # doctest: +SKIP

    Raises:
        LiafError: `directory` is not a saved GFL detector (see `check_saved_detector`).
    """
    check_saved_detector(directory)
    model = GFLForObjectDetection.from_pretrained(directory, use_safetensors=True).to(device).eval()
    processor = GFLImageProcessor.from_pretrained(directory)
    return model, processor


def find_images(paths: Sequence[str | os.PathLike]) -> list[Path]:
    """Image files named by `paths`: files as given, folders by their images (extensions in
    `IMAGE_EXTENSIONS`, not recursive, sorted by name).

    Raises:
        DataError: a path does not exist, or no image is found.
    """
    files: list[Path] = []
    for path in map(Path, paths):
        if path.is_dir():
            files.extend(sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS))
        elif path.is_file():
            files.append(path)
        else:
            raise DataError(f"{path} does not exist.")
    if not files:
        raise DataError(f"No images ({', '.join(IMAGE_EXTENSIONS)}) found in {', '.join(map(str, paths))}.")
    return files


def open_image(path: str | os.PathLike) -> Image.Image:
    """The image in `path` upright (EXIF orientation applied) as 8-bit RGB, read as the data loaders and
    transformers' pipeline read it (`liaf_hf.data.images.read_image`), so a detector sees the same pixels
    whichever way an image reaches it.

    Raises:
        DataError: naming the file when it is not a readable image, is too large for PIL's decompression-bomb
            limit, or has a pixel mode with no faithful RGB form.
    """
    return read_image(path)


@torch.no_grad()
def detect(
    model: GFLForObjectDetection,
    processor: GFLImageProcessor,
    images: Sequence[Image.Image],
    *,
    threshold: float = 0.3,
) -> list[dict[str, torch.Tensor]]:
    """Detections for each image, as `GFLImageProcessor.post_process_object_detection` gives them.

    Args:
        model: a GFL detector in eval mode.
        processor: its image processor.
        images: RGB images of any sizes (one batch).
        threshold: minimum score of a detection.

    Returns:
        One dict per image with `scores` (n,), `labels` (n,) and `boxes` (n, 4) absolute xyxy in pixels of that
        image, highest score first, on the CPU.

    Example:
        >>> [detections] = detect(model, processor, [Image.open("street.jpg")], threshold=0.3)  # doctest: +SKIP
        >>> detections["boxes"].shape  # doctest: +SKIP
        torch.Size([4, 4])
    """
    device = next(model.parameters()).device
    batch = processor(images=list(images), return_tensors="pt").to(device)
    outputs = model(**batch)
    detections = processor.post_process_object_detection(
        outputs, threshold=threshold, target_sizes=[(image.height, image.width) for image in images]
    )
    return [{key: value.cpu() for key, value in image.items()} for image in detections]


__all__ = [
    "IMAGE_EXTENSIONS",
    "PROCESSOR_CONFIG_NAME",
    "check_saved_detector",
    "code_files",
    "detect",
    "find_images",
    "load_detector",
    "open_image",
    "read_json_object",
    "weight_files",
]
