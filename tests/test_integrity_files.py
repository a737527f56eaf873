"""Damaged, truncated and tampered files hooklab reads back: activation folders, edit files, WISE memories.

Each case damages a real file written by hooklab and asserts the HooklabError that names the
file and the fix; a collection is redone where it is damaged and then equals an undamaged one,
and a refused edit or memory leaves the model's weights bit for bit as they were.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import zlib
from pathlib import Path

import pytest
import torch
from editing import same_weights, snapshot
from safetensors import safe_open
from safetensors.torch import load_file, save_file

import hooklab
from hooklab import errors, sites
from hooklab.cache.store import HEADER_BYTES, MANIFEST
from hooklab.edit.deltas import Edit
from hooklab.edit.update import Update
from hooklab.edit.wise.router import attached_router
from hooklab.edit.wise.shards import Shard

REPO = Path(__file__).resolve().parents[1]
LINES = [
    "The Eiffel Tower is located in the city of Paris.",
    "The Colosseum is in Rome. Mount Fuji is the highest mountain in Japan.",
    "The river Thames flows through London, and researchers trace where a fact lives.",
] * 6
KWARGS = dict(layers=[0, 1], names=["hook_resid_post", "mlp.out.hook_in"], max_length=8, batch_size=2,
              shard_tokens=32, progress=False)  # 2 batches a shard  # fmt: skip
HOOK = "blocks.1.hook_resid_post"
FACT = hooklab.EditRequest("{} is located in the city of", "The Eiffel Tower", " Rome")


@pytest.fixture(scope="module")
def setup(pico_llama, tmp_path_factory):
    """The model, a corpus file, its activations in memory and a complete, undamaged folder of them."""
    model = hooklab.load(pico_llama, device="cpu")
    root = tmp_path_factory.mktemp("integrity")
    corpus = root / "corpus.txt"
    corpus.write_text("\n".join(LINES) + "\n")
    reference = hooklab.collect(model, corpus, **KWARGS)
    hooklab.collect(model, corpus, out=root / "pristine", **KWARGS)
    return model, corpus, reference, root / "pristine", pico_llama


@pytest.fixture
def folder(setup, tmp_path):
    """A copy of the complete folder, to damage."""
    return Path(shutil.copytree(setup[3], tmp_path / "acts"))


def forwards(model):
    """Hooks counting the batches that reach layer 0 (a resumed run skips the finished shards)."""
    calls = []
    return model.hooks(fwd_hooks=[("blocks.0.hook_resid_pre", lambda x, hook: calls.append(1))]), calls


def assert_equal_to(acts, reference):
    assert set(acts) == set(reference)
    for name in reference:
        assert torch.equal(acts[name], reference[name]), name
    assert torch.equal(acts.index, reference.index)


def manifest(out: Path) -> dict:
    return json.loads((out / MANIFEST).read_text())


def shard_end(out: Path, name: str, k: int) -> int:
    return manifest(out)["files"][k][name]["bytes"]


# -- activation folders ---------------------------------------------------------------------------


def test_manifest_records_each_shards_length_and_checksum(folder, setup):
    m = manifest(folder)
    assert m["format"] == "hooklab-activations/2" and m["complete"] and m["shards"] == len(m["files"]) > 3
    file = folder / f"{HOOK}.safetensors"
    data = file.read_bytes()
    start = HEADER_BYTES
    for shard in m["files"]:  # each shard's bytes have their recorded CRC-32; the last one ends the file
        end = shard[HOOK]
        assert f"{zlib.crc32(data[start:end['bytes']]):08x}" == end["crc32"]
        start = end["bytes"]
    assert start == len(data) == HEADER_BYTES + setup[2].n_tokens * 32 * 4
    assert_equal_to(hooklab.Activations.load(folder, verify=True), setup[2])


def test_killed_run_then_a_truncated_file_is_redone_not_zero_filled(setup, tmp_path):
    model, corpus, reference, _, source = setup
    out = tmp_path / "acts"
    child = tmp_path / "child.py"
    child.write_text(textwrap.dedent(f"""
        import json, os, signal, time
        import hooklab
        model = hooklab.load({str(source)!r}, device="cpu")
        out = {str(out)!r}
        seen = []

        def kill_in_the_third_shard(x, hook):  # batch 5 of shard 2, once shards 0 and 1 are recorded
            seen.append(1)
            if len(seen) == 6:
                deadline = time.time() + 60
                while json.loads(open(os.path.join(out, "manifest.json")).read())["shards"] < 2 and time.time() < deadline:
                    time.sleep(0.02)
                os.kill(os.getpid(), signal.SIGKILL)

        with model.hooks(fwd_hooks=[("blocks.0.hook_resid_pre", kill_in_the_third_shard)]):
            hooklab.collect(model, {str(corpus)!r}, out=out, **{KWARGS!r})
    """))
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    done = subprocess.run([sys.executable, str(child)], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == -signal.SIGKILL, done.stderr[-2000:]
    m = manifest(out)
    assert m["complete"] is False and m["shards"] == 2
    file = out / f"{HOOK}.safetensors"
    assert file.stat().st_size >= shard_end(out, HOOK, 1)  # shard 2's rows were being written
    partial = hooklab.Activations.load(out)  # the finished shards of a killed run open as they are
    rows = m["rows"][HOOK]
    assert partial[HOOK].shape[0] == rows and torch.equal(partial[HOOK], reference[HOOK][:rows])
    os.truncate(file, shard_end(out, HOOK, 0) + 100)  # inside shard 1
    with pytest.raises(errors.CorruptActivationsError, match=rf"{HOOK}.safetensors is truncated.*shard 1.*Rerun the collect"):
        hooklab.Activations.load(out)
    hooks, calls = forwards(model)
    with hooks:
        resumed = hooklab.collect(model, corpus, out=out, **KWARGS)
    n_batches = -(-reference.n_tokens // 16)
    assert len(calls) == n_batches - 2  # shard 0 kept, shard 1 onward redone
    assert_equal_to(resumed, reference)
    assert_equal_to(hooklab.Activations.load(out, verify=True), reference)


def test_flipped_bytes_are_found_by_verify_and_redone(folder, setup):
    model, corpus, reference = setup[:3]
    file = folder / f"{HOOK}.safetensors"
    spot = shard_end(folder, HOOK, 2) + 10  # a byte of shard 3
    data = bytearray(file.read_bytes())
    data[spot] ^= 0xFF
    file.write_bytes(bytes(data))
    hooklab.Activations.load(folder)  # lengths and headers are fine: the cheap check cannot see it
    with pytest.raises(errors.CorruptActivationsError, match=rf"{HOOK}.safetensors does not match the checksum of shard 3"):
        hooklab.Activations.load(folder, verify=True)
    hooks, calls = forwards(model)
    with hooks:
        again = hooklab.collect(model, corpus, out=folder, verify=True, **KWARGS)
    assert len(calls) == -(-reference.n_tokens // 16) - 6  # shards 0-2 kept
    assert_equal_to(again, reference)
    hooklab.Activations.load(folder, verify=True)


def test_garbled_header_is_found_by_default_and_rewritten(folder, setup):
    model, corpus, reference = setup[:3]
    file = folder / f"{HOOK}.safetensors"
    with open(file, "r+b") as f:
        f.seek(20)
        f.write(b"\x07garbage{")
    with pytest.raises(errors.CorruptActivationsError, match=rf"{HOOK}.safetensors has a garbled header"):
        hooklab.Activations.load(folder)
    hooks, calls = forwards(model)
    with hooks:
        again = hooklab.collect(model, corpus, out=folder, **KWARGS)
    assert calls == []  # the data was intact: only the header is written again
    assert_equal_to(again, reference)
    assert torch.equal(load_file(file)[HOOK], reference[HOOK])


def test_a_header_with_other_rows_or_dtype_is_refused(folder):
    file = folder / f"{HOOK}.safetensors"
    head = file.read_bytes()[:HEADER_BYTES]
    for old, new in [(b'"F32"', b'"I32"'), (b'"shape": [', b'"shape": [1')]:
        with open(file, "r+b") as f:
            f.write(head.replace(old, new, 1))
        with pytest.raises(errors.CorruptActivationsError, match=rf"{HOOK}.safetensors has a (garbled header|header of)"):
            hooklab.Activations.load(folder)


@pytest.mark.parametrize("victim", [f"{HOOK}.safetensors", "index.safetensors"])
def test_truncated_or_deleted_files(folder, setup, victim):
    model, corpus, reference = setup[:3]
    file = folder / victim
    os.truncate(file, file.stat().st_size - 7)
    with pytest.raises(errors.CorruptActivationsError, match=rf"{victim} is truncated: .* shard \d+ ends at byte"):
        hooklab.Activations.load(folder)
    file.unlink()
    with pytest.raises(errors.CorruptActivationsError, match=rf"{victim} is missing.*Rerun the collect call"):
        hooklab.Activations.load(folder)
    assert_equal_to(hooklab.collect(model, corpus, out=folder, **KWARGS), reference)  # redone from shard 0


def test_bytes_after_the_last_shard_of_a_complete_folder(folder, setup):
    file = folder / f"{HOOK}.safetensors"
    with open(file, "ab") as f:
        f.write(b"\0" * 128)
    with pytest.raises(errors.CorruptActivationsError, match="has 128 bytes after its last shard"):
        hooklab.Activations.load(folder)
    assert_equal_to(hooklab.collect(setup[0], setup[1], out=folder, **KWARGS), setup[2])
    assert file.stat().st_size == HEADER_BYTES + setup[2].n_tokens * 32 * 4


def test_manifest_rows_larger_than_the_files(folder):
    m = manifest(folder)
    m["rows"][HOOK] += 1000  # the rows alone: the manifest contradicts itself
    (folder / MANIFEST).write_text(json.dumps(m))
    with pytest.raises(errors.CorruptActivationsError, match=rf"{MANIFEST} is inconsistent.*Delete"):
        hooklab.Activations.load(folder)
    m["rows"][HOOK] -= 1000  # rows and the last shard's length, consistently: the file is too short
    last = m["files"][-1][HOOK]
    last["rows"] += 1000
    last["bytes"] += 1000 * 32 * 4
    m["rows"][HOOK] = last["rows"]
    (folder / MANIFEST).write_text(json.dumps(m))
    with pytest.raises(errors.CorruptActivationsError, match=rf"{HOOK}.safetensors is truncated"):
        hooklab.Activations.load(folder)


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda m: m.update(format="hooklab-activations/1"), "format 'hooklab-activations/1'.*collect them again"),
        (lambda m: m.update(format="hooklab-activations/9"), "format 'hooklab-activations/9'.*reads only"),
        (lambda m: m["streams"][HOOK].update(file="../outside.safetensors"), "inconsistent.*valid file"),
        (lambda m: m["files"].pop(), "inconsistent.*shards says"),
        (lambda m: m["files"][0][HOOK].pop("crc32"), "inconsistent.*checksum"),
    ],
)
def test_manifests_of_another_version_or_tampered(folder, setup, change, message):
    m = manifest(folder)
    change(m)
    (folder / MANIFEST).write_text(json.dumps(m))
    with pytest.raises(errors.OutputDirError, match=message):
        hooklab.Activations.load(folder)
    with pytest.raises(errors.OutputDirError, match=message):  # a rerun refuses it the same way
        hooklab.collect(setup[0], setup[1], out=folder, **KWARGS)


@pytest.mark.parametrize(
    "content, message",
    [
        (b"\x89PNG\r\n\x1a\n\xff\xfe\x00\x10" * 50, "not UTF-8 text.*iconv"),
        ("Paris is a city.\nCaf\xe9 au lait\n".encode("latin-1"), "not UTF-8 text \\(line 2, byte 20: invalid continuation byte"),
        (b"tokens\n\x00\x00\x00\x01\x00\x00\x00\x02\n", "NUL bytes.*line 2.*binary"),
    ],
)
def test_a_binary_or_non_utf8_corpus_is_refused(setup, tmp_path, content, message):
    path = tmp_path / "corpus.bin"
    path.write_bytes(content)
    with pytest.raises(errors.CorpusEncodingError, match=message):
        hooklab.collect(setup[0], path, layers=[0], progress=False)


# -- edit files -----------------------------------------------------------------------------------


def make_edit(model) -> Edit:
    """A ROME-shaped rank-one edit of the model's edit layer (no solve needed to test the file)."""
    hp = hooklab.RomeHparams.for_model(model)
    d_model, d_mlp = sites.mlp_out(model, hp.layer).weight.shape
    g = torch.Generator().manual_seed(0)
    update = Update(hp.layer, torch.randn(d_model, 1, generator=g), 0.05 * torch.randn(d_mlp, 1, generator=g))
    return Edit("rome", {hp.layer: update}, model.fingerprint, [FACT], hp.to_dict(), model.name)


