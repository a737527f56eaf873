"""Edits as data: requests, computing without touching the model, apply / undo / save / load."""

from __future__ import annotations

import json

import pytest
import torch
from editing import FACTS, key_moments, llama, pico_llama4, same_weights, snapshot, stats  # noqa: F401 (fixtures)
from safetensors import safe_open

import hooklab
from hooklab import sites, tensorfiles
from hooklab.edit import deltas
from hooklab.edit.tokens import subject_prompt
from hooklab.errors import EditMismatchError, EditRequestError, RecordFormatError
from conftest import SHARED, make_pico

# ---------------------------------------------------------------- requests


def test_request_placeholder_space_and_literal_subject():
    r = hooklab.EditRequest("{} is located in the city of", "Eiffel Tower", "Rome")
    assert r.target == " Rome" and r.text == "Eiffel Tower is located in the city of"
    literal = hooklab.EditRequest("The Eiffel Tower is in", "Eiffel Tower", " Rome")
    assert literal.prompt == "The {} is in"
    assert hooklab.EditRequest("Q: {}? A: ", "x", "y").target == "y"  # the prompt ends with the space


@pytest.mark.parametrize(
    "prompt, subject, target, message",
    [
        ("The tower is in", "Eiffel Tower", " Rome", "not in the prompt"),
        ("{} is in", "Eiffel Tower", "", "target"),
        ("{} is in", "Eiffel Tower", "   ", "target"),
        ("{} is in", " ", " Rome", "subject is empty"),
        ("{} and {} are in", "A", " Rome", "once"),
        ("{0} is in", "A", " Rome", "once"),
    ],
)
def test_bad_requests(prompt, subject, target, message):
    with pytest.raises(EditRequestError, match=message):
        hooklab.EditRequest(prompt, subject, target)


def test_request_from_dict_is_strict():
    assert hooklab.EditRequest.from_dict(FACTS[0].to_dict()) == FACTS[0]
    with pytest.raises(EditRequestError, match="exactly the keys"):
        hooklab.EditRequest.from_dict({**FACTS[0].to_dict(), "case_id": 3})


def test_requests_from_counterfact_and_zsre():
    cf = json.loads((SHARED / "data" / "counterfact_known_dev.json").read_text())[:3]
    requests = hooklab.requests_from_counterfact(cf)
    assert requests[0] == hooklab.EditRequest("The mother tongue of {} is", "Danielle Darrieux", " English")
    zsre = json.loads((SHARED / "data" / "zsre" / "zsre_mend_train_1k.json").read_text())[:2]
    z = hooklab.requests_from_zsre(zsre)
    assert z[0] == hooklab.EditRequest("What is the product made by {}?", "UniFirst", " unmanned aircraft")
    with pytest.raises(RecordFormatError, match="record 1 is not a zsRE record"):
        hooklab.requests_from_zsre([zsre[0], {"src": "x"}])
    with pytest.raises(EditRequestError, match="record 0: the subject 'Nobody' is not in the prompt"):
        hooklab.requests_from_zsre([{**zsre[0], "subject": "Nobody"}])


def test_subject_last_token_from_offsets(smollm2, pico_llama):
    """The index agrees with counting the tokens of the text up to the subject's end."""
    for tok in (smollm2.tokenizer, hooklab.load(pico_llama, device="cpu").tokenizer):
        for template, subject in [("{} is in", "Danielle Darrieux"), ("The mother tongue of {} is", "Jean Galland"),
                                  ("x. The river {} flows", "Thames"), ("{}", "Paris")]:  # fmt: skip
            p = subject_prompt(tok, template, subject)
            text = template.format(subject)
            end = template.index("{}") + len(subject)
            assert list(p.ids) == tok(text)["input_ids"]
            assert p.subject_last == len(tok(text[:end])["input_ids"]) - 1
            assert tok.decode(p.ids[p.subject_last]).strip() in subject


# ---------------------------------------------------------------- compute, apply, undo


