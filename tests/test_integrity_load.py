"""Damaged, contradictory or malformed checkpoints and arguments: refused before a weight moves.

Every case edits a copy of a pico checkpoint (or writes a small file) the way a bad download,
a stale shard or a hand edit would, and checks the HooklabError names the problem and the fix,
that no weight was read, and that the files are left as they were.
"""

from __future__ import annotations

import hashlib
import importlib
import json
import shutil
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from gguf import GGUFWriter
from safetensors.torch import load_file, save_file
from transformers import BertConfig

import hooklab
from hooklab import errors
from hooklab.loading.checkpoint import INDEX_NAME, open_checkpoint
from hooklab.loading.placement import capacities
from hooklab.loading.skeleton import build_skeleton
from hooklab.loading.tensors import match_tensors

from conftest import make_pico, rewrite_header

DOWN = "model.layers.0.mlp.down_proj.weight"
load_module = importlib.import_module("hooklab.loading.load")  # the module, not hooklab.loading.load()


@pytest.fixture
def no_weight_moves(monkeypatch):
    """Fail the test if either loader starts reading weights."""

    def refuse(*args, **kwargs):
        raise AssertionError("a weight was read before the checks refused the checkpoint")

    monkeypatch.setattr(load_module, "read_tensors", refuse)
    monkeypatch.setattr(load_module, "_read_whole", refuse)


@pytest.fixture(scope="module")
def sharded_llama(tmp_path_factory, tokenizer_dir) -> Path:
    return make_pico("llama", tmp_path_factory.mktemp("sharded") / "llama", tokenizer_dir, shard=True)


def digest(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir()) if p.is_file()}


def index_of(folder: Path) -> dict:
    return json.loads((folder / INDEX_NAME).read_text())


def write_index(folder: Path, index: dict) -> None:
    (folder / INDEX_NAME).write_text(json.dumps(index))


def shard_holding(folder: Path, name: str) -> Path:
    return folder / index_of(folder)["weight_map"][name]


# -- dtypes in the header ------------------------------------------------------------------------


def test_header_declaring_a_float_weight_as_int32_is_refused(pico_llama, copy_of, no_weight_moves):
    folder = copy_of(pico_llama)
    # F32 and I32 have one size: the file stays valid, and a cast would make the bits garbage.
    rewrite_header(folder / "model.safetensors", lambda header: header[DOWN].update(dtype="I32"))
    before = digest(folder)
    for strategy in ("stream", "cpu_then_shard"):
        match = rf"{DOWN}.*stored as torch.int32.*floating-point.*save_pretrained"
        with pytest.raises(errors.CheckpointMismatchError, match=match):
            hooklab.load(folder, strategy=strategy)
    assert digest(folder) == before


@pytest.mark.parametrize("dtype", [torch.int64, torch.int16, torch.uint8, torch.bool])
def test_float_weight_saved_as_integers_is_refused(pico_llama, copy_of, no_weight_moves, dtype):
    folder = copy_of(pico_llama)
    tensors = load_file(folder / "model.safetensors")
    tensors[DOWN] = tensors[DOWN].to(dtype)
    save_file(tensors, folder / "model.safetensors", metadata={"format": "pt"})
    match = rf"stored as {dtype}, but the model's {DOWN} is a floating-point"
    with pytest.raises(errors.CheckpointMismatchError, match=match):
        hooklab.load(folder)


def test_integer_buffer_stored_as_floats_is_refused(pico_llama, copy_of):
    folder = copy_of(pico_llama)
    tensors = load_file(folder / "model.safetensors")
    tensors["model.step_counter"] = torch.arange(3, dtype=torch.float32)
    save_file(tensors, folder / "model.safetensors", metadata={"format": "pt"})
    checkpoint = open_checkpoint(folder)
    skeleton = build_skeleton(checkpoint.config, torch.float32)
    skeleton.model.register_buffer("step_counter", torch.zeros(3, dtype=torch.int64))  # an integer the model expects
    with pytest.raises(errors.CheckpointMismatchError, match=r"step_counter.*stored as torch.float32.*integer tensor"):
        match_tensors(skeleton, checkpoint)


# -- shards and the index ------------------------------------------------------------------------


def test_same_tensor_in_two_shards_is_refused(sharded_llama, copy_of, no_weight_moves):
    folder = copy_of(sharded_llama)
    first, second = sorted(set(index_of(folder)["weight_map"].values()))[:2]
    a, b = load_file(folder / first), load_file(folder / second)
    name = next(iter(a))
    b[name] = a[name] + 1  # a stale copy with other values
    save_file(b, folder / second, metadata={"format": "pt"})
    before = digest(folder)
    with pytest.raises(errors.CorruptCheckpointError, match=rf"{name} is stored twice.*{first}.*{second}.*stale shard"):
        hooklab.load(folder)
    assert digest(folder) == before


