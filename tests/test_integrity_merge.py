"""Merges that are killed, misdirected or asked for non-finite numbers lose nothing and write nothing.

The kill cases run a real merge in a subprocess that stops at the chosen moment of replacing
an existing output; the parent SIGKILLs it there and checks that ``out`` still holds a complete
merge, and that the next run cleans up after it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import yaml
from conftest import rewrite_header
from safetensors.torch import load_file

import hooklab
from hooklab import errors, folders
from hooklab.merge.config import load_config, run_config

DEAD_PID = 2**22 + 1  # above Linux's largest pid: never a running process


@pytest.fixture(scope="module")
def expected(pair, tmp_path_factory):
    """The weight file of the old merge (weights 1, 1) and of the new one (1, 3)."""
    root = tmp_path_factory.mktemp("expected")
    old = hooklab.merge(list(pair), out=root / "old")
    new = hooklab.merge(list(pair), weights=[1, 3], out=root / "new")
    return {"old": digest(old.path), "new": digest(new.path)}


def digest(folder: Path) -> str:
    return hashlib.sha256((folder / "model.safetensors").read_bytes()).hexdigest()


def listing(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def exchange_works(tmp_path: Path) -> bool:
    a, b = tmp_path / "probe-a", tmp_path / "probe-b"
    a.mkdir(), b.mkdir()
    try:
        return folders.exchange(a, b)
    finally:
        a.rmdir(), b.rmdir()


# The child merges into an existing out with overwrite=True and stops for good at ``moment``.
CHILD = textwrap.dedent("""
    import os, pathlib, sys, time
    import hooklab
    from hooklab import folders

    moment, marker, a, b, out = sys.argv[1:]

    def stop_here():
        pathlib.Path(marker).write_text(str(os.getpid()))
        time.sleep(300)  # killed here by the parent

    real_exchange, real_rename = folders.exchange, pathlib.Path.rename
    if moment == "before_swap":
        def exchange(x, y):
            stop_here()
            return real_exchange(x, y)
    elif moment == "after_swap":
        def exchange(x, y):
            done = real_exchange(x, y)
            stop_here()
            return done
    else:  # between_renames: a system without RENAME_EXCHANGE, killed with the old output set aside
        def exchange(x, y):
            return False
        def rename(self, target):
            moved = real_rename(self, target)
            if str(target).endswith(".replaced"):
                stop_here()
            return moved
        pathlib.Path.rename = rename
    folders.exchange = exchange
    hooklab.merge([a, b], weights=[1, 3], out=out, overwrite=True)
