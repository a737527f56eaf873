"""Where hooklab's files live, and how their sizes read: the data files in the folder
``HOOKLAB_DATA`` names (or an argument, never a guess), and hooklab's own cache.

The data folder is laid out like the project's shared data (``counterfact_known_dev.json``,
``zsre/zsre_mend_train_1k.json``, ``corpus/wikitext_valid_test.txt``, ...); any file of those
formats can also be passed to hooklab by its own path.
"""

from __future__ import annotations

import os
from pathlib import Path

from hooklab.errors import DataNotFoundError

ENV = "HOOKLAB_DATA"
SOURCES = (
    "CounterFact and zsRE are published with ROME/MEMIT at https://rome.baulab.info/data/dsets/ "
    "(counterfact.json, zsre_mem_eval.json); WikiText-103 comes from its public raw release "
    "(wikitext-103-raw-v1, Merity et al. 2016)"
)


def data_path(name: str | os.PathLike, root: str | os.PathLike | None = None) -> Path:
    """The path of data file ``name`` inside ``root`` (default: ``$HOOKLAB_DATA``), checked to exist.

    Example:
        >>> records = json.loads(hooklab.data_path("counterfact_known_dev.json").read_text())
    """
    if root is None:
        root = os.environ.get(ENV)
        if not root:
            raise DataNotFoundError(
                f"no data folder for {str(name)!r}: set {ENV} to a folder that holds it "
                f"(export {ENV}=/path/to/data) or pass root=. {SOURCES}."
            )
    path = Path(root).expanduser() / name
    if not path.is_file():
        where = f"{ENV}={root}" if root == os.environ.get(ENV) else f"root={str(root)!r}"
        raise DataNotFoundError(
            f"data file {str(name)!r} is not in {Path(root).expanduser().resolve()} ({where}): put it there or point "
            f"{ENV} at the folder that has it. {SOURCES}."
        )
    return path


def cache_dir() -> Path:
    """Where converted models, downloads and cached statistics live: ``$HOOKLAB_CACHE`` or ``~/.cache/hooklab``."""
    return Path(os.environ.get("HOOKLAB_CACHE") or Path.home() / ".cache" / "hooklab").expanduser()


def human_bytes(n: float) -> str:
    """``1536`` → ``"1.5 KiB"``: sizes in messages people read."""
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.2f} {unit}"
        n /= 1024
    raise AssertionError("unreachable")
