"""YAML merge recipes: strict loading, relative paths, and the ``hooklab merge`` command."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from hooklab import errors
from hooklab.cli import main
from hooklab.merge.config import ModelEntry, load_config

from conftest import make_pico


@pytest.fixture(scope="module")
def models(tmp_path_factory, tokenizer_dir):
    root = tmp_path_factory.mktemp("recipe")
    make_pico("llama", root / "base", tokenizer_dir, seed=0)
    make_pico("llama", root / "tuned", tokenizer_dir, seed=1)
    return root


def write(folder, text):
    path = folder / "recipe.yaml"
    path.write_text(text)
    return path


def test_recipe_runs_from_the_command_line(models, capsys):
    recipe = write(models, """
method: ties
base_model: base
models:
  - model: tuned
    weight: 0.5
parameters:
  density: [0.2, 0.8]
dtype: bfloat16
out: merged
""")
    config = load_config(recipe)
    assert config.models == (ModelEntry(str(models / "tuned"), 0.5),) and config.parameters["density"] == [0.2, 0.8]
    main(["merge", str(recipe)])
    assert "with ties into" in capsys.readouterr().out
    written = json.loads((models / "merged" / "merge.json").read_text())
    assert written["weights"] == [0.5] and written["base"] == str(models / "base") and written["dtype"] == "bfloat16"
    assert load_file(models / "merged" / "model.safetensors")["lm_head.weight"].dtype == torch.bfloat16
    with pytest.raises(SystemExit):  # a second run refuses to overwrite
        main(["merge", str(recipe)])
    assert "already exists" in capsys.readouterr().err
    main(["merge", str(recipe), "--overwrite"])


@pytest.mark.parametrize(
    "text, match",
    [
        ("models: [{model: a}]\nout: o\nmerge_metod: ties\n", r"unknown key\(s\) \['merge_metod'\]"),
        ("models: [{model: a}]\n", r"missing key\(s\) \['out'\]"),
        ("models: [{model: a, wieght: 1}]\nout: o\n", r"models\[0\]: unknown key\(s\) \['wieght'\]"),
        ("models: [{model: a, weight: heavy}]\nout: o\n", r"weight is 'heavy'"),
        ("models: a\nout: o\n", "expected a list"),
        ("models: [{model: a}]\nout: o\ntemperature: hot\n", "temperature is 'hot'"),
        ("- just\n- a list\n", "expected a mapping"),
    ],
)
def test_recipes_are_read_strictly(tmp_path, text, match):
    with pytest.raises(errors.MergeConfigError, match=match):
        load_config(write(tmp_path, text))


def test_auto_weights_exclude_given_weights(models, tmp_path):
    from hooklab.merge.config import run_config

    recipe = write(tmp_path, f"""
weights: auto
examples: [{{prompt: "The Eiffel Tower is in", answer: " Paris"}}]
models:
  - model: {models / "base"}
    weight: 1
  - model: {models / "tuned"}
out: mix
""")
    with pytest.raises(errors.MergeConfigError, match="remove the per-model weights"):
        run_config(load_config(recipe))
    assert not (tmp_path / "mix").exists()


def test_missing_recipe(tmp_path):
    with pytest.raises(errors.MergeConfigError, match="does not exist"):
        load_config(tmp_path / "nope.yaml")
