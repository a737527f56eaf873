"""What a model source names: an HF folder, a GGUF file, or an embedded model's name."""

from __future__ import annotations

import difflib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from hooklab.errors import MissingConfigError, ModelNotFoundError, UnknownModelError
from hooklab.loading.embedded import EMBEDDED, embedded_folder


@dataclass(frozen=True)
class Source:
    """A resolved source: ``path`` is an HF folder (``kind="hf"``) or a ``.gguf`` file."""

    kind: Literal["hf", "gguf"]
    path: Path
    name: str


def resolve_source(source: str | os.PathLike) -> Source:
    """Turn what the user passed into a local folder or GGUF file, fetching the default if named."""
    if not isinstance(source, (str, os.PathLike)):
        raise UnknownModelError(
            f"the model source is {source!r} ({type(source).__name__}); pass a folder path "
            f"(config.json + *.safetensors), a .gguf file, or a known name ({', '.join(sorted(EMBEDDED))})."
        )
    text = os.fspath(source)
    if isinstance(source, str) and text.lower() in EMBEDDED:
        return Source("hf", embedded_folder(EMBEDDED[text.lower()]), text.lower())
    path = Path(text).expanduser()
    if not path.exists():
        if _looks_like_name(text):
            close = difflib.get_close_matches(text.lower(), EMBEDDED, n=1)
            hint = f"Did you mean '{close[0]}'? " if close else ""
            raise UnknownModelError(
                f"'{text}' is not a model hooklab knows and not an existing path. {hint}Known names: "
                f"{', '.join(sorted(EMBEDDED))}. hooklab never downloads from a model hub: pass "
                "a local folder (config.json + *.safetensors) or a .gguf file."
            )
        raise ModelNotFoundError(
            f"{path} does not exist. Pass the folder that holds config.json and the "
            "*.safetensors files, or a .gguf file (hooklab reads local files only, never a model "
            "hub); check the path for typos."
        )
    if path.is_file():
        if path.suffix == ".gguf":
            return Source("gguf", path, path.name)
        raise MissingConfigError(
            f"{path} is a file; hooklab loads a folder (config.json + *.safetensors) or a .gguf "
            f"file. Pass its folder, {path.parent}, instead."
        )
    if not (path / "config.json").is_file() and len(ggufs := sorted(path.glob("*.gguf"))) == 1:
        return Source("gguf", ggufs[0], ggufs[0].name)
    return Source("hf", path, path.name)


def _looks_like_name(text: str) -> bool:
    return not any(sep in text for sep in ("/", os.sep, "~")) and not text.startswith(".") and "." not in text
