"""WISE: routing against a plain computation, detach, save/load, rejected edits, shards, placement."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch
from conftest import make_pico
from editing import FACTS, llama, same_weights, snapshot  # noqa: F401 (fixtures)

import hooklab
from hooklab import sites
from hooklab.edit.wise.pool import UnrelatedPool
from hooklab.edit.wise.router import SKETCH, _projection, attached_router
from hooklab.edit.wise.shards import Shards, random_mask
from hooklab.errors import EditMismatchError, EditRequestError, EditSolveError, HparamsError, WiseMemoryError
from hooklab.merge.methods import ties

UNRELATED = [
    "Researchers load a model and cache its activations.",
    "The Colosseum is in Rome, the capital of Italy.",
    "A merge combines several fine-tuned models into one.",
    "nq question: who wrote the declaration of independence Thomas Jefferson",
    "nq question: when did the first world war start 1914",
    "The weather today is sunny with a light breeze.",
    "She plays the piano and the violin in an orchestra.",
    "nq question: what is the largest planet in the solar system Jupiter",
]
# Unrelated prompts not trained on: routing must stay off on them too.
HELD_OUT = ["The Louvre is located in the city of", "nq question: who painted the mona lisa Leonardo da Vinci"]


def hparams(model, **changes) -> hooklab.WiseHparams:
    """Quick settings for the pico models (whose random keys routing cannot separate: they test mechanics).

    The side memory in layer 0, so training runs the block above it from the cache.
    """
    base = hooklab.WiseHparams.for_model(model)
    small = dict(layer=0, n_iter=10, edit_lr=0.1, context_lengths=((4, 1),), n_unrelated=4, alpha=1.0, beta=4.0, gamma=2.0)
    return dataclasses.replace(base, **(small | changes))


def logits(model, text: str) -> torch.Tensor:
    with torch.no_grad():
        return model(model.to_tokens(text))


def top_token(model, text: str) -> int:
    return int(logits(model, text)[0, -1].argmax())


def target_token(model, request) -> int:
    return model.tokenizer(request.target, add_special_tokens=False)["input_ids"][0]


@pytest.fixture(scope="module")
def memory(smollm2):
    """Three facts trained into a memory on SmolLM2 with the default settings (detached after the module)."""
    texts = [r.text for r in FACTS] + UNRELATED + HELD_OUT
    before = {t: logits(smollm2, t) for t in texts}
    mem = hooklab.WiseMemory(smollm2, unrelated=UNRELATED)
    mem.add(FACTS)
    yield mem, before
    mem.detach()


def test_defaults_and_strict_hparams(llama, smollm2):  # noqa: F811
    """The side memory at half depth: layer 15 of SmolLM2's 30; hyperparameters load strictly."""
    assert hooklab.WiseHparams.for_model(smollm2).layer == 15  # half of 30 layers
    assert hooklab.WiseHparams.for_model(llama).layer == 1
    data = hooklab.WiseHparams.for_model(llama).to_dict()
    with pytest.raises(HparamsError, match="unknown field"):
        hooklab.WiseMemory(llama, data | {"mask_rate": 0.2})
    with pytest.raises(HparamsError, match="mask_ratio"):
        hooklab.WiseMemory(llama, data | {"mask_ratio": 1.5})
    with pytest.raises(HparamsError, match="floor_quantile"):
        hooklab.WiseMemory(llama, data | {"floor_quantile": 1.5})
    with pytest.raises(HparamsError, match="out of range"):
        hooklab.WiseMemory(llama, data | {"layer": 7})


@pytest.mark.slow
def test_edits_answer_and_routing_is_selective(memory, smollm2):
    mem, before = memory
    assert len(mem) == 3 and mem.is_attached
    for request in FACTS:
        assert mem.routed(request.text)[-1], request  # the prompt's last token asks the side memory
        assert top_token(smollm2, request.text) == target_token(smollm2, request)
    for text in UNRELATED + HELD_OUT:
        assert not mem.routed(text).any(), text
        assert torch.equal(logits(smollm2, text), before[text])  # main weights answer: bit for bit


