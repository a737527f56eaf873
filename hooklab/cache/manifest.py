"""An activation folder's manifest, and the checks that its files still hold what it records.

The manifest is the only record of what is done (see ``store``): for every finished shard it
keeps each file's exact length once that shard was written and a CRC-32 of the bytes the shard
appended (computed as they were written). Readers and a resumed run check what they rely on:
cheaply by default (every file's length, and its header is the one hooklab writes for the
recorded rows), fully on request (every shard's checksum, which reads every byte).
"""

from __future__ import annotations

import json
import os
import zlib
from dataclasses import dataclass
from pathlib import Path

import torch

from hooklab.errors import CorruptActivationsError, OutputDirError

MANIFEST = "manifest.json"
FORMAT = "hooklab-activations/2"  # 2: per-shard file lengths and checksums
INDEX = "index"
HEADER_BYTES = 4096  # 8-byte length + JSON padded with spaces: data starts page-aligned
_SAFETENSORS_DTYPES = {
    torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16", torch.float64: "F64",
    torch.int64: "I64", torch.int32: "I32",
}  # fmt: skip
DTYPES = {str(dtype).removeprefix("torch."): dtype for dtype in _SAFETENSORS_DTYPES}
_CHUNK = 1 << 24


def stream_file(name: str) -> str:
    return f"{name}.safetensors"


def header_bytes(name: str, dtype: torch.dtype, shape: tuple[int, ...], rows: int) -> bytes:
    """The fixed-size safetensors header of a file holding ``rows`` rows of ``shape`` in ``dtype``."""
    row_bytes = dtype.itemsize * int(torch.Size(shape).numel())
    header = {
        "__metadata__": {"format": FORMAT},
        name: {"dtype": _SAFETENSORS_DTYPES[dtype], "shape": [rows, *shape], "data_offsets": [0, rows * row_bytes]},
    }
    text = json.dumps(header).encode()
    if len(text) > HEADER_BYTES - 8:
        raise OutputDirError(
            f"the header of {stream_file(name)} does not fit in {HEADER_BYTES} bytes; use a shorter hook name"
        )
    return (HEADER_BYTES - 8).to_bytes(8, "little") + text.ljust(HEADER_BYTES - 8, b" ")


def row_bytes(spec: dict) -> int:
    return DTYPES[spec["dtype"]].itemsize * int(torch.Size(spec["shape"]).numel())


def read_manifest(out: str | os.PathLike) -> dict:
    """The manifest of an activation folder (what was asked, what is done), checked to be whole."""
    out = Path(out)
    path = out / MANIFEST
    if not path.is_file():
        raise OutputDirError(f"{out} is not an activation folder: it has no {MANIFEST}.")
    try:
        manifest = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise OutputDirError(f"{path} is unreadable ({e}); delete {out} to start over.") from e
    fmt = manifest.get("format") if isinstance(manifest, dict) else None
    if fmt != FORMAT:
        if isinstance(fmt, str) and fmt.startswith("hooklab-activations/"):
            raise OutputDirError(
                f"{out} holds activations in format {fmt!r}, but this hooklab reads only {FORMAT!r} (whose shards "
                "carry checksums); collect them again into a new folder, or delete this one and rerun the same call."
            )
        raise OutputDirError(f"{out} holds {fmt!r}, not {FORMAT!r} activations; give an activation folder.")
    problem = _inconsistency(manifest)
    if problem:
        raise CorruptActivationsError(
            f"{path} is inconsistent ({problem}): it was damaged or edited. Delete {out} and collect again."
        )
    return manifest


