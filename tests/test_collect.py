"""hooklab.collect: the same numbers as run_with_cache, on disk and resumable, clear errors."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

import hooklab
from hooklab import errors
from hooklab.cache.store import HEADER_BYTES, MANIFEST

PROMPTS = [
    "The Eiffel Tower is located in the city of",
    "Mount Fuji",
    "Researchers load a model, cache its activations and edit it.",
    "Rome",
    "The river Thames flows through London.",
]
LINES = [
    "The Eiffel Tower is located in the city of Paris.",
    "",
    "The Colosseum is in Rome. Mount Fuji is the highest mountain in Japan.",
    "   ",
    "The river Thames flows through London, and researchers trace where a fact lives.",
] * 6


def corpus_file(tmp_path, lines=LINES):
    path = tmp_path / "corpus.txt"
    path.write_text("\n".join(lines) + "\n")
    return path


def total_hooks(model) -> int:
    return sum(len(hp.fwd_hooks) for hp in set(model.hook_dict.values()))


def counting(model, name):
    """A hook of the caller's own that counts the forwards reaching ``name``."""
    calls = []
    return model.hooks(fwd_hooks=[(name, lambda x, hook: calls.append(x.shape[0]))]), calls


def test_collect_equals_run_with_cache(pico):
    model = hooklab.load(pico, device="cpu")
    names = ["hook_resid_post", "mlp.out.hook_in", "attn.hook_z", "hook_embed"]
    acts = hooklab.collect(model, PROMPTS, names=names, batch_size=2, progress=False)  # padded batches
    assert set(acts) == {f"blocks.{i}.{n}" for i in range(2) for n in names[:3]} | {"hook_embed"}
    assert acts.n_tokens == sum(model.to_tokens(p).shape[1] for p in PROMPTS)
    for s, prompt in enumerate(PROMPTS):
        tokens = model.to_tokens(prompt)
        _, cache = model.run_with_cache(tokens)
        rows = acts.sequence == s
        assert torch.equal(acts.tokens[rows], tokens[0])
        assert torch.equal(acts.position[rows], torch.arange(tokens.shape[1]))
        for name in acts:
            assert torch.allclose(acts[name][rows], cache[name][0], atol=1e-5, rtol=1e-5), name
    assert total_hooks(model) == 0


def test_last_positions_and_mask(pico_llama):
    model = hooklab.load(pico_llama, device="cpu")
    last = hooklab.collect(model, PROMPTS, layers=[1], positions="last", batch_size=3, progress=False)
    lengths = [model.to_tokens(p).shape[1] for p in PROMPTS]
    assert last.sequence.tolist() == list(range(len(PROMPTS)))
    assert last.position.tolist() == [n - 1 for n in lengths]
    mask = torch.zeros(len(PROMPTS), max(lengths), dtype=torch.bool)
    mask[:, 1] = True  # the second token of each prompt
    second = hooklab.collect(model, PROMPTS, layers=[1], positions=mask, progress=False)
    assert second.position.tolist() == [1] * len(PROMPTS)
    for s, prompt in enumerate(PROMPTS):
        _, cache = model.run_with_cache(prompt)
        resid = cache["blocks.1.hook_resid_post"][0]
        assert torch.allclose(last["blocks.1.hook_resid_post"][s], resid[-1], atol=1e-5)
        assert torch.allclose(second["blocks.1.hook_resid_post"][s], resid[1], atol=1e-5)


def test_packed_file_rows_are_the_token_stream(pico_llama, tmp_path):
    model = hooklab.load(pico_llama, device="cpu")
    path = corpus_file(tmp_path)
    acts = hooklab.collect(model, path, layers=[0], max_length=16, batch_size=3, max_tokens=150, progress=False)
    tok = model.tokenizer
    stream = []
    for line in LINES:
        if line.strip():
            stream += tok(line).input_ids + [tok.eos_token_id]
    stream = torch.tensor(stream[:150])
    assert acts.n_tokens == 150 and torch.equal(acts.tokens, stream)
    rows = stream[:144].reshape(9, 16)
    _, cache = model.run_with_cache(rows)
    expected = cache["blocks.0.hook_resid_post"].reshape(-1, model.cfg.d_model)
    assert torch.allclose(acts["blocks.0.hook_resid_post"][:144], expected, atol=1e-5)
    # the same stream given as token ids is the same collection
    ids = hooklab.collect(model, stream, layers=[0], max_length=16, progress=False)
    assert torch.allclose(ids["blocks.0.hook_resid_post"], acts["blocks.0.hook_resid_post"], atol=1e-5)