@pytest.mark.parametrize("method", ["rome", "memit"])
def test_compute_leaves_model_bit_identical_apply_changes_only_edited_layers(llama, stats, method):
    before = snapshot(llama)
    fp = llama.fingerprint
    e = hooklab.compute_edit(llama, FACTS[:2], method, stats=stats)
    assert same_weights(llama, before) and llama.fingerprint == fp and not e.applied
    assert e.base_fingerprint == fp
    e.apply(llama)
    changed = {name for name, w in llama.named_weights() if not torch.equal(w, before[name])}
    edited = {f"model.layers.{layer}.mlp.down_proj.weight" for layer in e.layers}
    assert changed == edited
    for layer in e.layers:  # the weight moved by exactly the update (up to rounding)
        site = sites.mlp_out(llama, layer)
        w0 = before[f"model.layers.{layer}.mlp.down_proj.weight"]
        assert torch.allclose(site.weight, w0 + e.updates[layer].matrix(), atol=1e-6)
    e.undo()
    assert same_weights(llama, before) and llama.fingerprint == fp


def test_edit_is_applied_and_undone_context(llama, stats):
    before = snapshot(llama)
    e = hooklab.edit(llama, FACTS[0], "rome", stats=stats)
    assert e.applied and not same_weights(llama, before)
    edited = snapshot(llama)
    with e.undone():
        assert same_weights(llama, before)
    assert same_weights(llama, edited)
    e.undo()
    with pytest.raises(EditMismatchError, match="not applied"):
        e.undo()


def test_stacked_edits_undo_in_order(llama, stats):
    before = snapshot(llama)
    first = hooklab.edit(llama, FACTS[0], "rome", stats=stats)
    second = hooklab.edit(llama, FACTS[1], "rome", stats=stats)  # same layer, computed on the edited model
    assert second.base_fingerprint != first.base_fingerprint
    with pytest.raises(EditMismatchError, match="undo the later edits first"):
        first.undo()
    second.undo()
    first.undo()
    assert same_weights(llama, before)


def test_fingerprint_vouched_after_undo_equals_recomputed(llama, stats):
    fp = llama.fingerprint
    e = hooklab.edit(llama, FACTS[0], "rome", stats=stats)
    e.undo()
    assert llama.fingerprint == fp  # vouched without hashing
    llama._fingerprint = None
    assert llama.fingerprint == fp  # and the same when hashed again


# ---------------------------------------------------------------- files


def test_save_load_roundtrip_and_apply_edit(llama, stats, tmp_path):
    before = snapshot(llama)
    e = hooklab.edit(llama, FACTS[:2], "memit", stats=stats)
    edited = snapshot(llama)
    path = e.save(tmp_path / "e.safetensors")
    e.undo()
    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata()
        names = set(f.keys())
    assert meta["base_fingerprint"] == llama.fingerprint and meta["method"] == "memit"
    assert [hooklab.EditRequest.from_dict(r) for r in json.loads(meta["requests"])] == FACTS[:2]
    assert json.loads(meta["hparams"]) == e.hparams
    assert names == {f"layers.{layer}.{part}" for layer in e.layers for part in ("left", "right")}  # rank 2: factors
    again = hooklab.apply_edit(llama, path)
    assert same_weights(llama, edited)  # the same bits as the in-memory apply
    assert again.requests == FACTS[:2] and again.layers == e.layers
    again.undo()
    assert same_weights(llama, before)
    assert path.stat().st_size < 4 * sum(u.left.numel() + u.right.numel() for u in e.updates.values()) + 8192


