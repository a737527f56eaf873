"""Data → batches of token rows: a text file read lazily, a list of strings, or token ids.

Two ways to cut text into rows of at most ``max_length`` tokens:

- **packed** (default for a text file and for 1-D token ids): documents are tokenized in
  chunks, joined with the tokenizer's end-of-sequence token and cut into full rows. No compute
  is spent on padding, every batch has the same shape, and a token budget is met exactly; a
  row may span two documents (as in language-model pretraining).
- **one row per document** (default for a list of strings and 2-D token ids): each document
  is truncated to ``max_length`` and batches are right-padded. Padding is never collected and,
  the models being causal, never changes a real token's activations. ``positions="last"`` then
  means each document's last token, and a row's ``sequence`` is its index in the list.

A text file's documents are its non-blank lines (WikiText: one paragraph or heading a line).
"""

from __future__ import annotations

import hashlib
import os
import queue
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from jaxtyping import Int
from torch import Tensor

from hooklab.errors import CollectArgumentError, CorpusEncodingError, EmptyCorpusError

Data = str | os.PathLike | Sequence[str] | Tensor
DEFAULT_PACKED_LENGTH = 512
_TOKENIZE_CHUNK = 256  # documents per tokenizer call: long enough for the fast tokenizer's threads


@dataclass(frozen=True)
class Batch:
    """Right-padded token rows; row ``b`` holds ``lengths[b]`` real tokens of sequence ``sequences[b]``."""

    tokens: Int[Tensor, "batch pos"]
    lengths: Int[Tensor, " batch"]
    sequences: Int[Tensor, " batch"]

    @property
    def n_tokens(self) -> int:
        return int(self.lengths.sum())


class Corpus:
    """Batches of token rows from a text file, a list of strings, or token ids (see the module doc).

    Iterating yields the same batches every time, which is what lets a collection resume.
    """

    def __init__(
        self,
        data: Data,
        tokenizer: Any,
        *,
        batch_size: int,
        max_length: int | None,
        pack: bool | None,
        max_tokens: int | None,
        context_length: int,
    ) -> None:
        if batch_size < 1:
            raise CollectArgumentError(f"batch_size must be at least 1, got {batch_size}")
        if max_tokens is not None and max_tokens < 1:
            raise CollectArgumentError(f"max_tokens must be at least 1 (or None for all), got {max_tokens}")
        self.tokenizer = tokenizer
        self.batch_size = batch_size
        self.max_tokens = max_tokens
        self._texts_ids: list[list[int]] | None = None
        if isinstance(data, Tensor):
            self.kind = "tokens"
            if data.dim() not in (1, 2) or data.is_floating_point() or data.is_complex():
                raise CollectArgumentError(
                    f"token ids must be an integer tensor of shape (n_tokens,) or (n_sequences, pos), "
                    f"got {data.dtype} of shape {tuple(data.shape)}."
                )
            self.data = data.detach().cpu().long()
            default_pack = data.dim() == 1
        elif isinstance(data, (str, os.PathLike)):
            self.kind = "file"
            self.data = Path(data)
            if not self.data.is_file():
                raise CollectArgumentError(
                    f"{self.data} is not a file. Pass a text file's path, a list of strings or a token tensor."
                )
            default_pack = True
        elif isinstance(data, Sequence) and all(isinstance(d, str) for d in data):
            self.kind = "texts"
            self.data = list(data)
            default_pack = False
        else:
            raise CollectArgumentError(
                f"cannot read data of type {type(data).__name__}; pass a text file's path, "
                "a list of strings or a tensor of token ids."
            )
        self.pack = default_pack if pack is None else bool(pack)
        if max_length is None:
            max_length = DEFAULT_PACKED_LENGTH if self.pack else context_length
        if max_length < 1:
            raise CollectArgumentError(f"max_length must be at least 1, got {max_length}")
        self.max_length = min(max_length, context_length)
        self._check_not_empty()

    @property
    def n_tokens(self) -> int | None:
        """Tokens that will run, or an upper bound (a file's ``max_tokens``); None if unknown."""
        if self.kind == "file":
            return self.max_tokens
        if self.kind == "tokens":
            total = self.data.numel() if self.pack else self.data.shape[0] * min(self.data.shape[1], self.max_length)
        else:
            total = sum(len(ids) for _, ids in self._rows())
        return total if self.max_tokens is None else min(total, self.max_tokens)

    def digest(self) -> str:
        """A digest of the data and of the tokenizer that turns it into tokens."""
        h = hashlib.sha256(f"{self.kind}\n".encode())
        if self.kind == "tokens":
            h.update(f"{tuple(self.data.shape)}\n".encode())
            h.update(self.data.numpy().tobytes())
            return h.hexdigest()[:32]
        if self.kind == "file":
            with open(self.data, "rb") as f:
                while chunk := f.read(1 << 24):
                    h.update(chunk)
        else:
            for text in self.data:
                h.update(len(text.encode()).to_bytes(8, "little") + text.encode())
        h.update(tokenizer_digest(self.tokenizer).encode())
        return h.hexdigest()[:32]

    def __iter__(self) -> Iterator[Batch]:
        yield from _batches(self._rows(), self.batch_size, self.max_tokens, self._pad)

    # -- rows -----------------------------------------------------------------------------

    @property
    def _eos(self) -> int | None:
        return self.tokenizer.eos_token_id if self.tokenizer is not None else None

    @property
    def _pad(self) -> int:
        tok = self.tokenizer
        for candidate in (getattr(tok, "pad_token_id", None), getattr(tok, "eos_token_id", None)):
            if candidate is not None:
                return candidate
        return 0

    def _lines(self) -> Iterator[str]:
        with open(self.data, encoding="utf-8") as f:
            try:
                for number, line in enumerate(f, 1):
                    if "\0" in line:
                        raise CorpusEncodingError(
                            f"{self.data} holds NUL bytes (line {number}): it is binary, not text. Pass a UTF-8 "
                            "text file (one document a line), a list of strings or a tensor of token ids."
                        )
                    if line.strip():
                        yield line.rstrip("\n")
            except UnicodeDecodeError:
                raise CorpusEncodingError(
                    f"{self.data} is not UTF-8 text ({_first_undecodable(self.data)}). Convert it to UTF-8 "
                    "(e.g. iconv -f latin1 -t utf-8), or pass a list of strings or a tensor of token ids."
                ) from None

    def _token_lists(self) -> Iterator[list[int]]:
        """Each document's token ids, tokenized in chunks as they are needed."""
        if self.kind == "tokens":
            yield from (row.tolist() for row in self.data) if self.data.dim() == 2 else [self.data.tolist()]
            return
        if self.kind == "texts":  # in memory already: tokenized once, kept for every pass
            if self._texts_ids is None:
                self._texts_ids = self.tokenizer(self.data, add_special_tokens=True).input_ids if self.data else []
            yield from self._texts_ids
            return
        chunk: list[str] = []
        for doc in self._lines():
            chunk.append(doc)
            if len(chunk) == _TOKENIZE_CHUNK:
                yield from self.tokenizer(chunk, add_special_tokens=True).input_ids
                chunk = []
        if chunk:
            yield from self.tokenizer(chunk, add_special_tokens=True).input_ids

    def _rows(self) -> Iterator[tuple[int, list[int]]]:
        return self._packed_rows() if self.pack else self._document_rows()

    def _document_rows(self) -> Iterator[tuple[int, list[int]]]:
        for index, ids in enumerate(self._token_lists()):
            if ids:  # an empty string has no token to collect; its index is kept for the others
                yield index, ids[: self.max_length]

    def _packed_rows(self) -> Iterator[tuple[int, list[int]]]:
        separator = [self._eos] if self._eos is not None and self.kind != "tokens" else []
        stream: list[int] = []
        row, start, n = 0, 0, self.max_length
        for ids in self._token_lists():
            stream.extend(ids)
            stream.extend(separator)
            while len(stream) - start >= n:
                yield row, stream[start : start + n]
                start += n
                row += 1
            if start > n * 64:  # drop what has been cut, now and then: no quadratic copying
                del stream[:start]
                start = 0
        if len(stream) > start:
            yield row, stream[start:]

    def _check_not_empty(self) -> None:
        if next(iter(self), None) is None:
            raise EmptyCorpusError(
                f"the data ({self.kind}) holds no tokens: {self._describe()} Give at least one non-empty text."
            )

    def _describe(self) -> str:
        if self.kind == "file":
            return f"{self.data} has no non-blank line."
        if self.kind == "texts":
            return f"the list has {len(self.data)} string(s), all empty."
        return f"the tensor has shape {tuple(self.data.shape)}."