def test_tensor_in_another_shard_than_the_index_says_is_refused(sharded_llama, copy_of, no_weight_moves):
    folder = copy_of(sharded_llama)
    listed = shard_holding(folder, DOWN)
    other = next(f for f in sorted(set(index_of(folder)["weight_map"].values())) if folder / f != listed)
    a, b = load_file(listed), load_file(folder / other)
    b[DOWN] = a.pop(DOWN)
    save_file(a, listed, metadata={"format": "pt"})
    save_file(b, folder / other, metadata={"format": "pt"})
    with pytest.raises(errors.CorruptCheckpointError, match=rf"puts {DOWN} in {listed.name}, but it is in {other}"):
        hooklab.load(folder)


def test_index_listing_a_tensor_no_shard_holds_is_refused(sharded_llama, copy_of, no_weight_moves):
    folder = copy_of(sharded_llama)
    index = index_of(folder)
    index["weight_map"]["model.layers.9.mlp.down_proj.weight"] = index["weight_map"][DOWN]
    write_index(folder, index)
    match = r"lists 1 tensor\(s\) that its shards do not hold.*layers.9"
    with pytest.raises(errors.CorruptCheckpointError, match=match):
        hooklab.load(folder)


@pytest.mark.parametrize("where", ["../outside.safetensors", "absolute", "sub/../../outside.safetensors"])
def test_index_pointing_outside_the_folder_is_refused(sharded_llama, tmp_path, no_weight_moves, where):
    folder = Path(shutil.copytree(sharded_llama, tmp_path / "model"))
    index = index_of(folder)
    shutil.copy(shard_holding(folder, DOWN), tmp_path / "outside.safetensors")  # a real, readable file
    target = str(tmp_path / "outside.safetensors") if where == "absolute" else where
    index["weight_map"] = {k: target if folder / v == shard_holding(folder, DOWN) else v
                           for k, v in index["weight_map"].items()}  # fmt: skip
    write_index(folder, index)
    match = r"names shard .*outside.safetensors.*outside .*model folder"
    with pytest.raises(errors.CorruptCheckpointError, match=match):
        hooklab.load(folder)


def test_shard_symlinked_from_inside_the_folder_still_loads(sharded_llama, tmp_path):
    folder = Path(shutil.copytree(sharded_llama, tmp_path / "model"))
    shard = shard_holding(folder, DOWN)
    elsewhere = tmp_path / "store" / shard.name
    elsewhere.parent.mkdir()
    shard.rename(elsewhere)
    shard.symlink_to(elsewhere)
    model, reference = hooklab.load(folder, device="cpu"), hooklab.load(sharded_llama, device="cpu")
    assert model.fingerprint == reference.fingerprint


@pytest.mark.parametrize(
    "index, match",
    [
        (lambda m: {**m, "weight_map": list(m["weight_map"].values())}, "weight_map is a list, not a mapping"),
        (lambda m: {**m, "weight_map": {k: 3 for k in m["weight_map"]}},
         r"weight_map maps \S+ to 3, not to a shard file name"),
        (lambda m: [m], r"not a valid safetensors index \(TypeError"),
        (lambda m: {"metadata": {}}, r"not a valid safetensors index \(KeyError"),
    ],
    ids=["list", "numbers", "top-level-list", "no-weight-map"],
)
def test_malformed_index_is_refused(sharded_llama, copy_of, no_weight_moves, index, match):
    folder = copy_of(sharded_llama)
    write_index(folder, index(index_of(folder)))
    with pytest.raises(errors.CorruptCheckpointError, match=match + ".*save_pretrained"):
        hooklab.load(folder)


# -- configs -------------------------------------------------------------------------------------


@pytest.mark.parametrize("value", [-1, 0, "two", 2.5, True])
def test_invalid_layer_count_is_an_invalid_config(pico_llama, copy_of, no_weight_moves, value):
    folder = copy_of(pico_llama)
    config = json.loads((folder / "config.json").read_text())
    config["num_hidden_layers"] = value
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(errors.InvalidConfigError, match="num_hidden_layers.*config.json saved with these weights"):
        hooklab.load(folder)
    with pytest.raises(errors.InvalidConfigError):
        hooklab.plan_placement(folder, devices=["cpu"])


def test_zero_vocabulary_is_an_invalid_config(pico_llama, copy_of, no_weight_moves):
    folder = copy_of(pico_llama)
    config = json.loads((folder / "config.json").read_text())
    config["vocab_size"] = 0
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(errors.InvalidConfigError, match="vocab_size=0; it must be a positive integer"):
        hooklab.load(folder)


def test_bert_is_reported_as_a_non_causal_architecture(pico_llama, copy_of, no_weight_moves):
    folder = copy_of(pico_llama)
    (folder / "config.json").unlink()
    config = BertConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
                        vocab_size=384)  # fmt: skip
    config.architectures = ["BertForMaskedLM"]
    config.save_pretrained(folder)
    match = r"'bert' model \(BertForMaskedLM\).*not a decoder-only causal"
    with pytest.raises(errors.UnsupportedArchitectureError, match=match):
        hooklab.load(folder)


# -- sources and arguments -----------------------------------------------------------------------