def test_apply_edit_refuses_another_base_model(llama, stats, tmp_path, tokenizer_dir):
    path = hooklab.compute_edit(llama, FACTS[0], "rome", stats=stats).save(tmp_path / "e.safetensors")
    other = hooklab.load(make_pico("llama", tmp_path / "other", tokenizer_dir, seed=1), device="cpu")
    before = snapshot(other)
    with pytest.raises(EditMismatchError, match="was made for a model with fingerprint"):
        hooklab.apply_edit(other, path)
    assert same_weights(other, before)
    (tmp_path / "junk.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(EditMismatchError, match="not a readable safetensors"):
        hooklab.apply_edit(llama, tmp_path / "junk.safetensors")


def test_save_is_atomic(llama, stats, tmp_path, monkeypatch):
    e = hooklab.compute_edit(llama, FACTS[0], "rome", stats=stats)
    path = e.save(tmp_path / "e.safetensors")
    original = path.read_bytes()

    def broken(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(tensorfiles, "save_file", broken)
    with pytest.raises(OSError, match="disk full"):
        e.save(path)
    assert path.read_bytes() == original and [p.name for p in tmp_path.iterdir()] == ["e.safetensors"]


def test_multi_slot_placement_same_edit(pico_llama4):
    """Layers on two device slots, the edit window across both: the same updates as on one device."""
    one = hooklab.load(pico_llama4, device="cpu")
    two = hooklab.load(pico_llama4, devices=["cpu", "cpu"])
    assert two.placement.layers == (0, 0, 1, 1)
    stats = key_moments(one, range(4))
    hp = hooklab.MemitHparams(layers=(1, 2), v_steps=6, context_lengths=((5, 2),))
    a = hooklab.compute_edit(one, FACTS, "memit", hparams=hp, stats=stats)
    b = hooklab.compute_edit(two, FACTS, "memit", hparams=hp, stats=stats)
    for layer in (1, 2):
        assert torch.allclose(a.updates[layer].matrix(), b.updates[layer].matrix(), atol=1e-5)


@pytest.mark.gpu
def test_updates_live_on_each_layers_gpu(pico_llama4):
    """On two GPUs every layer's update is made and kept on the GPU that holds the layer."""
    if torch.cuda.device_count() < 2:
        pytest.skip("needs 2 GPUs")
    model = hooklab.load(pico_llama4, n_devices=2)
    stats = key_moments(model, range(4))
    hp = hooklab.MemitHparams(layers=(1, 2), v_steps=6, context_lengths=((5, 2),))
    e = hooklab.compute_edit(model, FACTS, "memit", hparams=hp, stats=stats)
    for layer, update in e.updates.items():
        assert update.left.device == update.right.device == sites.mlp_out(model, layer).device
    assert {str(u.left.device) for u in e.updates.values()} == {"cuda:0", "cuda:1"}
    before = snapshot(model)
    e.apply(model)
    e.undo()
    assert same_weights(model, before)


def test_cli_edit_then_eval(pico_llama, tmp_path, capsys, tokenizer_dir):
    """`hooklab edit` writes an edit file; `hooklab eval` scores the model without and with it."""
    from hooklab.cli import main

    requests = tmp_path / "requests.json"
    requests.write_text(json.dumps([f.to_dict() for f in FACTS[:2]]))
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("The Eiffel Tower is in Paris. Mount Fuji is the highest mountain in Japan.\n" * 60)
    out = tmp_path / "edit.safetensors"
    main(["edit", "--model", str(pico_llama), "--requests", str(requests), "--method", "memit", "--stats", str(corpus),
          "--out", str(out), "--device", "cpu"])  # fmt: skip
    assert "memit" in capsys.readouterr().out and deltas.read_metadata(out)["method"] == "memit"
    records = tmp_path / "records.json"
    records.write_text(json.dumps([{
        "requested_rewrite": {"prompt": f.prompt, "subject": f.subject, "target_new": {"str": f.target.strip()},
                              "target_true": {"str": "Tokyo"}},
        "paraphrase_prompts": [], "neighborhood_prompts": ["Mount Fuji is in"], "generation_prompts": [],
    } for f in FACTS[:2]]))  # fmt: skip
    main(["eval", "--model", str(pico_llama), "--edit", str(out), "--data", str(records), "--no-fluency",
          "--json", str(tmp_path / "m.json"), "--device", "cpu"])  # fmt: skip
    printed = capsys.readouterr().out
    assert "unedited" in printed and "edited" in printed
    metrics = json.loads((tmp_path / "m.json").read_text())
    assert set(metrics["edited"]) == {"es", "ps", "ns", "em", "pm", "nm", "fluency"}
    other = make_pico("llama", tmp_path / "other", tokenizer_dir, seed=1)
    with pytest.raises(SystemExit) as exit:  # another model: a one-line error, exit status 1
        main(["eval", "--model", str(other), "--edit", str(out), "--data", str(records), "--no-fluency"])
    assert exit.value.code == 1 and "was made for a model with fingerprint" in capsys.readouterr().err
