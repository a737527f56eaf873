"""What a merge reads from: a model's tensors by checkpoint name, one tensor at a time.

:class:`TensorSource` is the whole contract the merge loop relies on. Two kinds exist: a
checkpoint folder on disk (read tensor by tensor, never whole) and a loaded
:class:`~hooklab.HookedModel` (its weights as they are now). A further kind, say a base model
with saved edits applied, only has to implement the same few members.
"""

from __future__ import annotations

import math
import os
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import torch
from torch import Tensor
from tokenizers import Tokenizer
from transformers import AutoTokenizer, PretrainedConfig, PreTrainedModel

from hooklab.errors import MergeConfigError, MissingTokenizerError
from hooklab.loading.checkpoint import open_checkpoint
from hooklab.loading.skeleton import build_skeleton
from hooklab.loading.sources import resolve_source
from hooklab.loading.stream import TensorIO
from hooklab.loading.tensors import Wanted, match_tensors
from hooklab.model import HookedModel

# Files that describe the tokenizer and generation defaults, copied into the merged folder.
TOKENIZER_FILES = ("tokenizer*", "special_tokens_map.json", "added_tokens.json", "vocab.*", "merges.txt",
                   "*.model", "chat_template*", "generation_config.json")  # fmt: skip


@dataclass(frozen=True)
class TensorSpec:
    shape: tuple[int, ...]
    dtype: torch.dtype

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * self.dtype.itemsize


class TensorSource(Protocol):
    """A model to merge: config, tensor names and shapes, each tensor on demand, tokenizer."""

    label: str  # how messages name it
    key: tuple  # equal for two sources that are the same model
    config: PretrainedConfig

    def specs(self) -> dict[str, TensorSpec]:
        """Checkpoint name → shape and dtype of every tensor, in storage order."""
        ...

    def read(self, name: str, device: torch.device) -> Tensor:
        """Tensor ``name`` on ``device`` (callers never write to it)."""
        ...

    def vocab(self) -> dict[str, int]:
        """The tokenizer's vocabulary (raises MissingTokenizerError without one)."""
        ...

    def save_tokenizer(self, folder: Path) -> None:
        """Write the tokenizer (and generation config) into ``folder``."""
        ...

    def load(self, device: str) -> HookedModel:
        """The whole model, loaded for running it (LM-Cocktail's loss on examples)."""
        ...


class FolderSource:
    """A checkpoint folder (or ``"smollm2"``): headers read up front, tensors one by one on demand."""

    def __init__(self, source: str | os.PathLike, io: TensorIO, skeletons: dict[str, PreTrainedModel] | None = None):
        src = resolve_source(source)
        if src.kind != "hf":
            raise MergeConfigError(
                f"{src.path} is a GGUF file, which merges cannot stream from; load it with "
                f"`hooklab.load({str(src.path)!r})` and pass the loaded model instead."
            )
        checkpoint = open_checkpoint(src.path)
        self.root = src.path
        self.label = str(source)
        self.key = ("folder", src.path.resolve())
        self.config = checkpoint.config
        # Names as the model calls its parameters (the loader's matching: prefixes, tied weights),
        # from a meta-device skeleton shared by the sources of one config.
        skeletons = {} if skeletons is None else skeletons
        key = checkpoint.config.to_json_string()
        if key not in skeletons:
            skeletons[key] = build_skeleton(checkpoint.config, torch.float32)
        wanted = match_tensors(skeletons[key], checkpoint)
        self._wanted = {w.name: Wanted(w.name, w.key, w.entry, w.entry.dtype) for w in wanted}
        self._io = io
        self._tokenizer: Any = None

    def specs(self) -> dict[str, TensorSpec]:
        return {name: TensorSpec(w.entry.shape, w.entry.dtype) for name, w in self._wanted.items()}

    def read(self, name: str, device: torch.device) -> Tensor:
        return self._io.read(self._wanted[name], device)[1]

    def vocab(self) -> dict[str, int]:
        fast = self.root / "tokenizer.json"
        if fast.is_file():  # read by the tokenizers library directly: much quicker than AutoTokenizer
            try:
                return Tokenizer.from_file(str(fast)).get_vocab(with_added_tokens=True)
            except Exception as e:  # tokenizers raises plain Exception on a damaged file
                raise MissingTokenizerError(
                    f"{fast} is not a readable tokenizer ({e}), so the merge cannot check that the models "
                    "share a vocabulary; save the tokenizer again with `tokenizer.save_pretrained(folder)`."
                ) from e
        if self._tokenizer is None:
            try:
                self._tokenizer = AutoTokenizer.from_pretrained(self.root, local_files_only=True)
            except (OSError, ValueError, TypeError) as e:
                raise MissingTokenizerError(
                    f"{self.root} has no usable tokenizer ({e}), so the merge cannot check that the "
                    "models share a vocabulary or give the result one. Save one next to the weights "
                    "with `tokenizer.save_pretrained(folder)`."
                ) from e
        return self._tokenizer.get_vocab()

    def save_tokenizer(self, folder: Path) -> None:
        for pattern in TOKENIZER_FILES:
            for file in self.root.glob(pattern):
                if file.is_file():
                    shutil.copy2(file, folder / file.name)

    def load(self, device: str) -> HookedModel:
        from hooklab.loading.load import load

        return load(self.root, device=device)


class ModelSource:
    """A loaded HookedModel: its weights as they are now (edits included), wherever they live."""

    def __init__(self, model: HookedModel):
        self.model = model
        self.label = f"the loaded model {model.name!r}"
        self.key = ("model", id(model))
        self.config = model.hf_model.config
        self._weights = dict(model.named_weights())

    def specs(self) -> dict[str, TensorSpec]:
        return {name: TensorSpec(tuple(p.shape), p.dtype) for name, p in self._weights.items()}

    def read(self, name: str, device: torch.device) -> Tensor:
        return self._weights[name].detach().to(device)

    def vocab(self) -> dict[str, int]:
        return self.model.tokenizer.get_vocab()

    def save_tokenizer(self, folder: Path) -> None:
        self.model.tokenizer.save_pretrained(folder)
        generation = getattr(self.model.hf_model, "generation_config", None)
        if generation is not None:
            generation.save_pretrained(folder)

    def load(self, device: str) -> HookedModel:
        return self.model


def open_sources(
    items: Sequence[str | os.PathLike | HookedModel | TensorSource], io: TensorIO
) -> list[TensorSource]:
    """A TensorSource for each thing the user passed: a folder, ``"smollm2"``, a HookedModel, or a source."""
    skeletons: dict[str, PreTrainedModel] = {}
    out: list[TensorSource] = []
    for item in items:
        if isinstance(item, HookedModel):
            out.append(ModelSource(item))
        elif isinstance(item, (str, os.PathLike)):
            out.append(FolderSource(item, io, skeletons))
        elif all(hasattr(item, m) for m in ("specs", "read", "vocab", "save_tokenizer", "load", "config")):
            out.append(item)
        else:
            raise MergeConfigError(
                f"cannot merge a {type(item).__name__}; pass model folders, 'smollm2' or loaded HookedModels."
            )
    return out