""")


def kill_at(moment: str, pair, out: Path, tmp_path: Path) -> None:
    marker = tmp_path / "stopped"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    child = subprocess.Popen([sys.executable, "-c", CHILD, moment, str(marker), *map(str, pair), str(out)], env=env)
    try:
        deadline = time.monotonic() + 240
        while not marker.exists():
            assert child.poll() is None, f"the merge ended (rc {child.returncode}) before reaching {moment}"
            assert time.monotonic() < deadline, f"the merge never reached {moment}"
            time.sleep(0.1)
        os.kill(child.pid, signal.SIGKILL)
        assert child.wait(timeout=60) == -signal.SIGKILL
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()


@pytest.mark.parametrize("moment", ["before_swap", "after_swap", "between_renames"])
def test_overwrite_killed_while_replacing_keeps_a_complete_output(pair, expected, tmp_path, caplog, moment):
    if moment != "between_renames" and not exchange_works(tmp_path):
        pytest.skip("this file system cannot exchange two folders atomically")
    work = tmp_path / "work"
    out = work / "out"
    hooklab.merge(list(pair), out=out)  # the old output, weights 1, 1
    kill_at(moment, pair, out, tmp_path)

    leftovers = [name for name in listing(work) if name != "out"]
    assert leftovers and all(name.startswith(".out.") for name in leftovers)
    if moment == "between_renames":
        # Without an atomic exchange the old folder waits, complete, under its hidden name ...
        assert not out.exists()
        replaced = next(name for name in leftovers if name.endswith(".replaced"))
        assert digest(work / replaced) == expected["old"]
        assert len(leftovers) == 2  # and the new one, complete but never put in place
        # ... and the next run puts it back before anything else (here: refusing to overwrite).
        with caplog.at_level(logging.WARNING, logger="hooklab.folders"):
            with pytest.raises(errors.MergeConfigError, match="already exists"):
                hooklab.merge(list(pair), weights=[1, 3], out=out)
        assert f"restored {out} from {replaced}" in caplog.text and listing(work) == ["out"]
        assert digest(out) == expected["old"]
    else:
        # out is a complete merge at every instant: the old one before the swap, the new one after.
        assert digest(out) == expected["old" if moment == "before_swap" else "new"]
        model = hooklab.load(out, device="cpu")
        assert model.cfg.n_layers == 2
        assert len(leftovers) == 1 and leftovers[0].endswith(".partial")
        if moment == "after_swap":  # the swapped-out old output, still complete, waits to be removed
            assert digest(work / leftovers[0]) == expected["old"]

    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="hooklab.folders"):
        result = hooklab.merge(list(pair), weights=[1, 3], out=out, overwrite=True)
    assert listing(work) == ["out"] and digest(result.path) == expected["new"]
    if moment != "between_renames":
        assert f"removed {leftovers[0]}" in caplog.text


def test_overwrite_without_exchange_replaces_and_leaves_nothing(pair, expected, tmp_path, monkeypatch):
    out = tmp_path / "out"
    hooklab.merge(list(pair), out=out)
    monkeypatch.setattr(folders, "exchange", lambda a, b: False)
    hooklab.merge(list(pair), weights=[1, 3], out=out, overwrite=True)
    assert listing(tmp_path) == ["out"] and digest(out) == expected["new"]


def test_only_dead_runs_leftovers_of_this_out_are_removed(pair, tmp_path, caplog):
    dead = tmp_path / f".out.{DEAD_PID}.k1x9.partial"
    live = tmp_path / f".out.{os.getpid()}.m2y8.partial"  # a merge of this process, still running
    other = tmp_path / f".other.{DEAD_PID}.z3.partial"  # belongs to another output
    for folder in (dead, live, other):
        folder.mkdir()
        (folder / "model.safetensors").write_bytes(b"partial")
    with caplog.at_level(logging.WARNING, logger="hooklab.folders"):
        hooklab.merge(list(pair), out=tmp_path / "out")
    assert not dead.exists() and live.is_dir() and other.is_dir()
    assert f"removed {dead.name}" in caplog.text


def test_replaced_leftover_is_restored_only_when_out_is_missing(pair, tmp_path):
    out = tmp_path / "out"
    hooklab.merge(list(pair), out=out)
    stale = tmp_path / f".out.{DEAD_PID}.replaced"
    stale.mkdir()  # an older output, set aside by a run that did finish replacing it
    hooklab.merge(list(pair), weights=[1, 3], out=out, overwrite=True)
    assert listing(tmp_path) == ["out"]
    assert json.loads((out / "merge.json").read_text())["weights"] == [1.0, 3.0]


def test_out_under_a_regular_file_is_refused(pair, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("keep")
    with pytest.raises(errors.MergeConfigError, match="lies under .*file, which is a file, not a folder"):
        hooklab.merge(list(pair), out=blocker / "deeper" / "out")
    assert listing(tmp_path) == ["file"] and blocker.read_text() == "keep"


def test_out_that_is_a_file_is_refused_even_with_overwrite(pair, tmp_path):
    target = tmp_path / "out"
    target.write_text("keep")
    with pytest.raises(errors.MergeConfigError, match="is a file; a merge writes a folder"):
        hooklab.merge(list(pair), out=target, overwrite=True)
    assert listing(tmp_path) == ["out"] and target.read_text() == "keep"


NAN, INF = math.nan, math.inf


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"weights": [NAN, 1]}, r"weights \[nan, 1\] include NaN or infinity"),
        ({"weights": [1, -INF]}, "include NaN or infinity"),
        ({"method": "ties", "base": "A", "parameters": {"density": NAN}}, "density is nan.*finite"),
        ({"method": "ties", "base": "A", "parameters": {"density": [0.2, NAN]}}, r"density is \[0.2, nan\].*finite"),
        ({"method": "task_arithmetic", "base": "A", "parameters": {"scale": INF}}, "scale is inf.*finite"),
        ({"method": "slerp", "parameters": {"t": NAN}}, "t is nan.*finite"),
        ({"weights": "auto", "examples": [("a", " b")], "temperature": NAN}, "temperature must be a finite number"),
    ],
    ids=["nan-weight", "inf-weight", "nan-density", "nan-in-gradient", "inf-scale", "nan-t", "nan-temperature"],
)
def test_non_finite_numbers_are_refused_before_writing(pair, tmp_path, kwargs, match):
    kwargs = {k: pair[0] if v == "A" else v for k, v in kwargs.items()}
    with pytest.raises(errors.MergeConfigError, match=match):
        hooklab.merge(list(pair), out=tmp_path / "out", **kwargs)
    assert listing(tmp_path) == []


def test_recipe_with_a_nan_weight_is_refused(pair, tmp_path):
    recipe = tmp_path / "recipe.yaml"
    models = [{"model": str(pair[0]), "weight": 1.0}, {"model": str(pair[1]), "weight": NAN}]
    recipe.write_text(yaml.safe_dump({"models": models, "out": str(tmp_path / "out")}))
    with pytest.raises(errors.MergeConfigError, match="include NaN or infinity"):
        run_config(load_config(recipe))
    assert listing(tmp_path) == ["recipe.yaml"]


def test_source_whose_header_lies_about_a_dtype_is_refused(pair, tmp_path, copy_of):
    folder = copy_of(pair[1])
    rewrite_header(folder / "model.safetensors", lambda h: h["model.layers.1.mlp.up_proj.weight"].update(dtype="I32"))
    with pytest.raises(errors.CheckpointMismatchError, match="up_proj.weight.*stored as torch.int32"):
        hooklab.merge([pair[0], folder], out=tmp_path / "out")
    assert not (tmp_path / "out").exists()
    assert load_file(pair[0] / "model.safetensors")  # the sources are untouched


def test_source_with_a_damaged_tokenizer_is_refused(pair, tmp_path, copy_of):
    folder = copy_of(pair[1])
    (folder / "tokenizer.json").write_text('{"model": ' + "[" * 100_000 + "]" * 100_000 + "}")
    with pytest.raises(errors.MissingTokenizerError, match="not a readable tokenizer.*save_pretrained"):
        hooklab.merge([pair[0], folder], out=tmp_path / "out")
    assert not (tmp_path / "out").exists()