def rewrite(path: Path, out: Path, tensors=None, meta=None) -> Path:
    """A copy of a safetensors file with its tensors and/or metadata changed by the given functions."""
    with safe_open(str(path), framework="pt") as f:
        metadata = dict(f.metadata())
    content = load_file(path)
    if tensors:
        content = tensors(content) or content
    if meta:
        metadata = meta(metadata) or metadata
    save_file(content, out, metadata=metadata)
    return out


def renamed(tensors: dict, old: str, new: str) -> dict:
    return {k.replace(old, new): v for k, v in tensors.items()}


@pytest.fixture(scope="module")
def edit_file(setup, tmp_path_factory):
    model = setup[0]
    return make_edit(model).save(tmp_path_factory.mktemp("edit") / "edit.safetensors")


def test_a_sound_edit_file_applies_exactly_and_undoes(setup, edit_file):
    model = setup[0]
    before = snapshot(model)
    edit = hooklab.apply_edit(model, edit_file)
    site = sites.mlp_out(model, edit.layers[0])
    update = edit.updates[edit.layers[0]]
    layer_before = dict(before)[next(n for n, w in model.named_weights() if w is site.module.weight)]
    expected = (layer_before.T if site.transposed else layer_before) + update.left @ update.right.T
    assert torch.allclose(site.weight, expected, atol=1e-6) and not same_weights(model, before)
    edit.undo()
    assert same_weights(model, before)