@pytest.mark.slow
def test_threshold_floor_is_a_quantile_of_the_unrelated_scores(memory):
    """ε = max(act_ratio × the edits' lowest score, the floor: the unrelated texts' highest scores under the sides
    now, at floor_quantile rounded up to a text, so with under 100 texts at 0.99 the highest of them)."""
    mem, _ = memory
    highest = sorted(float(plain_routing(mem, mem._keys([text])[0].double())[1].max()) for text in UNRELATED)
    assert mem.hparams.floor_quantile == 0.99 and len(highest) < 100
    assert mem.unrelated_ceiling == pytest.approx(highest[-1], rel=1e-5)
    assert mem.threshold == pytest.approx(max(mem.hparams.act_ratio * min(mem.edit_scores), highest[-1]), rel=1e-5)
    mem.hparams = dataclasses.replace(mem.hparams, floor_quantile=0.0)  # the lowest text's score
    try:
        mem._update_ceiling()
        assert mem.unrelated_ceiling == pytest.approx(highest[0], rel=1e-5)
    finally:
        mem.hparams = dataclasses.replace(mem.hparams, floor_quantile=0.99)
        mem._update_ceiling()


def plain_routing(mem, a: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Each token's side (owner of the stored key with the highest cosine in the router's projection) and its
    score, in float64."""
    keys = [k.double() for k in mem.shards.side_keys()]
    owner = torch.cat([torch.full((len(k),), i) for i, k in enumerate(keys)])
    projection = _projection(a.shape[-1], a.device)
    project = (lambda x: x) if projection is None else (lambda x: x @ projection.double())
    assert (projection is None) == (a.shape[-1] <= SKETCH)  # SmolLM2's 1536 are projected, the pico models' not
    cosine = torch.nn.functional.normalize(project(a), dim=-1) @ torch.nn.functional.normalize(project(torch.cat(keys)), dim=-1).T
    which = owner[cosine.argmax(-1)]
    sides = [d.double() for d in mem.shards.sides()]
    return which, torch.stack([(a[t] @ sides[int(which[t])].T).norm() for t in range(len(a))])


def layer_io(model, layer: int, text: str) -> tuple[torch.Tensor, torch.Tensor]:
    """The keys a and the output of ``layer``'s MLP output projection for ``text`` (float64)."""
    site, found = sites.mlp_out(model, layer), {}
    with torch.no_grad(), model.hooks(fwd_hooks=[(site.hook_in, lambda a, hook: found.setdefault("a", a)),
                                               (site.hook_out, lambda o, hook: found.setdefault("out", o))]):  # fmt: skip
        model(model.to_tokens(text))
    return found["a"][0].double(), found["out"][0].double()


def expected_output(mem, a: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """W_side a + b for the token's side where its score is above ε, else W_main a + b; and which tokens."""
    site = mem.site
    which, score = plain_routing(mem, a)
    bias = site.module.bias.double() if getattr(site.module, "bias", None) is not None else 0.0
    main = a @ site.weight.double().T + bias
    sides = mem.shards.sides()
    side = torch.stack([a[t] @ (site.weight.double() + sides[int(which[t])].double()).T for t in range(len(a))]) + bias
    routed = score > mem.threshold
    return torch.where(routed[:, None], side, main), routed


@pytest.mark.slow
def test_router_output_matches_a_plain_computation(memory, smollm2):
    """The layer's output is W_side a + b where the token's side scores ‖Δ a‖ > ε, else W_main a + b."""
    mem, _ = memory
    text = FACTS[0].text + " and " + UNRELATED[0]  # routed and unrouted tokens in one row
    a, out = layer_io(smollm2, mem.hparams.layer, text)
    expected, routed = expected_output(mem, a)
    assert routed.any() and not routed.all()
    assert torch.equal(mem.routed(text), routed)
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)


