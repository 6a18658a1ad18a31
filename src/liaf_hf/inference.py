"""Using a saved GFL detector: load it (after `liaf_hf.hub.saved_folder` checks the folder), find images, detect
objects."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import torch
from PIL import Image

from .data.images import read_image
from .errors import DataError
from .hub.saved_folder import check_saved_detector
from .models.gfl.image_processing_gfl import GFLImageProcessor
from .models.gfl.modeling_gfl import GFLForObjectDetection

#: Image file extensions `find_images` picks up in a folder (lower case).
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp")


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
    "detect",
    "find_images",
    "load_detector",
    "open_image",
]
