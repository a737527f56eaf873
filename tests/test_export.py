"""Saving a loaded model as an HF checkpoint; TransformerLens's weight processing refused unless allowed."""

from __future__ import annotations

import dataclasses
import json

import gguf
import numpy as np
import pytest
import torch
from conftest import make_pico
from editing import FACTS, key_moments, same_weights, snapshot
from safetensors import safe_open
from transformers import AutoModelForCausalLM, AutoTokenizer

import hooklab
from hooklab import export
from hooklab.errors import EditMismatchError, ExportError, WeightRewriteError

PROMPT = "The Eiffel Tower is located in the city of"


def logits(model, ids: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(ids)


def saved_tensors(folder) -> dict[str, dict]:
    """Every tensor in the folder's safetensors files: its file, dtype and the file's metadata."""
    found = {}
    for file in sorted(folder.glob("*.safetensors")):
        with safe_open(str(file), framework="pt") as f:
            for name in f.keys():
                found[name] = {"file": file.name, "dtype": f.get_slice(name).get_dtype(), "meta": f.metadata()}
    return found


def edited(model):
    """The model with a ROME edit of FACTS[0] at layer 0 applied (quick settings; the returned Edit undoes it)."""
    hp = hooklab.RomeHparams(layer=0, v_steps=5, context_lengths=((5, 2),))
    return hooklab.edit(model, FACTS[0], "rome", hparams=hp, stats=key_moments(model, [0], n_rows=16))


def test_edited_model_reads_back_in_transformers_and_hooklab(pico, tmp_path):
    """Layers on two device slots, saved in shards: each tensor written from where it lives."""
    model = hooklab.load(pico, devices=["cpu", "cpu"])
    ids = model.to_tokens(PROMPT)
    unedited = logits(model, ids)
    edit = edited(model)
    expected = logits(model, ids)
    assert not torch.allclose(expected, unedited, atol=1e-3)  # the edit shows in the logits

    out = model.save_pretrained(tmp_path / "saved", max_shard_size="40KB")
    tensors = saved_tensors(out)
    with safe_open(str(pico / "model.safetensors"), framework="pt") as f:
        assert set(tensors) == set(f.keys())  # HF's own names: a tied weight once, under its source, no buffers
    assert all(t["meta"] == {"format": "pt"} for t in tensors.values())
    files = sorted({t["file"] for t in tensors.values()})
    index = json.loads((out / "model.safetensors.index.json").read_text())
    assert len(files) > 2 and files[0] == f"model-00001-of-{len(files):05d}.safetensors"
    assert index["weight_map"] == {name: t["file"] for name, t in tensors.items()}
    assert index["metadata"]["total_size"] == sum(w.numel() * 4 for _, w in model.named_weights())
    config = json.loads((out / "config.json").read_text())
    assert config["dtype"] == "float32" and config["architectures"] == [type(model.hf_model).__name__]
    assert (out / "generation_config.json").is_file()
    assert AutoTokenizer.from_pretrained(out)(PROMPT).input_ids == ids[0].tolist()

    hf, info = AutoModelForCausalLM.from_pretrained(out, attn_implementation="eager", output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"]
    with torch.no_grad():  # TransformerLens runs GPT-2's attention split into q, k, v: rounding differs a little
        torch.testing.assert_close(hf.eval()(ids).logits, expected, atol=1e-4, rtol=0)
    again = hooklab.load(out, device="cpu")
    assert torch.equal(logits(again, ids), expected)  # bit for bit
    assert again.fingerprint == model.fingerprint  # edit files made on the edited model apply to the saved one
    edit.undo()


def test_dtype_of_the_saved_weights(pico_llama, tmp_path):
    model = hooklab.load(pico_llama, device="cpu")
    out = model.save_pretrained(tmp_path / "bf16", dtype="bfloat16")
    assert {t["file"] for t in saved_tensors(out).values()} == {"model.safetensors"}  # it fits one shard: no index
    assert not (out / "model.safetensors.index.json").exists()
    assert {t["dtype"] for t in saved_tensors(out).values()} == {"BF16"}
    assert json.loads((out / "config.json").read_text())["dtype"] == "bfloat16"
    assert next(model.hf_model.parameters()).dtype == torch.float32  # the model in memory is left as it was
    ids = model.to_tokens(PROMPT)
    reference = hooklab.load(pico_llama, device="cpu", dtype="bfloat16")
    assert torch.equal(logits(hooklab.load(out, device="cpu"), ids), logits(reference, ids))


@pytest.fixture(scope="module")
def pico_gguf(tmp_path_factory, tokenizer_dir):
    """A float32 pico Llama written as a GGUF file, with the pico tokenizer as GGUF metadata."""
    spec = json.loads(AutoTokenizer.from_pretrained(tokenizer_dir).backend_tokenizer.to_str())
    tokens = sorted(spec["model"]["vocab"], key=spec["model"]["vocab"].get)
    d, f, heads, kv, layers = 32, 64, 4, 2, 2
    path = tmp_path_factory.mktemp("gguf") / "pico.gguf"
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_name("pico")
    w.add_context_length(64)
    w.add_embedding_length(d)
    w.add_block_count(layers)
    w.add_feed_forward_length(f)
    w.add_head_count(heads)
    w.add_head_count_kv(kv)
    w.add_rope_dimension_count(d // heads)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_vocab_size(len(tokens))
    w.add_tokenizer_model("gpt2")
    w.add_token_list(tokens)
    w.add_token_merges([m if isinstance(m, str) else " ".join(m) for m in spec["model"]["merges"]])
    w.add_token_types([gguf.TokenType.CONTROL if i < 3 else gguf.TokenType.NORMAL for i in range(len(tokens))])
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    rng = np.random.default_rng(0)
    shapes = {"token_embd.weight": (len(tokens), d), "output_norm.weight": (d,), "output.weight": (len(tokens), d)}
    for i in range(layers):
        shapes |= {f"blk.{i}.attn_norm.weight": (d,), f"blk.{i}.ffn_norm.weight": (d,),
                   f"blk.{i}.attn_q.weight": (d, d), f"blk.{i}.attn_k.weight": (d // heads * kv, d), f"blk.{i}.attn_v.weight": (d // heads * kv, d),
                   f"blk.{i}.attn_output.weight": (d, d), f"blk.{i}.ffn_gate.weight": (f, d),
                   f"blk.{i}.ffn_up.weight": (f, d), f"blk.{i}.ffn_down.weight": (d, f)}  # fmt: skip
    for name, shape in shapes.items():
        w.add_tensor(name, (rng.standard_normal(shape) * 0.3).astype(np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def test_model_loaded_from_gguf_saves_as_safetensors(pico_gguf, tmp_path):
    model = hooklab.load(pico_gguf, device="cpu")
    out = model.save_pretrained(tmp_path / "from-gguf")
    assert sorted(p.name for p in out.glob("*.safetensors")) == ["model.safetensors"] and not list(out.glob("*.gguf"))
    ids = model.to_tokens(PROMPT)
    hf, info = AutoModelForCausalLM.from_pretrained(out, attn_implementation="eager", output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"] and hf.config.architectures == ["LlamaForCausalLM"]
    with torch.no_grad():
        torch.testing.assert_close(hf.eval()(ids).logits, logits(model, ids), atol=1e-5, rtol=0)
    again = hooklab.load(out, device="cpu")
    assert torch.equal(logits(again, ids), logits(model, ids)) and again.fingerprint == model.fingerprint


def test_occupied_folder_refused_overwrite_replaces_it_only_when_complete(pico_llama, tmp_path, monkeypatch):
    model = hooklab.load(pico_llama, device="cpu")
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    with pytest.raises(ExportError, match="overwrite=True"):
        model.save_pretrained(out)
    with pytest.raises(ExportError, match="not a size; give bytes"):
        model.save_pretrained(tmp_path / "new", max_shard_size="2 gigs")
    assert [p.name for p in out.iterdir()] == ["notes.txt"]

    calls = []

    def fails_on_the_second_shard(*args, **kwargs):
        calls.append(args[1])
        if len(calls) == 2:
            raise OSError("disk full")
        return save_file(*args, **kwargs)

    save_file = export.save_file
    monkeypatch.setattr(export, "save_file", fails_on_the_second_shard)
    with pytest.raises(OSError, match="disk full"):
        model.save_pretrained(out, max_shard_size="40KB", overwrite=True)
    assert [p.name for p in tmp_path.iterdir()] == ["out"] and [p.name for p in out.iterdir()] == ["notes.txt"]
    monkeypatch.undo()

    model.save_pretrained(out, overwrite=True)
    assert not (out / "notes.txt").exists() and (out / "model.safetensors").is_file()
    assert [p.name for p in tmp_path.iterdir()] == ["out"]  # no hidden staging or replaced folder left behind
    empty = tmp_path / "empty"
    empty.mkdir()
    assert (model.save_pretrained(empty) / "config.json").is_file()  # an empty folder is no one's work


def test_attached_wise_memory_is_refused(pico_llama, tmp_path):
    model = hooklab.load(pico_llama, device="cpu")
    hp = dataclasses.replace(hooklab.WiseHparams.for_model(model), layer=0, n_iter=4, context_lengths=((4, 1),))
    mem = hooklab.WiseMemory(model, hp, unrelated=["The weather today is sunny."]).add(FACTS[0])
    with pytest.raises(ExportError, match=r"cannot hold them.*mem\.save"):
        model.save_pretrained(tmp_path / "out")
    assert not list(tmp_path.iterdir())
    mem.detach()
    assert (model.save_pretrained(tmp_path / "out") / "model.safetensors").is_file()


def test_weight_processing_refused_unless_allowed(pico, tmp_path):
    model = hooklab.load(pico, device="cpu")
    before, fp = snapshot(model), model.fingerprint
    for call in (model.enable_compatibility_mode, model.process_weights):
        with pytest.raises(WeightRewriteError, match=r"fingerprint changes.*allow_weight_rewrite=True"):
            call()
    with pytest.raises(WeightRewriteError, match=r"no_processing=True"):
        model.enable_compatibility_mode(False, False)  # positional (disable_warnings, no_processing) are read too
    assert same_weights(model, before) and model.fingerprint == fp

    model.enable_compatibility_mode(disable_warnings=True, no_processing=True)  # hook names only: weights untouched
    assert same_weights(model, before) and model.fingerprint == fp
    assert model.bridge.compatibility_mode


def test_allowed_rewrite_does_to_edits_what_the_message_says(tmp_path, tokenizer_dir):
    """GPT-2 (layer norms with biases): processing centres the edited MLP output projection too."""
    model = hooklab.load(make_pico("gpt2", tmp_path / "gpt2", tokenizer_dir), device="cpu")
    edit = edited(model)
    path = edit.save(tmp_path / "e.safetensors")
    fp = model.fingerprint
    model.enable_compatibility_mode(disable_warnings=True, allow_weight_rewrite=True)
    assert model.fingerprint != fp
    with pytest.raises(EditMismatchError, match="changed after this edit was applied"):
        edit.undo()
    with pytest.raises(EditMismatchError, match="was made for a model with fingerprint"):
        hooklab.apply_edit(model, path)
    with pytest.raises(ExportError, match="Save the model before processing it"):
        model.save_pretrained(tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_cli_export(pico_llama, tmp_path, capsys):
    from hooklab.cli import main

    model = hooklab.load(pico_llama, device="cpu")
    edit = edited(model)
    path = edit.save(tmp_path / "e.safetensors")
    ids = model.to_tokens(PROMPT)
    expected = logits(model, ids)
    edit.undo()
    out = tmp_path / "out"
    main(["export", "--model", str(pico_llama), "--edit", str(path), "--out", str(out), "--max-shard-size", "40KB",
          "--device", "cpu"])  # fmt: skip
    assert f"1 edit(s) applied to {out}" in capsys.readouterr().out
    assert (out / "model.safetensors.index.json").is_file()
    assert torch.equal(logits(hooklab.load(out, device="cpu"), ids), expected)
    with pytest.raises(SystemExit) as exit:  # the folder is there now: a one-line error, exit status 1
        main(["export", "--model", str(pico_llama), "--out", str(out), "--device", "cpu"])
    assert exit.value.code == 1 and "pass overwrite=True" in capsys.readouterr().err
