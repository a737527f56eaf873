"""The result of a collection: per-token activations by hook name, like TransformerLens's cache.

Each hook's activations are one tensor with a row per collected token, ``(n, *shape)``; the
index says where each row came from (sequence, position, token id). From an ``out`` folder,
every tensor is a copy-on-write memory map of its file: opening costs nothing, reading pages
in only what is touched, and writing to a tensor never changes the file.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping
from pathlib import Path

import numpy as np
import torch
from jaxtyping import Int
from torch import Tensor

from hooklab.cache.manifest import DTYPES, HEADER_BYTES, INDEX, check_files, describe, read_manifest
from hooklab.errors import CorruptActivationsError


class Activations(Mapping[str, Tensor]):
    """Activations by hook name, one row per collected token.

    Example:
        >>> acts = hooklab.collect(model, "corpus.txt", layers=[5, 6], out="acts/", max_tokens=10_000)
        >>> acts["blocks.5.hook_resid_post"].shape      # (10000, 576), memory-mapped
        >>> acts.tokens[:8], acts.sequence[:8], acts.position[:8]
        >>> acts = hooklab.Activations.load("acts/")    # later, in another process
        >>> acts = hooklab.Activations.load("acts/", verify=True)  # every byte against its checksum
    """

    def __init__(self, tensors: dict[str, Tensor], index: Int[Tensor, "n 3"], path: Path | None = None) -> None:
        self._tensors = tensors
        self.index = index
        self.path = path

    @classmethod
    def load(cls, out: str | os.PathLike, verify: bool = False) -> Activations:
        """Open an ``out`` folder: its finished shards, memory-mapped (a collection still running shows its
        rows so far).

        Every file's length and header are checked against the manifest; ``verify`` also reads every
        byte against its shard's checksum. A damaged folder raises ``CorruptActivationsError``.
        """
        out = Path(out)
        manifest = read_manifest(out)
        damage = check_files(out, manifest, full=verify)
        if damage:
            raise CorruptActivationsError(describe(out, damage))
        tensors = {}
        for name, spec in manifest["streams"].items():
            rows = manifest["rows"].get(name, 0)
            tensors[name] = _memory_map(out / spec["file"], DTYPES[spec["dtype"]], (rows, *spec["shape"]))
        index = tensors.pop(INDEX, torch.zeros(0, 3, dtype=torch.int64))
        return cls(tensors, index, out)

    def __getitem__(self, name: str) -> Tensor:
        try:
            return self._tensors[name]
        except KeyError:
            raise KeyError(f"{name!r} was not collected; collected: {', '.join(self._tensors)}") from None

    def __iter__(self) -> Iterator[str]:
        return iter(self._tensors)

    def __len__(self) -> int:
        return len(self._tensors)

    @property
    def sequence(self) -> Int[Tensor, " n"]:
        """Each row's sequence: its index in a list of strings, or its row of a packed corpus."""
        return self.index[:, 0]

    @property
    def position(self) -> Int[Tensor, " n"]:
        """Each row's position in its sequence."""
        return self.index[:, 1]

    @property
    def tokens(self) -> Int[Tensor, " n"]:
        """Each row's token id."""
        return self.index[:, 2]

    @property
    def n_tokens(self) -> int:
        return self.index.shape[0]

    def __repr__(self) -> str:
        where = f" in {self.path}" if self.path else ""
        shapes = ", ".join(f"{k}: {tuple(v.shape)}" for k, v in list(self._tensors.items())[:3])
        more = f", ... ({len(self)} hooks)" if len(self) > 3 else ""
        return f"Activations({self.n_tokens} tokens{where}; {shapes}{more})"


def _memory_map(path: Path, dtype: torch.dtype, shape: tuple[int, ...]) -> Tensor:
    nbytes = int(np.prod(shape)) * dtype.itemsize
    if nbytes == 0:
        return torch.empty(shape, dtype=dtype)
    # mode "c": copy-on-write, so a tensor can be written in memory without touching the file.
    raw = np.memmap(path, dtype=np.uint8, mode="c", offset=HEADER_BYTES, shape=(nbytes,))
    return torch.from_numpy(raw).view(dtype).view(shape)
