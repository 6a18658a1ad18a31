"""The optional packages `liaf_hf.export` runs on, imported only when an export or a runner needs them, so the
library imports without them."""

from __future__ import annotations

import importlib
from types import ModuleType

from ..errors import LiafError

#: The packages of the `export` extra (`pip install "liaf-hf[export]"`), by import name.
EXPORT_PACKAGES = ("onnx", "onnxruntime", "onnxscript")


def require(name: str) -> ModuleType:
    """The module `name` of the `export` extra; a `LiafError` naming the extra when it is not installed."""
    try:
        return importlib.import_module(name)
    except ImportError as error:
        raise LiafError(
            f'liaf_hf.export needs {name!r}, which is not installed: pip install "liaf-hf[export]" '
            f"(installs {', '.join(EXPORT_PACKAGES)})."
        ) from error


__all__ = ["EXPORT_PACKAGES", "require"]
