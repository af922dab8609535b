"""Packages of heedful's optional extras (pyproject.toml), imported where they are used.

A module that needs one calls ``optional_import("soundfile", "reading audio")`` inside the
function that uses it, so importing the module costs nothing on a bare install, and a missing
package is a one-line ``MissingExtra`` naming what to install.
"""

from __future__ import annotations

import importlib
from types import ModuleType

from heedful.errors import UserError

# import name -> the extra that installs it
EXTRAS: dict[str, str] = {
    "soundfile": "speech",
    "soxr": "speech",
    "jiwer": "speech",
    "sklearn": "classify",
    "scipy": "classify",
    "tokenizers": "pretrained",
    "transformers": "bench",
    "fastapi": "serve",
    "uvicorn": "serve",
    "multipart": "serve",
    "onnx": "export",
    "onnxruntime": "export",
    "ctranslate2": "export",
}


class MissingExtra(UserError):
    """A package of one of heedful's optional extras is not installed."""


def install_hint(module: str) -> str:
    """``pip install 'heedful[speech]'`` for ``soundfile``: what installs the top-level package of ``module``."""
    top = module.split(".")[0]
    extra = EXTRAS.get(top)
    return f"pip install 'heedful[{extra}]'" if extra else f"pip install {top}"


def optional_import(module: str, purpose: str) -> ModuleType:
    """``importlib.import_module(module)``, or a ``MissingExtra``: '<purpose> needs <module>: pip install …'."""
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as exc:
        missing = exc.name or module
        if missing.split(".")[0] != module.split(".")[0]:
            raise  # the package is there but broken: a bug, keep the traceback
        raise MissingExtra(f"{purpose} needs {missing.split('.')[0]}: {install_hint(missing)}") from None