L = 0  # RomeHparams.for_model's layer on a 2-layer model
BAD_EDITS = {
    "factors stored as integers": (
        dict(tensors=lambda t: {k: (v * 100).to(torch.int32) for k, v in t.items()}),
        rf"tensor layers.{L}.left is I32, but it must be F16 or BF16 or F32 or F64"),
    "1-D factors": (
        dict(tensors=lambda t: {k: v[:, 0] for k, v in t.items()}),
        rf"tensor layers.{L}.left has shape \[32\], but it must be \[d_model=32, requests=1\]"),
    "factors of mismatched ranks": (
        dict(tensors=lambda t: {**t, f"layers.{L}.right": torch.cat([t[f"layers.{L}.right"]] * 2, 1)}),
        rf"layers.{L}.right has shape \[64, 2\], but it must be \[d_mlp=64, requests=1\]"),
    "a factor of another width": (
        dict(tensors=lambda t: {**t, f"layers.{L}.left": t[f"layers.{L}.left"][:31]}),
        rf"layers.{L}.left has shape \[31, 1\], but it must be \[d_model=32, requests=1\].*another model"),
    "a dense update transposed": (
        dict(tensors=lambda t: {f"layers.{L}.dense": (t[f"layers.{L}.left"] @ t[f"layers.{L}.right"].T).T.contiguous()}),
        rf"layers.{L}.dense has shape \[64, 32\], but it must be \[d_model=32, d_mlp=64\]"),
    "a listed layer without tensors": (
        dict(tensors=lambda t: {"other": torch.zeros(1)}),
        rf"lacks tensor\(s\) \['layers.{L}.left', 'layers.{L}.right'\]"),
    "a tensor no layer lists": (
        dict(tensors=lambda t: {**t, "layers.1.dense": torch.zeros(32, 64)}),
        r"holds tensor\(s\) \['layers.1.dense'\] that its metadata does not account for"),
    "dense and factors of one layer": (
        dict(tensors=lambda t: {**t, f"layers.{L}.dense": torch.zeros(32, 64)}),
        rf"holds tensor\(s\) \['layers.{L}.left', 'layers.{L}.right'\]"),
    "a layer out of range": (
        dict(tensors=lambda t: renamed(t, f"layers.{L}.", "layers.7."),
             meta=lambda m: {**m, "layers": "[7]", "hparams": json.dumps({**json.loads(m["hparams"]), "layer": 7})}),
        r"edits layer\(s\) \[7\] out of range: the model has layers 0..1"),
    "layers the hparams do not edit": (
        dict(meta=lambda m: {**m, "layers": "[0, 1]"}), r"lists layers \[0, 1\], but its rome hparams edit \[0\]"),
    "no base_fingerprint": (
        dict(meta=lambda m: {k: v for k, v in m.items() if k != "base_fingerprint"}), r"lacks metadata \['base_fingerprint'\]"),
    "layers not JSON": (dict(meta=lambda m: {**m, "layers": "[0,"}), "metadata 'layers' is not JSON"),
    "hparams not JSON": (dict(meta=lambda m: {**m, "hparams": "{layer: 0"}), "metadata 'hparams' is not JSON"),
    "layers not a list": (dict(meta=lambda m: {**m, "layers": '"0"'}), "metadata 'layers' is str, not list"),
    "requests that are not requests": (dict(meta=lambda m: {**m, "requests": "[1, 2]"}), "holds something other than edit requests"),
    "an unknown method": (dict(meta=lambda m: {**m, "method": "mend"}),
                          r"method 'mend'; edit files hold the updates of a registered method \(rome, memit, alphaedit\)"),
    "another version": (dict(meta=lambda m: {**m, "version": "9"}), "version 9; this hooklab reads version 1"),
}  # fmt: skip