def _inconsistency(m: dict) -> str | None:
    """What is wrong with a manifest's structure, or None."""

    def count(x: object) -> bool:
        return isinstance(x, int) and not isinstance(x, bool) and x >= 0

    kinds = {"plan": dict, "streams": dict, "rows": dict, "files": list, "complete": bool}
    if not (all(isinstance(m.get(key), kind) for key, kind in kinds.items()) and count(m.get("shards"))):
        return "it lacks plan, streams, rows, files, shards or complete"
    if m["shards"] != len(m["files"]):
        return f"shards says {m['shards']} but files lists {len(m['files'])}"
    for name, spec in m["streams"].items():
        if not (isinstance(spec, dict) and spec.get("file") == stream_file(name) and spec.get("dtype") in DTYPES
                and isinstance(spec.get("shape"), list) and all(count(n) for n in spec["shape"])):  # fmt: skip
            return f"stream {name!r} has no valid file, dtype and shape"
    rows: dict[str, int] = {}
    for k, shard in enumerate(m["files"]):
        if not isinstance(shard, dict):
            return f"shard {k} is not a mapping"
        for name, end in shard.items():
            spec = m["streams"].get(name)
            if not (spec and isinstance(end, dict) and count(end.get("rows")) and isinstance(end.get("crc32"), str)):
                return f"shard {k} records {name!r} without a stream, rows or checksum"
            if end.get("bytes") != HEADER_BYTES + end["rows"] * row_bytes(spec) or end["rows"] < rows.get(name, 0):
                return f"shard {k} records {end['rows']} rows of {name!r} in {end.get('bytes')} bytes"
            rows[name] = end["rows"]
    if not all(count(n) for n in m["rows"].values()):
        return "rows holds something other than counts"
    given = {name: n for name, n in m["rows"].items() if n}
    if given != {name: n for name, n in rows.items() if n}:
        return f"rows says {given} but the shards hold {rows}"
    return None


@dataclass(frozen=True)
class Damage:
    """What is wrong with one file; ``shard`` is the first finished shard it spoils (None: only the header or
    bytes after the last shard, which a resumed run rewrites)."""

    path: Path
    problem: str
    shard: int | None


def check_files(out: Path, manifest: dict, *, full: bool = False) -> list[Damage]:
    """What is wrong with the files of ``out`` given its (valid) manifest: lengths and headers, and with
    ``full`` every shard's checksum."""
    damage: list[Damage] = []
    complete = manifest["complete"]
    for name, spec in manifest["streams"].items():
        path = out / spec["file"]
        ends = [(k, shard[name]) for k, shard in enumerate(manifest["files"]) if name in shard]
        if not ends:
            continue  # nothing finished yet: whatever is there is an unfinished shard
        try:
            size = path.stat().st_size
        except FileNotFoundError:
            damage.append(Damage(path, "is missing", ends[0][0]))
            continue
        short = next(((k, end["bytes"]) for k, end in ends if end["bytes"] > size), None)
        if short is not None:
            problem = f"is truncated: it has {size} bytes, but shard {short[0]} ends at byte {short[1]}"
            damage.append(Damage(path, problem, short[0]))
            continue
        last = ends[-1][1]
        if complete and size != last["bytes"]:
            damage.append(Damage(path, f"has {size - last['bytes']} bytes after its last shard", None))
        problem = _header_problem(path, name, spec, last["rows"], complete)
        if problem:
            damage.append(Damage(path, problem, None))
        if full:
            bad = _first_bad_shard(path, ends)
            if bad is not None:
                damage.append(Damage(path, f"does not match the checksum of shard {bad} (its bytes changed)", bad))
    return damage


def _header_problem(path: Path, name: str, spec: dict, rows: int, complete: bool) -> str | None:
    with open(path, "rb") as f:
        head = f.read(HEADER_BYTES)
    try:
        have = json.loads(head[8:].decode())[name]["shape"][0]
        if not isinstance(have, int) or isinstance(have, bool):
            raise TypeError
        expected = header_bytes(name, DTYPES[spec["dtype"]], tuple(spec["shape"]), have)
    except (ValueError, KeyError, TypeError, IndexError, OutputDirError):
        return "has a garbled header (not the one hooklab writes)"
    if head != expected:
        return "has a garbled header (not the one hooklab writes)"
    if have < rows or (complete and have != rows):
        return f"has a header of {have} rows, but the manifest records {rows}"
    return None


def _first_bad_shard(path: Path, ends: list[tuple[int, dict]]) -> int | None:
    """The first shard whose bytes no longer have their recorded CRC-32."""
    with open(path, "rb") as f:
        start = HEADER_BYTES
        f.seek(start)
        for k, end in ends:
            crc, left = 0, end["bytes"] - start
            while left:
                chunk = f.read(min(left, _CHUNK))
                if not chunk:
                    return k
                crc, left = zlib.crc32(chunk, crc), left - len(chunk)
            if f"{crc:08x}" != end["crc32"]:
                return k
            start = end["bytes"]
    return None


def describe(out: Path, damage: list[Damage]) -> str:
    """One message for all that is wrong in ``out``, with the fix."""
    what = "; ".join(f"{d.path.name} {d.problem}" for d in damage)
    return (
        f"the activations in {out} are damaged: {what}. Rerun the collect call that wrote them (same data "
        f"and settings, out={str(out)!r}): it redoes the damaged shards and keeps the rest. Or delete {out} and "
        "collect again."
    )