@pytest.mark.parametrize("source", [None, 42, ["a", "b"]])
def test_source_of_the_wrong_type(source):
    with pytest.raises(errors.UnknownModelError, match="pass a folder path.*a .gguf file, or a known name"):
        hooklab.load(source)


@pytest.mark.parametrize("name", ["smolm2", "SmolLM", "smollm3"])
def test_misspelt_model_name_gets_a_suggestion(name):
    with pytest.raises(errors.UnknownModelError, match="Did you mean 'smollm2'"):
        hooklab.load(name)


def test_unrelated_name_gets_no_suggestion():
    with pytest.raises(errors.UnknownModelError) as caught:
        hooklab.load("gpt5-ultra")
    assert "Did you mean" not in str(caught.value)


def test_max_memory_forms():
    slots = ["cpu", "cpu"]
    assert capacities(slots, "2GiB") == [2 * 2**30] * 2  # one value for every device
    assert capacities(slots, 1000) == [1000, 1000]
    assert capacities(slots, ["1KiB", 5000]) == [1024, 5000]
    assert capacities(slots, {"cpu": "1.5GB"}) == [1_500_000_000] * 2
    assert capacities(slots, (" 3MB", 7)) == [3_000_000, 7]


@pytest.mark.parametrize(
    "max_memory, match",
    [
        (1.5, "max_memory is a float"),
        ("lots", "budget 'lots' is not a size.*'20GiB'"),
        (-5, "budget -5 is not positive"),
        (0, "budget 0 is not positive"),
        (True, "neither bytes nor a size string"),
        (["1GB"], "lists 1 budgets for 2 devices"),
        ({"cpu": None}, "budget None is neither bytes nor a size string"),
        ({"cuda:0": "1GB"}, r"no entry for \['cpu', 'cpu'\]"),
    ],
)
def test_bad_max_memory_is_refused(pico_llama, no_weight_moves, max_memory, match):
    with pytest.raises(errors.PlacementError, match=match):
        hooklab.load(pico_llama, devices=["cpu", "cpu"], max_memory=max_memory)


def test_max_memory_as_one_string_places_the_model(pico_llama):
    plan = hooklab.plan_placement(pico_llama, devices=["cpu", "cpu"], max_memory="1GiB")
    assert plan.layers == (0, 1)
    with pytest.raises(errors.PlacementError, match="does not fit.*raise max_memory"):
        hooklab.plan_placement(pico_llama, devices=["cpu", "cpu"], max_memory="1KiB")


# -- tokenizer and GGUF files ----------------------------------------------------------------------


def test_deeply_nested_tokenizer_is_refused_and_the_weights_freed(pico_llama, copy_of, monkeypatch):
    folder = copy_of(pico_llama)
    (folder / "tokenizer.json").write_text('{"model": ' + "[" * 100_000 + "]" * 100_000 + "}")
    built = []  # the tokenizer loads while the weights stream: this failure comes after they moved
    monkeypatch.setattr(load_module, "build_skeleton", lambda *a: built.append(build_skeleton(*a)) or built[-1])
    with pytest.raises(errors.MissingTokenizerError, match="no usable tokenizer.*save_pretrained"):
        hooklab.load(folder)
    assert built and all(p.device.type == "meta" for p in built[0].parameters())  # nothing left allocated


def write_gguf(path: Path, tensors: dict[str, np.ndarray]) -> Path:
    """A llama GGUF of pico sizes with a byte-level tokenizer and the given tensors."""
    writer = GGUFWriter(path, arch="llama")
    writer.add_block_count(2)
    writer.add_context_length(64)
    writer.add_embedding_length(32)
    writer.add_feed_forward_length(64)
    writer.add_head_count(4)
    writer.add_head_count_kv(2)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_rope_dimension_count(8)
    writer.add_vocab_size(8)
    writer.add_tokenizer_model("gpt2")
    writer.add_token_list(["a", "b", "ab", "c", "d", "e", "<s>", "</s>"])
    writer.add_token_types([1] * 8)
    writer.add_token_merges(["a b"])
    writer.add_bos_token_id(6)
    writer.add_eos_token_id(7)
    for name, array in tensors.items():
        writer.add_tensor(name, array)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def test_gguf_with_valid_magic_then_garbage(tmp_path):
    path = tmp_path / "garbage.gguf"
    path.write_bytes(b"GGUF" + struct.pack("<I", 3) + bytes(range(256)) * 4)
    with pytest.raises(errors.CorruptCheckpointError, match="not a readable GGUF file.*download it again"):
        hooklab.load(path)


def test_gguf_without_tensors(tmp_path):
    with pytest.raises(errors.CorruptCheckpointError, match="holds no tensors.*full GGUF"):
        hooklab.load(write_gguf(tmp_path / "empty.gguf", {}))


def test_gguf_lacking_tensors_is_not_filled_with_random_weights(tmp_path):
    path = write_gguf(tmp_path / "partial.gguf", {"token_embd.weight": np.ones((8, 32), np.float32)})
    with pytest.raises(errors.CheckpointMismatchError, match=r"lacks \d+ tensor\(s\) the model needs.*Export"):
        hooklab.load(path)
