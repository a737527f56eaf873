"""The README's Python blocks run as written, top to bottom, on the embedded model.

The blocks are chained: they run in order in one namespace, as a reader pasting them into one
session would (later blocks use the ``model`` and ``small`` of earlier ones), in a fresh
working directory. The environment is what the README's *Data files* section says:
HOOKLAB_DATA names the data folder (../shared/data beside the checkout unless set) and
HOOKLAB_SMALL=1 cuts the blocks' own record and token counts (a few records, a few thousand
tokens), so the key statistics CI collects the first time stay small. The merging block merges
folders of the reader's own, ``chat``, ``code`` and ``base``: the test writes three pico Llama
checkpoints under those names.
"""

from __future__ import annotations

import re
from pathlib import Path

import matplotlib
import pytest
from conftest import make_pico

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
BLOCK = re.compile(r"^```python\n(.*?)^```", re.S | re.M)


def python_blocks() -> list[tuple[int, str]]:
    """(first line number, source) of each ```python block."""
    text = README.read_text()
    return [(text.count("\n", 0, m.start(1)) + 1, m.group(1)) for m in BLOCK.finditer(text)]


def compiled(line: int, source: str):
    # Padding keeps README line numbers in tracebacks.
    return compile("\n" * (line - 1) + source, str(README), "exec")


def test_every_python_block_compiles():
    blocks = python_blocks()
    assert len(blocks) >= 6
    for line, source in blocks:
        compiled(line, source)


@pytest.mark.slow
def test_the_blocks_run_in_order(tmp_path, monkeypatch, hooklab_data, tokenizer_dir):
    matplotlib.use("Agg")
    monkeypatch.setenv("HOOKLAB_SMALL", "1")
    monkeypatch.chdir(tmp_path)
    for seed, name in enumerate(["base", "chat", "code"]):
        make_pico("llama", tmp_path / name, tokenizer_dir, seed=seed)
    namespace: dict = {"__name__": "__main__"}
    for line, source in python_blocks():
        exec(compiled(line, source), namespace)  # a failure's traceback names the README line
    # What the blocks say they write is there, and the last one loaded the cocktail merge.
    for path in ["lens.png", "eiffel-mlp.png", "aie-mlp.png", "eiffel.safetensors", "memory.safetensors", "acts"]:
        assert (tmp_path / path).exists(), path
    for folder in ["soup", "ties", "dare", "slerp", "cocktail"]:
        assert (tmp_path / folder / "config.json").is_file(), folder
    assert namespace["model"].cfg.n_layers == 2 and len(namespace["mix"].weights) == 2