def test_several_sides_route_by_their_stored_keys(pico_llama):
    """One shard per edit, never merged: each edit's prompt goes to its own side; the floor's pool, kept up to
    date edit by edit, agrees with one computed afresh."""
    model = hooklab.load(pico_llama, device="cpu")
    mem = hooklab.WiseMemory(model, hparams(model, edits_per_shard=1, shards_per_merge=0), unrelated=UNRELATED)
    try:
        for request in FACTS:
            mem.add(request)
        assert len(mem.shards.sides()) == len(FACTS) and mem.shards.merged is None
        for i, request in enumerate(FACTS):
            a, out = layer_io(model, 0, request.text)
            which, _ = plain_routing(mem, a)
            assert int(which[-1]) == i  # its own stored key, its own side
            expected, _ = expected_output(mem, a)
            torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)
        fresh = UnrelatedPool(mem._unrelated_pool().texts).highest(mem.shards.sides(), mem.shards.side_keys())
        plain = torch.stack([plain_routing(mem, t.double())[1].max() for t in mem._unrelated_pool().texts])
        torch.testing.assert_close(fresh.double(), plain, rtol=1e-5, atol=1e-5)
        assert mem.unrelated_ceiling == pytest.approx(float(plain.max()), rel=1e-5)  # 8 texts: the quantile is the top
    finally:
        mem.detach()


@pytest.mark.slow
def test_each_shard_answers_its_own_edits(memory, smollm2):
    """One shard per edit on SmolLM2 (keys compared in the projection): each prompt goes to its own side and gets
    its new answer, and the layer's output is the plain computation's."""
    fixture, _ = memory
    fixture.detach()
    hp = dataclasses.replace(fixture.hparams, edits_per_shard=1)
    mem = hooklab.WiseMemory(smollm2, hp, unrelated=UNRELATED).add(FACTS)
    try:
        assert len(mem.shards.sides()) == 3
        for i, request in enumerate(FACTS):
            a, out = layer_io(smollm2, hp.layer, request.text)
            which, score = plain_routing(mem, a)
            assert int(which[-1]) == i and score[-1] > mem.threshold
            expected, _ = expected_output(mem, a)
            torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)
            assert top_token(smollm2, request.text) == target_token(smollm2, request)
    finally:
        mem.detach()
        fixture.attach()


@pytest.mark.slow
def test_detach_restores_the_model_bit_exactly(memory, smollm2):
    mem, before = memory
    snap = snapshot(smollm2)
    with mem.undone():
        assert attached_router(sites.mlp_out(smollm2, mem.hparams.layer).module) is None  # no hook: no cost
        for text, expected in before.items():
            assert torch.equal(logits(smollm2, text), expected)
    assert mem.is_attached and top_token(smollm2, FACTS[0].text) == target_token(smollm2, FACTS[0])
    assert same_weights(smollm2, snap)  # the memory never wrote a model weight
    mem.detach()
    try:
        assert torch.equal(logits(smollm2, FACTS[1].text), before[FACTS[1].text])
        with mem.attached():
            assert top_token(smollm2, FACTS[1].text) == target_token(smollm2, FACTS[1])
        assert not mem.is_attached
    finally:
        mem.attach()


@pytest.mark.slow
def test_one_memory_per_layer(memory, smollm2):
    mem, _ = memory
    with pytest.raises(WiseMemoryError, match="already has a WISE side memory"):
        hooklab.WiseMemory(smollm2, mem.hparams, unrelated=UNRELATED)


@pytest.mark.slow
def test_save_load_round_trip(memory, smollm2, tmp_path):
    mem, _ = memory
    path = mem.save(tmp_path / "memory.safetensors")
    expected = {r.text: logits(smollm2, r.text) for r in FACTS}
    mem.detach()
    try:
        loaded = hooklab.WiseMemory.load(smollm2, path)
        try:
            assert len(loaded) == 3 and loaded.threshold == mem.threshold and loaded.requests == mem.requests
            assert torch.equal(loaded.shards.current.values, mem.shards.current.values)  # what later edits replay
            for a, b in zip(loaded.shards.side_keys(), mem.shards.side_keys(), strict=True):  # what routing compares
                assert torch.equal(a, b)
            for text, out in expected.items():
                assert torch.equal(logits(smollm2, text), out)
        finally:
            loaded.detach()
    finally:
        mem.attach()