def test_out_is_memory_mapped_safetensors(pico_llama, tmp_path):
    model = hooklab.load(pico_llama, device="cpu")
    in_memory = hooklab.collect(model, PROMPTS, names="mlp.out.hook_in", batch_size=2, progress=False)
    on_disk = hooklab.collect(model, PROMPTS, names="mlp.out.hook_in", batch_size=2, out=tmp_path / "acts",
                              dtype="bfloat16", progress=False)  # fmt: skip
    assert json.loads((tmp_path / "acts" / MANIFEST).read_text())["complete"] is True
    assert torch.equal(on_disk.index, in_memory.index)
    for name in in_memory:
        file = tmp_path / "acts" / f"{name}.safetensors"
        assert on_disk[name].dtype == torch.bfloat16
        assert torch.equal(on_disk[name], in_memory[name].to(torch.bfloat16))
        assert torch.equal(load_file(file)[name], on_disk[name])  # a plain safetensors file
        before = file.read_bytes()
        on_disk[name].zero_()  # copy-on-write: the file does not change
        assert file.read_bytes() == before
    again = hooklab.Activations.load(tmp_path / "acts")
    assert torch.equal(again["blocks.1.mlp.out.hook_in"], in_memory["blocks.1.mlp.out.hook_in"].to(torch.bfloat16))


