"""``hooklab --help`` needs no torch: the package's API is imported on first use, and stays the same API."""

from __future__ import annotations

import importlib
import os
import subprocess
import sys
from pathlib import Path

import hooklab

ROOT = Path(__file__).resolve().parents[1]
HEAVY = ("torch", "transformers", "transformer_lens", "matplotlib")


def run_python(code: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)


def test_the_cli_imports_nothing_heavy_before_argparse():
    out = run_python(
        "import sys, hooklab.cli\n"
        "try:\n    hooklab.cli.main(['edit', '--help'])\nexcept SystemExit as e:\n    assert e.code == 0, e.code\n"
        f"print('LOADED', [m for m in {HEAVY!r} if m in sys.modules])"
    )
    assert out.returncode == 0, out.stderr
    assert "usage: hooklab edit" in out.stdout and "--stats" in out.stdout
    assert "LOADED []" in out.stdout


def test_help_as_a_module_lists_every_job():
    env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    out = subprocess.run([sys.executable, "-m", "hooklab.cli", "--help"], capture_output=True, text=True, env=env)
    assert out.returncode == 0, out.stderr
    for job in ("demo", "edit", "wise", "eval", "merge", "collect", "trace"):
        assert job in out.stdout


def test_import_hooklab_is_light_and_names_load_on_use():
    out = run_python(
        "import sys, hooklab\n"
        f"print('BEFORE', [m for m in {HEAVY[:3]!r} if m in sys.modules])\n"
        "hooklab.HooklabError, hooklab.data_path\n"
        f"print('LIGHT', [m for m in {HEAVY[:3]!r} if m in sys.modules])\n"
        "hooklab.load\n"
        "print('AFTER', 'torch' in sys.modules)"
    )
    assert out.returncode == 0, out.stderr
    assert "BEFORE []" in out.stdout and "LIGHT []" in out.stdout and "AFTER True" in out.stdout


def test_every_public_name_is_the_object_its_module_defines():
    for name in hooklab.__all__:
        module = importlib.import_module(hooklab._API[name])
        assert getattr(hooklab, name) is getattr(module, name), name
    assert set(hooklab.__all__) <= set(dir(hooklab))
    namespace: dict = {}
    exec("from hooklab import *", namespace)
    assert {name for name in namespace if not name.startswith("__")} == set(hooklab.__all__)


def test_functions_named_like_their_subpackages_stay_functions():
    # Importing hooklab/edit/, hooklab/evaluate/, hooklab/merge/ binds them on the package;
    # hooklab.edit & co. must still be the API's functions.
    out = run_python(
        "import hooklab.edit.wise, hooklab.evaluate.zsre, hooklab.merge.config, hooklab\n"
        "from hooklab.edit.main import edit\nfrom hooklab.evaluate import evaluate\nfrom hooklab.merge import merge\n"
        "print(hooklab.edit is edit, hooklab.evaluate is evaluate, hooklab.merge is merge)"
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["True", "True", "True"]


def test_an_unknown_name_is_an_attribute_error():
    try:
        hooklab.no_such_name  # noqa: B018
    except AttributeError as e:
        assert "no_such_name" in str(e)
    else:
        raise AssertionError("hooklab.no_such_name did not raise")