@pytest.mark.parametrize("case", sorted(BAD_EDITS))
def test_bad_edit_files_are_refused_and_the_weights_stay(setup, edit_file, tmp_path, case):
    model = setup[0]
    change, message = BAD_EDITS[case]
    bad = rewrite(edit_file, tmp_path / "bad.safetensors", **change)
    before = snapshot(model)
    with pytest.raises(errors.EditFileError, match=message) as e:
        hooklab.apply_edit(model, bad)
    assert str(bad) in str(e.value)
    assert same_weights(model, before)


def test_edit_files_missing_damaged_or_not_finite(setup, edit_file, tmp_path):
    model = setup[0]
    before = snapshot(model)
    with pytest.raises(errors.EditFileError, match=r"no edit file at .*missing.safetensors \(no such file\)"):
        hooklab.apply_edit(model, tmp_path / "missing.safetensors")
    cut = tmp_path / "cut.safetensors"
    cut.write_bytes(edit_file.read_bytes()[:-9])
    with pytest.raises(errors.EditFileError, match="cut.safetensors is not a readable safetensors file"):
        hooklab.apply_edit(model, cut)
    with pytest.raises(errors.EditFileError, match="is I32"):  # Edit.load checks the file on its own as well
        Edit.load(rewrite(edit_file, tmp_path / "int.safetensors", tensors=lambda t: {k: v.int() for k, v in t.items()}))
    far = rewrite(edit_file, tmp_path / "far.safetensors", tensors=lambda t: renamed(t, f"layers.{L}.", "layers.7."),
                  meta=lambda m: {**m, "layers": "[7]", "hparams": json.dumps({**json.loads(m["hparams"]), "layer": 7})})
    with pytest.raises(errors.LayerIndexError, match=r"layer\(s\) \[7\] out of range"):  # loaded alone, then applied
        Edit.load(far).apply(model)
    nan = rewrite(edit_file, tmp_path / "nan.safetensors", tensors=lambda t: {k: v.clone().fill_(float("nan")) for k, v in t.items()})
    with pytest.raises(errors.EditSolveError, match="NaN or infinite values; nothing was applied"):
        hooklab.apply_edit(model, nan)
    assert same_weights(model, before)