@pytest.mark.slow
def test_load_refuses_another_model_and_damaged_files(memory, llama, tmp_path, tokenizer_dir):  # noqa: F811
    mem, _ = memory
    path = mem.save(tmp_path / "memory.safetensors")
    other = hooklab.load(make_pico("llama", tmp_path / "other", tokenizer_dir, seed=1), device="cpu")
    with pytest.raises(EditMismatchError, match="fingerprint"):
        hooklab.WiseMemory.load(other, path)
    assert all(attached_router(sites.mlp_out(other, i).module) is None for i in range(other.cfg.n_layers))
    (tmp_path / "junk.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(WiseMemoryError, match="not a readable safetensors file"):
        hooklab.WiseMemory.load(llama, tmp_path / "junk.safetensors")
    with pytest.raises(WiseMemoryError, match="no WISE memory file at .*missing.safetensors"):
        hooklab.WiseMemory.load(llama, tmp_path / "missing.safetensors")


@pytest.mark.slow
def test_diverging_edit_is_rejected_and_the_memory_unchanged(memory, smollm2):
    mem, _ = memory
    state = [d.clone() for d in mem.shards.sides()], mem.threshold, len(mem), mem.shards.n_started
    out = logits(smollm2, FACTS[2].text)
    request = hooklab.EditRequest("{} was born in the city of", "Ada Lovelace", " Tokyo")
    good = mem.hparams
    mem.hparams = dataclasses.replace(good, edit_lr=float("inf"))
    try:
        with pytest.raises(EditSolveError, match="diverged.*memory is unchanged"):
            mem.add(request)
    finally:
        mem.hparams = good
    sides, threshold, n, started = state
    assert len(mem) == n and mem.threshold == threshold and mem.shards.n_started == started
    assert all(torch.equal(a, b) for a, b in zip(mem.shards.sides(), sides, strict=True))
    assert mem.is_attached and torch.equal(logits(smollm2, FACTS[2].text), out)


def test_edit_wise_method_and_bad_requests(pico_llama):
    model = hooklab.load(pico_llama, device="cpu")
    with pytest.raises(EditRequestError):
        hooklab.edit(model, [{"prompt": "no subject here"}], method="wise", hparams=hparams(model))
    assert attached_router(sites.mlp_out(model, 0).module) is None  # nothing left behind
    before = logits(model, FACTS[0].text)
    mem = hooklab.edit(model, FACTS[0], method="wise", hparams=hparams(model))
    try:
        assert isinstance(mem, hooklab.WiseMemory) and mem.is_attached and len(mem) == 1
        assert attached_router(sites.mlp_out(model, 0).module) is not None
    finally:
        mem.detach()
    assert torch.equal(logits(model, FACTS[0].text), before)
    with pytest.raises(EditRequestError, match="no compute-only form"):
        hooklab.compute_edit(model, FACTS[0], method="wise")


def test_shards_are_masked_and_merged_with_ties(pico_llama, tmp_path):
    """One edit per shard, two shards per merge: each shard changes only its mask's entries, then they merge
    (and the merged side, with both edits' keys, survives a save and load)."""
    model = hooklab.load(pico_llama, device="cpu")
    hp = hparams(model, edits_per_shard=1, shards_per_merge=2, mask_ratio=0.5)
    mem = hooklab.WiseMemory(model, hp, unrelated=UNRELATED)
    try:
        mem.add(FACTS[0])
        (first,) = mem.shards.done
        assert not first.delta[~first.mask].any() and first.delta[first.mask].any()
        keys = first.keys
        mem.add(FACTS[1])
        assert mem.shards.done == [] and mem.shards.current is None and len(mem) == 2
        assert mem.shards.merged is not None and len(mem.shards.sides()) == 1
        assert torch.equal(mem.shards.merged_keys[: len(keys)], keys)  # the merged side answers both edits' keys
        path = mem.save(tmp_path / "merged.safetensors")
        expected = logits(model, FACTS[0].text)
    finally:
        mem.detach()
    loaded = hooklab.WiseMemory.load(model, path)
    try:
        assert torch.equal(loaded.shards.merged, mem.shards.merged) and loaded.shards.n_merged == 2
        assert torch.equal(loaded.shards.merged_keys, mem.shards.merged_keys)
        assert torch.equal(logits(model, FACTS[0].text), expected)
    finally:
        loaded.detach()


def test_merge_is_ties_of_the_shards_then_of_the_memory():
    """The first merge weighs the shards equally; later ones keep 0.6 of what was merged before."""
    gen = torch.Generator().manual_seed(0)
    deltas = [torch.randn(6, 10, generator=gen) for _ in range(4)]
    shards = Shards()
    for i, delta in enumerate(deltas):
        shard = shards.begin((6, 10), 0.5, seed=0, device=torch.device("cpu"))
        assert torch.equal(shard.mask, random_mask((6, 10), 0.5, i, torch.device("cpu")))  # a new mask per shard
        shard.delta, shard.n_edits, shard.keys = delta, 1, torch.full((2, 10), float(i))
        shards.close_if_full(edits_per_shard=1, shards_per_merge=2, density=0.5)
    first = ties(torch.zeros(6, 10), deltas[:2], [0.5, 0.5], 0.5)
    expected = ties(torch.zeros(6, 10), [*deltas[2:], first], [0.2, 0.2, 0.6], 0.5)
    torch.testing.assert_close(shards.merged, expected)
    assert shards.n_started == 4 and shards.done == [] and shards.current is None
    assert torch.equal(shards.merged_keys[:, 0], torch.tensor([0.0, 0, 1, 1, 2, 2, 3, 3]))  # every edit's keys, in order


def test_two_slot_placement_trains_the_same_memory(pico_llama):
    one = hooklab.load(pico_llama, device="cpu")
    two = hooklab.load(pico_llama, devices=["cpu", "cpu"])
    assert two.placement.layers == (0, 1)  # the side memory on slot 0, the block above it on slot 1
    memories = [hooklab.WiseMemory(m, hparams(m), unrelated=UNRELATED).add(FACTS[:2]) for m in (one, two)]
    try:
        a, b = (m.shards.sides() for m in memories)
        torch.testing.assert_close(a, b)
        assert memories[0].threshold == pytest.approx(memories[1].threshold, rel=1e-5)
        for request in FACTS[:2]:
            torch.testing.assert_close(logits(one, request.text), logits(two, request.text))
    finally:
        for m in memories:
            m.detach()


@pytest.mark.gpu
def test_memory_lives_on_its_layers_gpu(pico_llama):
    if torch.cuda.device_count() < 2:
        pytest.skip("needs 2 GPUs")
    model = hooklab.load(pico_llama, n_devices=2)
    mem = hooklab.WiseMemory(model, hparams(model, layer=0), unrelated=UNRELATED).add(FACTS[0])
    try:
        assert all(d.device == sites.layer_device(model, 0) for d in mem.shards.sides())
        assert logits(model, FACTS[0].text).isfinite().all()
    finally:
        mem.detach()


def test_cli_wise(pico_llama, tmp_path, capsys):
    from hooklab.cli import main

    requests, unrelated = tmp_path / "requests.json", tmp_path / "unrelated.json"
    requests.write_text(json.dumps([r.to_dict() for r in FACTS[:2]]))
    unrelated.write_text(json.dumps(UNRELATED))
    model = hooklab.load(pico_llama, device="cpu")
    hp = tmp_path / "hparams.json"
    hp.write_text(json.dumps(hparams(model).to_dict()))
    main(["wise", "--model", str(pico_llama), "--requests", str(requests), "--unrelated", str(unrelated),
          "--hparams", str(hp), "--out", str(tmp_path / "memory.safetensors"), "--device", "cpu"])  # fmt: skip
    assert "2 edit(s)" in capsys.readouterr().out
    loaded = hooklab.WiseMemory.load(model, tmp_path / "memory.safetensors")
    try:
        assert len(loaded) == 2 and loaded.requests == FACTS[:2] and loaded.unrelated == UNRELATED
    finally:
        loaded.detach()
