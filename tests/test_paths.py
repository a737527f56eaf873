"""``hooklab.data_path``: data files from the folder HOOKLAB_DATA names, and errors that say how to get them."""

from __future__ import annotations

import pytest

import hooklab
from hooklab.errors import DataNotFoundError


def test_finds_a_file_in_the_folder_the_environment_names(tmp_path, monkeypatch):
    (tmp_path / "corpus").mkdir()
    (tmp_path / "corpus" / "wiki.txt").write_text("text\n")
    monkeypatch.setenv("HOOKLAB_DATA", str(tmp_path))
    assert hooklab.data_path("corpus/wiki.txt") == tmp_path / "corpus" / "wiki.txt"


def test_an_argument_overrides_the_environment(tmp_path, monkeypatch):
    (tmp_path / "a.json").write_text("[]")
    monkeypatch.setenv("HOOKLAB_DATA", str(tmp_path / "elsewhere"))
    assert hooklab.data_path("a.json", root=tmp_path) == tmp_path / "a.json"


def test_unset_says_how_to_set_it_and_where_the_data_comes_from(monkeypatch):
    monkeypatch.delenv("HOOKLAB_DATA", raising=False)
    with pytest.raises(DataNotFoundError, match="set HOOKLAB_DATA") as e:
        hooklab.data_path("counterfact_known_dev.json")
    assert "counterfact_known_dev.json" in str(e.value) and "rome.baulab.info" in str(e.value)
    assert "wikitext-103" in str(e.value)


def test_a_missing_file_is_named_with_the_folder_searched(tmp_path, monkeypatch):
    monkeypatch.setenv("HOOKLAB_DATA", str(tmp_path))
    with pytest.raises(FileNotFoundError, match="zsre/zsre_mend_train_1k.json") as e:
        hooklab.data_path("zsre/zsre_mend_train_1k.json")
    assert str(tmp_path) in str(e.value) and f"HOOKLAB_DATA={tmp_path}" in str(e.value)
    assert isinstance(e.value, hooklab.HooklabError)