def test_resume_after_an_interrupted_run(pico_llama, tmp_path):
    model = hooklab.load(pico_llama, device="cpu")
    path = corpus_file(tmp_path)
    kwargs = dict(layers=[0, 1], names=["hook_resid_post", "mlp.out.hook_in"], max_length=8, batch_size=2,
                  shard_tokens=32, progress=False)  # 2 batches a shard  # fmt: skip
    reference = hooklab.collect(model, path, **kwargs)
    n_batches = -(-reference.n_tokens // 16)
    out = tmp_path / "acts"

    def crash_on_fifth(x, hook, seen=[]):  # noqa: B006 (counts the batches)
        seen.append(1)
        if len(seen) == 5:
            raise RuntimeError("power cut")

    with model.hooks(fwd_hooks=[("blocks.0.hook_resid_pre", crash_on_fifth)]):
        with pytest.raises(RuntimeError, match="power cut"):
            hooklab.collect(model, path, out=out, **kwargs)
    assert total_hooks(model) == 0
    manifest = json.loads((out / MANIFEST).read_text())
    assert manifest["complete"] is False and manifest["shards"] == 2  # batches 0-3 done, 4 failed
    rows = manifest["rows"]["blocks.1.hook_resid_post"]
    assert rows == 4 * 16
    assert load_file(out / "blocks.1.hook_resid_post.safetensors")["blocks.1.hook_resid_post"].shape[0] == rows
    partial = hooklab.Activations.load(out)
    assert torch.equal(partial["blocks.1.hook_resid_post"], reference["blocks.1.hook_resid_post"][:rows])

    hooks, calls = counting(model, "blocks.0.hook_resid_pre")
    with hooks:
        resumed = hooklab.collect(model, path, out=out, **kwargs)
    assert len(calls) == n_batches - 4  # the finished shards were skipped
    for name in reference:
        assert torch.equal(resumed[name], reference[name])
    assert torch.equal(resumed.index, reference.index)
    hooks, calls = counting(model, "blocks.0.hook_resid_pre")
    with hooks:
        hooklab.collect(model, path, out=out, **kwargs)  # complete: opened, nothing runs
    assert calls == []
    with pytest.raises(errors.OutputDirError, match="different collection.*hooks"):
        hooklab.collect(model, path, out=out, **{**kwargs, "layers": [1]})


def test_stops_after_the_last_requested_layer(pico_llama):
    model = hooklab.load(pico_llama, device="cpu")
    hooks, calls = counting(model, "blocks.1.hook_resid_pre")
    with hooks:
        hooklab.collect(model, PROMPTS, layers=[0], progress=False)
    assert calls == []
    hooks, calls = counting(model, "blocks.1.hook_resid_pre")
    with hooks:
        hooklab.collect(model, PROMPTS, names="ln_final.hook_normalized", progress=False)
    assert calls == [len(PROMPTS)]  # the whole forward ran


def test_two_device_slots_give_the_same_numbers(pico_llama):
    one = hooklab.load(pico_llama, device="cpu")
    two = hooklab.load(pico_llama, devices=["cpu", "cpu"])
    assert len(set(two.placement.layers)) == 2
    a = hooklab.collect(one, PROMPTS, names="mlp.out.hook_in", progress=False)
    b = hooklab.collect(two, PROMPTS, names="mlp.out.hook_in", progress=False)
    for name in a:
        assert torch.allclose(a[name], b[name], atol=1e-6)


def test_run_with_cache_layers(pico):
    model = hooklab.load(pico, device="cpu")
    _, full = model.run_with_cache(PROMPTS[0])
    _, some = model.run_with_cache(PROMPTS[0], layers=[1])
    assert some.keys() and all(name.startswith("blocks.1.") for name in some.keys())
    assert torch.equal(some["blocks.1.hook_resid_post"], full["blocks.1.hook_resid_post"])
    _, two = model.run_with_cache(PROMPTS[0], layers=[0, 1], names_filter="blocks.0.hook_resid_post")
    assert list(two.keys()) == ["blocks.0.hook_resid_post"]
    with pytest.raises(errors.LayerIndexError, match=r"layer\(s\) \[2\].*0\.\.1"):
        model.run_with_cache(PROMPTS[0], layers=[2])


# -- bad input: a clear error, and nothing left behind ---------------------------------------


def test_unknown_hook_names_the_closest(pico_llama):
    model = hooklab.load(pico_llama, device="cpu")
    with pytest.raises(errors.HookNameError, match="no hook 'blocks.1.hook_resid_pots'.*blocks.1.hook_resid_post"):
        hooklab.collect(model, PROMPTS, names="blocks.1.hook_resid_pots")
    with pytest.raises(errors.HookNameError, match="Closest: hook_resid_post"):
        hooklab.collect(model, PROMPTS, names="hook_resid_pst", layers=[0])
    with pytest.raises(errors.LayerIndexError, match="layers 0..1"):
        hooklab.collect(model, PROMPTS, layers=[5])
    with pytest.raises(errors.UnsupportedHookError, match="run_with_cache"):
        hooklab.collect(model, PROMPTS, names="attn.hook_pattern", layers=[0])
    with pytest.raises(errors.UnsupportedHookError, match=r"switched off.*model.set_use_attn_result\(True\)"):
        hooklab.collect(model, PROMPTS, names="attn.hook_result", layers=[0])
    assert total_hooks(model) == 0


@pytest.mark.parametrize("kind", ["list", "blank strings", "file", "blank file", "tensor"])
def test_empty_corpus(pico_llama, tmp_path, kind):
    model = hooklab.load(pico_llama, device="cpu")
    data = {
        "list": [],
        "blank strings": ["", ""],
        "file": corpus_file(tmp_path, []),
        "blank file": corpus_file(tmp_path, ["", "  ", "\t"]),
        "tensor": torch.zeros(0, dtype=torch.long),
    }[kind]
    with pytest.raises(errors.EmptyCorpusError, match="no tokens"):
        hooklab.collect(model, data, out=tmp_path / "acts")
    assert not (tmp_path / "acts").exists()


def test_arguments_that_do_not_fit(pico_llama, tmp_path):
    model = hooklab.load(pico_llama, device="cpu")
    bad = [
        (dict(data=PROMPTS, out=tmp_path / "a", reduce="mean"), "Drop one of the two"),
        (dict(data=corpus_file(tmp_path), positions=torch.ones(3, 4, dtype=torch.bool)), "pack=False"),
        (dict(data=tmp_path / "missing.txt"), "is not a file"),
        (dict(data=torch.randn(4, 8)), "integer tensor"),
        (dict(data=PROMPTS, positions="first"), "'all', 'last' or a bool mask"),
        (dict(data=PROMPTS, reduce="variance"), "'mean' or 'second_moment'"),
        (dict(data=PROMPTS, batch_size=0), "batch_size must be at least 1"),
        (dict(data=PROMPTS, positions=torch.zeros(5, 20, dtype=torch.bool), reduce="mean", stats_cache=False),
         "kept no token"),
    ]  # fmt: skip
    for kwargs, message in bad:
        with pytest.raises(errors.CollectArgumentError, match=message):
            hooklab.collect(model, progress=False, **kwargs)
    assert not (tmp_path / "a").exists() and total_hooks(model) == 0


def test_unwritable_out(pico_llama, tmp_path):
    model = hooklab.load(pico_llama, device="cpu")
    a_file = tmp_path / "notes.txt"
    a_file.write_text("mine")
    with pytest.raises(errors.OutputDirError, match="is a file"):
        hooklab.collect(model, PROMPTS, out=a_file)
    with pytest.raises(errors.OutputDirError, match="cannot write activations"):
        hooklab.collect(model, PROMPTS, out=a_file / "acts")
    foreign = tmp_path / "results"
    foreign.mkdir()
    (foreign / "table.csv").write_text("a,b")
    with pytest.raises(errors.OutputDirError, match="not empty and is not an activation folder"):
        hooklab.collect(model, PROMPTS, out=foreign)
    assert a_file.read_text() == "mine" and [p.name for p in foreign.iterdir()] == ["table.csv"]


def test_a_disk_too_small_is_refused_up_front(pico_llama, tmp_path, monkeypatch):
    import shutil

    model = hooklab.load(pico_llama, device="cpu")
    usage = shutil.disk_usage(tmp_path)
    monkeypatch.setattr(shutil, "disk_usage", lambda path: usage._replace(free=1000))
    with pytest.raises(errors.OutputDirError, match="needs .* but only 1000 B is free.*bfloat16"):
        hooklab.collect(model, PROMPTS, out=tmp_path / "acts")
    manifest = json.loads((tmp_path / "acts" / MANIFEST).read_text())
    assert manifest["complete"] is False and manifest["shards"] == 0
    assert all(f.stat().st_size == HEADER_BYTES for f in (tmp_path / "acts").glob("*.safetensors"))  # no rows
    monkeypatch.undo()
    acts = hooklab.collect(model, PROMPTS, out=tmp_path / "acts", progress=False)  # with room, it runs
    assert acts.n_tokens == sum(model.to_tokens(p).shape[1] for p in PROMPTS)


def test_header_is_fixed_size(pico_llama, tmp_path):
    model = hooklab.load(pico_llama, device="cpu")
    acts = hooklab.collect(model, PROMPTS, layers=[0], out=tmp_path / "acts", progress=False)
    file = tmp_path / "acts" / "blocks.0.hook_resid_post.safetensors"
    assert file.stat().st_size == HEADER_BYTES + acts.n_tokens * model.cfg.d_model * 4


def test_cli_collect(pico_llama, tmp_path, capsys):
    from hooklab.cli import main

    path = corpus_file(tmp_path)
    main(["collect", str(path), "--model", str(pico_llama), "--device", "cpu", "--layers", "0-1",
          "--max-length", "16", "--max-tokens", "64", "--out", str(tmp_path / "acts")])  # fmt: skip
    assert "Activations(64 tokens" in capsys.readouterr().out
    acts = hooklab.Activations.load(tmp_path / "acts")
    assert set(acts) == {"blocks.0.hook_resid_post", "blocks.1.hook_resid_post"} and acts.n_tokens == 64
    with pytest.raises(SystemExit, match="give --out"):
        main(["collect", str(path), "--model", str(pico_llama)])


@pytest.mark.gpu
def test_on_gpus_the_same_numbers_as_on_the_cpu(pico_llama, tmp_path):
    cpu = hooklab.load(pico_llama, device="cpu")
    n = min(torch.cuda.device_count(), 2)
    gpu = hooklab.load(pico_llama, n_devices=n)
    names = ["hook_resid_post", "mlp.out.hook_in"]
    ref = hooklab.collect(cpu, PROMPTS, names=names, batch_size=2, progress=False)
    on_disk = hooklab.collect(gpu, PROMPTS, names=names, batch_size=2, out=tmp_path / "acts", progress=False)
    in_memory = hooklab.collect(gpu, PROMPTS, names=names, batch_size=2, progress=False)
    stats = hooklab.collect(gpu, PROMPTS, names="mlp.out.hook_in", batch_size=2, reduce="second_moment",
                            stats_cache=False, progress=False)  # fmt: skip
    for name in ref:
        assert torch.allclose(on_disk[name], ref[name], atol=1e-4) and torch.equal(on_disk[name], in_memory[name])
    for layer in range(2):
        s = stats[f"blocks.{layer}.mlp.out.hook_in"]
        assert s.moment.device == gpu.placement.device_of_layer(layer)  # accumulated where the layer is
        x = ref[f"blocks.{layer}.mlp.out.hook_in"].double()
        assert torch.allclose(s.moment.cpu(), x.T @ x / x.shape[0], atol=1e-3 * float(x.abs().max()) ** 2)