def test_sites_refuse_layers_out_of_range(setup):
    model = setup[0]
    for find in (sites.mlp_out, sites.block):
        with pytest.raises(errors.LayerIndexError, match=r"layer\(s\) \[2\] out of range: the model has layers 0..1"):
            find(model, 2)


# -- WISE memory files ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def memory_file(setup, tmp_path_factory):
    """A WISE memory with a completed and an open shard (set directly: the file is what is tested)."""
    model = setup[0]
    hp = dataclasses.replace(hooklab.WiseHparams.for_model(model), layer=0, context_lengths=((4, 1),))
    memory = hooklab.WiseMemory(model, hp, unrelated=["The sky is blue.", "Cats sleep a lot."])
    memory.detach()
    shape = tuple(memory.site.weight.shape)  # (d_model, d_mlp)
    g = torch.Generator().manual_seed(0)
    memory.shards.done = [Shard(0.01 * torch.randn(shape, generator=g), torch.rand(shape, generator=g) < 0.5, 1,
                                torch.randn(3, shape[1], generator=g))]  # fmt: skip
    memory.shards.current = Shard(0.01 * torch.randn(shape, generator=g), torch.rand(shape, generator=g) < 0.5, 1,
                                  torch.randn(2, shape[1], generator=g), torch.randn(2, shape[0], generator=g))  # fmt: skip
    memory.shards.n_started = 2
    memory.edit_scores, memory.requests = [1.0, 1.0], [FACT, FACT]
    return memory.save(tmp_path_factory.mktemp("wise") / "memory.safetensors")


def no_router(model) -> bool:
    return all(attached_router(sites.mlp_out(model, i).module) is None for i in range(model.cfg.n_layers))


