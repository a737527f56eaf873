"""What every benchmark reports beside its numbers: the machine, Markdown tables, the results files.

One place, so every table in ``benchmarks/results/`` names its machine and command the same way.
Number formatting stays with each benchmark (it knows what precision its numbers carry).

    text = "\\n".join([f"Machine: {_report.machine('cpu')}. `{_report.command()}`", "",
                       _report.markdown_table(["run", "seconds"], [["ROME", f"{s:.2f}"]])])
    _report.write_results("edit-speed-cpu", text)
"""

from __future__ import annotations

import json
import os
import platform
import shlex
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"


def machine(device: str = "cpu", *, gpus: int | None = None, load: bool = False) -> str:
    """The GPUs (count and name; on ``cpu``, the processor), CPU cores, torch threads and version.

    Args:
        device: where the benchmark ran; a ``cuda`` device names the GPUs, if any are visible.
        gpus: how many GPUs it used (default: one for ``cuda:<i>``, every visible one for ``cuda``).
        load: also the 5-min load average, for benchmarks a busy shared machine slows.
    """
    import torch  # here: merge.py's children, whole processes timed, import this module before their tool

    if device.startswith("cuda") and torch.cuda.is_available():
        count = gpus or (1 if ":" in device else torch.cuda.device_count())
        where = f"{count}x {torch.cuda.get_device_name(0)}"
    else:
        where = platform.processor() or platform.machine()
        where += "" if torch.cuda.is_available() else ", no GPU"
    parts = [where, f"{os.cpu_count()} CPU cores", f"{torch.get_num_threads()} torch thread(s)"]
    if load:
        parts.append(f"5-min load average {os.getloadavg()[1]:.1f}")
    return ", ".join([*parts, f"torch {torch.__version__}"])


def machine_name(default: str) -> str:
    """The machine's short name in results file names: ``HOOKLAB_MACHINE`` if set, else ``default``."""
    return os.environ.get("HOOKLAB_MACHINE", default)


def command() -> str:
    """The command line of this run, as a results file quotes it."""
    return shlex.join(["python", f"benchmarks/{Path(sys.argv[0]).name}", *sys.argv[1:]])


def markdown_table(headers: Sequence[str], rows: Iterable[Sequence[object]]) -> str:
    """A Markdown table of cells already formatted by the caller; short rows end in empty cells."""

    def line(cells: Sequence[object]) -> str:
        return "|" + "".join(f" {cell} |" if str(cell) else " |" for cell in cells)

    lines = [line(headers), "|" + "---|" * len(headers)]
    for row in rows:
        if len(row) > len(headers):
            raise ValueError(f"a row of {len(row)} cells under {len(headers)} headers: {list(row)}; "
                             "give every row at most one cell per header")  # fmt: skip
        lines.append(line([*row, *[""] * (len(headers) - len(row))]))
    return "\n".join(lines)


def write_results(name: str, markdown: str, data: object = None, *, folder: Path = RESULTS) -> list[Path]:
    """Print ``markdown`` and write it to ``folder/<name>.md``, and ``data`` (if any) to ``<name>.json``."""
    print(markdown, flush=True)
    folder.mkdir(parents=True, exist_ok=True)
    paths = [folder / f"{name}.md"]
    paths[0].write_text(markdown if markdown.endswith("\n") else markdown + "\n")
    if data is not None:
        paths.append(folder / f"{name}.json")
        paths[1].write_text(json.dumps(data, indent=1))
    return paths