def _first_undecodable(path: Path) -> str:
    """Where a file first fails to decode as UTF-8 (a newline byte never occurs inside a UTF-8 character)."""
    offset = 0
    with open(path, "rb") as f:
        for number, raw in enumerate(f, 1):
            try:
                raw.decode("utf-8")
            except UnicodeDecodeError as e:
                return f"line {number}, byte {offset + e.start}: {e.reason}"
            offset += len(raw)
    return "it does not decode"


def _batches(
    rows: Iterator[tuple[int, list[int]]], batch_size: int, max_tokens: int | None, pad: int
) -> Iterator[Batch]:
    """Group rows into right-padded batches, stopping after ``max_tokens`` tokens."""
    budget = max_tokens if max_tokens is not None else float("inf")
    group: list[tuple[int, list[int]]] = []
    for sequence, ids in rows:
        if budget <= 0:
            break
        ids = ids[: int(min(len(ids), budget))]
        budget -= len(ids)
        group.append((sequence, ids))
        if len(group) == batch_size:
            yield _pad(group, pad)
            group = []
    if group:
        yield _pad(group, pad)


def _pad(group: list[tuple[int, list[int]]], pad: int) -> Batch:
    width = max(len(ids) for _, ids in group)
    tokens = np.full((len(group), width), pad, dtype=np.int64)
    for b, (_, ids) in enumerate(group):
        tokens[b, : len(ids)] = ids
    return Batch(
        tokens=torch.from_numpy(tokens),
        lengths=torch.tensor([len(ids) for _, ids in group]),
        sequences=torch.tensor([sequence for sequence, _ in group]),
    )


def tokenizer_digest(tokenizer: Any) -> str:
    """A digest of what a tokenizer does: its full definition where it has one, else its vocabulary."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    text = backend.to_str() if backend is not None else repr(sorted(tokenizer.get_vocab().items()))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def prefetched(batches: Iterator[Batch], depth: int = 2, pin: bool = False) -> Iterator[Batch]:
    """Iterate ``batches`` from a background thread, ``depth`` ahead, so tokenizing overlaps the forward.

    With ``pin``, token ids are put in page-locked memory for asynchronous copies to a GPU.
    """
    done = object()
    q: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def put(item: object) -> bool:
        """Queue ``item`` unless the consumer has gone; False once it has."""
        while not stop.is_set():
            try:
                q.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def produce() -> None:
        try:
            for batch in batches:
                if pin:
                    batch = Batch(batch.tokens.pin_memory(), batch.lengths, batch.sequences)
                if not put(batch):
                    return
            put(done)
        except BaseException as e:  # handed to the consumer, raised there
            put(e)

    thread = threading.Thread(target=produce, name="hooklab-corpus", daemon=True)
    thread.start()
    try:
        while (item := q.get()) is not done:
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
        thread.join()