def test_a_sound_memory_file_loads(setup, memory_file):
    model = setup[0]
    memory = hooklab.WiseMemory.load(model, memory_file)
    try:
        assert len(memory.shards.done) == 1 and memory.shards.current.keys.shape == (2, 64)
        assert torch.equal(memory.shards.done[0].delta, load_file(memory_file)["done.0.delta"])
    finally:
        memory.detach()
    assert no_router(model)


BAD_MEMORIES = {
    "a mask stored as floats": (dict(tensors=lambda t: {**t, "done.0.mask": t["done.0.mask"].float()}),
                                "tensor done.0.mask is F32, but it must be BOOL"),
    "a change stored as integers": (dict(tensors=lambda t: {**t, "current.delta": t["current.delta"].int()}),
                                    "tensor current.delta is I32, but it must be F16"),
    "a change of another shape": (dict(tensors=lambda t: {**t, "done.0.delta": t["done.0.delta"][:, :10].contiguous()}),
                                  r"done.0.delta has shape \[32, 10\], but it must be \[d_model=32, d_mlp=64\].*another architecture"),
    "keys of another width": (dict(tensors=lambda t: {**t, "done.0.keys": t["done.0.keys"][:, :7].contiguous()}),
                              r"done.0.keys has shape \[3, 7\], but it must be \[keys 0=3, d_mlp=64\]"),
    "values and keys of different counts": (dict(tensors=lambda t: {**t, "current.values": t["current.values"][:1].contiguous()}),
                                            r"current.values has shape \[1, 32\], but it must be \[current keys=2, d_model=32\]"),
    "more done shards counted than stored": (
        dict(meta=lambda m: {**m, "shard_edits": json.dumps({"done": [1, 1], "current": 1, "started": 3, "merged": 0})}),
        r"lacks tensor\(s\) \['done.1.delta', 'done.1.keys', 'done.1.mask'\]"),
    "an open shard stored but not counted": (
        dict(meta=lambda m: {**m, "shard_edits": json.dumps({"done": [1], "current": None, "started": 2, "merged": 0})}),
        r"holds tensor\(s\) \['current.delta', 'current.keys', 'current.mask', 'current.values'\]"),
    "shard counts that do not add up": (
        dict(meta=lambda m: {**m, "shard_edits": json.dumps({"done": [1], "current": 1, "started": 1, "merged": 0})}),
        "'shard_edits' is not a valid set of shard counts"),
    "hparams not JSON": (dict(meta=lambda m: {**m, "hparams": "{"}), "metadata 'hparams' is not JSON"),
    "hparams of a layer out of range": (
        dict(meta=lambda m: {**m, "hparams": json.dumps({**json.loads(m["hparams"]), "layer": 5})}),
        "hparams do not fit this model.*layer\\(s\\) \\[5\\] out of range"),
    "no shard counts": (dict(meta=lambda m: {k: v for k, v in m.items() if k != "shard_edits"}), r"lacks metadata \['shard_edits'\]"),
    "edit scores not numbers": (dict(meta=lambda m: {**m, "edit_scores": '["a"]'}), "malformed"),
    "no unrelated texts": (dict(meta=lambda m: {**m, "unrelated": "[]"}), "malformed.*save the memory again"),
    "another version": (dict(meta=lambda m: {**m, "version": "3"}), "version 3; this hooklab reads version 4"),
}  # fmt: skip


@pytest.mark.parametrize("case", sorted(BAD_MEMORIES))
def test_bad_memory_files_are_refused_and_nothing_is_attached(setup, memory_file, tmp_path, case):
    model = setup[0]
    change, message = BAD_MEMORIES[case]
    bad = rewrite(memory_file, tmp_path / "bad.safetensors", **change)
    before = snapshot(model)
    with pytest.raises(errors.WiseMemoryError, match=message) as e:
        hooklab.WiseMemory.load(model, bad)
    assert str(bad) in str(e.value)
    assert same_weights(model, before) and no_router(model)


def test_a_missing_memory_file(setup, tmp_path):
    with pytest.raises(errors.WiseMemoryError, match=r"no WISE memory file at .*nothing.safetensors"):
        hooklab.WiseMemory.load(setup[0], tmp_path / "nothing.safetensors")
    with pytest.raises(errors.WiseMemoryError, match=r"\(a folder\)"):
        hooklab.WiseMemory.load(setup[0], tmp_path)
