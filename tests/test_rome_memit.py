"""ROME and MEMIT against plain reference computations; hyperparameters; bad input leaves no trace."""

from __future__ import annotations

import json

import pytest
import torch
from editing import FACTS, key_moments, llama, pico_llama4, same_weights, snapshot, stats  # noqa: F401 (fixtures)

import hooklab
from hooklab import sites
from hooklab.edit.contexts import context_templates
from hooklab.edit.forward import SplitRows, final_residual
from hooklab.edit.memit.main import solve_update
from hooklab.edit.rome.compute_u import compute_u, subject_keys
from hooklab.edit.tokens import pad_id, subject_prompt
from hooklab.edit.upper import UpperRows
from hooklab.edit.values import optimise_values
from hooklab.errors import EditRequestError, EditSolveError, HparamsError

FAST_ROME = dict(v_steps=8, context_lengths=[[5, 3]])


def rome_hp(model, **kw) -> hooklab.RomeHparams:
    return hooklab.RomeHparams.from_dict({**hooklab.RomeHparams.for_model(model).to_dict(), **FAST_ROME, **kw})


def test_split_rows_equal_the_full_forward(pico):
    """Prefix once + suffixes on its cached keys/values = the whole rows (padding on both sides)."""
    model = hooklab.load(pico, device="cpu")
    tok = model.tokenizer
    rows = [tok(t)["input_ids"] for t in ["The Eiffel Tower is in Paris", "Thames", "Mount Fuji is the highest mountain"]]
    split = [3, 0, 5]  # the second row has no prefix at all
    got = SplitRows(model, rows, split, pad_id(tok)).run(grad=False)
    for i, (row, s) in enumerate(zip(rows, split)):
        with torch.no_grad():
            full = final_residual(model, torch.tensor([row]))[0]
        assert torch.allclose(got[i, : len(row) - s], full[s:], atol=1e-4), i


@pytest.mark.parametrize("first", [0, 1, 2])
def test_upper_rows_replay_the_blocks_above(pico, first):
    """Blocks ``first``.. replayed on the recorded input = the whole rows; a change there = adding it in a full forward."""
    model = hooklab.load(pico, device="cpu")
    tok = model.tokenizer
    rows = [tok(t)["input_ids"] for t in ["The Eiffel Tower is in Paris", "Mount Fuji is the highest mountain"]]
    split = [3, 5]
    upper = UpperRows(model, rows, split, first, pad_id(tok))
    change = torch.zeros_like(upper.resid)
    change[:, 0] = torch.randn(model.cfg.d_model)
    got = upper.run(change)
    for i, (row, s) in enumerate(zip(rows, split)):

        def add(resid, hook, s=s, i=i):
            resid = resid.clone()
            resid[0, s] += change[i, 0]
            return resid

        name = sites.resid_pre(first) if first < model.cfg.n_layers else sites.resid_post(first - 1)
        with torch.no_grad():
            full = final_residual(model, torch.tensor([row]), hooks=[(name, add)])[0]
        assert torch.allclose(got[i, : len(row) - s], full[s:], atol=1e-4), i
        assert torch.allclose(upper.run()[i, : len(row) - s], final_residual(model, torch.tensor([row]))[0, s:], atol=1e-4)


def test_compute_u_is_whitened_mean_key(llama, stats):
    """u = C⁻¹ k* / ‖C⁻¹ k*‖, k* the mean of the layer's keys at the subject's last token (run_with_cache)."""
    request, layer = FACTS[0], 1
    templates = context_templates(llama, [(5, 3)], seed=0)
    keys = subject_keys(llama, request, layer, templates)
    name = sites.mlp_out(llama, layer).hook_in
    expected = []
    for t in templates:
        p = subject_prompt(llama.tokenizer, t.format(request.prompt), request.subject)
        _, cache = llama.run_with_cache(torch.tensor([p.ids]), names_filter=[name])
        expected.append(cache[name][0, p.subject_last])
    assert torch.allclose(keys, torch.stack(expected), atol=1e-5)
    c = stats[name]
    u = torch.linalg.inv(c) @ torch.stack(expected).double().mean(0)
    assert torch.allclose(compute_u(keys, c), (u / u.norm()).float(), atol=1e-5)


def test_rome_writes_the_optimised_value(pico):
    """After applying, the projection's output at the subject's last token moved by v uᵀk = δ (any orientation)."""
    model = hooklab.load(pico, device="cpu")
    stats = key_moments(model, range(model.cfg.n_layers))
    fact = FACTS[0]
    site = sites.mlp_out(model, 0)
    p = subject_prompt(model.tokenizer, fact.prompt, fact.subject)
    ids = torch.tensor([p.ids])

    def read(name):
        with torch.no_grad():
            return model.run_with_cache(ids, names_filter=[name])[1][name][0, p.subject_last]

    out_before, k = read(site.hook_out), read(site.hook_in)
    e = hooklab.edit(model, fact, "rome", hparams=rome_hp(model, layer=0), stats=stats)
    out_after = read(site.hook_out)
    e.undo()
    v, u = e.updates[0].left[:, 0], e.updates[0].right[:, 0]
    assert torch.allclose(out_after - out_before, v * (u @ k), atol=1e-4)
    assert (out_after - out_before).norm() > 0.1


@pytest.mark.parametrize("where", ["mlp", "resid"])
@pytest.mark.parametrize("layer", [0, 2])
def test_optimised_value_raises_the_target_in_a_plain_forward(pico_llama4, where, layer):
    """δ's reported probability is what a full forward with δ added at the subject's last token gives
    (the optimisation itself runs only the blocks from ``layer`` on)."""
    llama = hooklab.load(pico_llama4, device="cpu")
    fact = FACTS[2]
    hook = sites.mlp_out(llama, layer).hook_out if where == "mlp" else sites.resid_post(layer)
    hp = rome_hp(llama, v_steps=12)
    values = optimise_values(llama, [fact], ["{}"], layer, hook, hp)
    p = subject_prompt(llama.tokenizer, fact.prompt, fact.subject)
    target = llama.tokenizer(fact.target, add_special_tokens=False)["input_ids"]
    ids = torch.tensor([list(p.ids) + target[:-1]])

    def add(act, hook):
        act = act.clone()
        act[0, p.subject_last] += values.delta[0]
        return act

    def target_prob(hooks):
        with torch.no_grad(), llama.hooks(fwd_hooks=hooks):
            lp = llama(ids)[0].log_softmax(-1)
        return torch.stack([lp[len(p.ids) - 1 + j, t] for j, t in enumerate(target)]).mean().exp()

    assert torch.allclose(target_prob([(hook, add)]), values.prob[0], rtol=1e-4)
    assert values.prob[0] > (2 if layer == 0 else 1) * target_prob([])  # two random blocks above layer 2 move it less
    assert torch.equal(values.init[0], llama.run_with_cache(ids, names_filter=[hook])[1][hook][0, p.subject_last])


def test_memit_closes_the_residual_gap(llama, stats):
    """With λ → 0 and the prompt alone as context, the window moves h_L onto z."""
    hp = hooklab.MemitHparams.from_dict(
        {**hooklab.MemitHparams.for_model(llama).to_dict(), "mom2_update_weight": 1e-6, "context_lengths": [], "v_steps": 10}
    )
    fact = FACTS[1]
    p = subject_prompt(llama.tokenizer, fact.prompt, fact.subject)
    name = sites.resid_post(hp.layers[-1])

    def resid():
        return llama.run_with_cache(torch.tensor([p.ids]), names_filter=[name])[1][name][0, p.subject_last]

    with torch.no_grad():
        before = resid()
    from hooklab.edit.memit.compute_z import compute_z

    z, _ = compute_z(llama, [fact], hp.layers[-1], ["{}"], hp)
    e = hooklab.edit(llama, fact, "memit", hparams=hp, stats=stats)
    with torch.no_grad():
        after = resid()
    e.undo()
    assert (z[0] - before).norm() > 0.1
    assert (z[0] - after).norm() < 1e-3 * (z[0] - before).norm()


def test_memit_lambda_grows_with_large_batches(llama, stats):
    """Beyond mom2_batch_scale requests λ scales with the batch: the same updates as that λ given fixed."""
    base = {**hooklab.MemitHparams.for_model(llama).to_dict(), "context_lengths": [], "v_steps": 4}
    scaled = hooklab.MemitHparams.from_dict({**base, "mom2_update_weight": 2.0, "mom2_batch_scale": 2})
    fixed = hooklab.MemitHparams.from_dict({**base, "mom2_update_weight": 3.0, "mom2_batch_scale": 0})
    assert scaled.update_weight(2) == 2.0 and scaled.update_weight(3) == 3.0 and fixed.update_weight(300) == 3.0
    facts = FACTS[:3]
    a = hooklab.compute_edit(llama, facts, "memit", hparams=scaled, stats=stats)
    b = hooklab.compute_edit(llama, facts, "memit", hparams=fixed, stats=stats)
    for layer in scaled.layers:
        assert torch.allclose(a.updates[layer].matrix(), b.updates[layer].matrix(), atol=1e-6)


def test_memit_solve_matches_the_formula():
    gen = torch.Generator().manual_seed(0)
    d_mlp, d_model, n = 12, 5, 4
    a = torch.randn(50, d_mlp, generator=gen, dtype=torch.float64)
    c = a.T @ a / 50
    keys, resid = torch.randn(n, d_mlp, generator=gen), torch.randn(n, d_model, generator=gen)
    left, right = solve_update(keys, resid, c, 3.0)
    k, r = keys.T.double(), resid.T.double()
    expected = r @ k.T @ torch.linalg.inv(3.0 * c + k @ k.T)
    assert torch.allclose((left.double() @ right.double().T), expected, atol=1e-5)


def test_rome_sequential_requests_see_earlier_ones(llama, stats):
    """Two requests in one ROME edit equal two ROME edits applied one after the other."""
    hp = rome_hp(llama, context_lengths=[])  # no generated prefixes: they would differ on the edited model
    both = hooklab.compute_edit(llama, FACTS[:2], "rome", hparams=hp, stats=stats)
    first = hooklab.edit(llama, FACTS[0], "rome", hparams=hp, stats=stats)
    second = hooklab.compute_edit(llama, FACTS[1], "rome", hparams=hp, stats=stats)
    first.undo()
    layer = hp.layer
    stacked = first.updates[layer].matrix() + second.updates[layer].matrix()
    assert both.updates[layer].rank == 2
    assert torch.allclose(both.updates[layer].matrix(), stacked, atol=1e-4)


# ---------------------------------------------------------------- bad input leaves the model as it was


def no_hooks_left(model) -> bool:
    return not any(hp.has_hooks() for hp in model.hook_dict.values())


def grad_flags(model) -> list[bool]:
    return [w.requires_grad for _, w in model.named_weights()]


@pytest.mark.parametrize("method", ["rome", "memit"])
def test_nan_statistics_fail_cleanly(llama, stats, method):
    before, flags = snapshot(llama), grad_flags(llama)
    poisoned = dict(stats)
    for name in poisoned:
        poisoned[name] = poisoned[name].clone()
        poisoned[name][0, 0] = float("nan")
    with pytest.raises(EditSolveError, match="NaN"):
        hooklab.edit(llama, FACTS[:2], method, hparams=None if method == "memit" else rome_hp(llama), stats=poisoned)
    assert same_weights(llama, before) and no_hooks_left(llama) and grad_flags(llama) == flags


def test_singular_statistics_fail_cleanly(llama):
    before = snapshot(llama)
    zeros = {sites.mlp_out(llama, layer).hook_in: torch.zeros(64, 64, dtype=torch.float64) for layer in range(2)}
    with pytest.raises(EditSolveError, match="singular"):
        hooklab.edit(llama, FACTS[0], "rome", hparams=rome_hp(llama), stats=zeros)
    assert same_weights(llama, before) and no_hooks_left(llama)


def test_bad_requests_fail_before_any_work(llama, stats, monkeypatch):
    before = snapshot(llama)
    with pytest.raises(EditRequestError, match="not in the prompt"):
        hooklab.edit(llama, {"prompt": "The tower is in", "subject": "Eiffel", "target": " Rome"}, stats=stats)
    with pytest.raises(EditRequestError, match="target"):
        hooklab.edit(llama, {"prompt": "{} is in", "subject": "Eiffel", "target": ""}, stats=stats)
    tokenizer = llama.tokenizer

    class Drops:  # a tokenizer that maps the target's text to no token at all
        def __getattr__(self, name):
            return getattr(tokenizer, name)

        def __call__(self, text, **kwargs):
            return {"input_ids": []} if text == " \u200b" else tokenizer(text, **kwargs)

    monkeypatch.setattr(llama, "tokenizer", Drops())
    with pytest.raises(EditRequestError, match="tokenizes to nothing"):
        hooklab.edit(llama, {"prompt": "{} is in", "subject": "Eiffel", "target": " \u200b"}, stats=stats)
    monkeypatch.undo()
    with pytest.raises(EditRequestError, match="need statistics"):
        hooklab.edit(llama, FACTS[0])
    with pytest.raises(EditRequestError, match="no entry for"):
        hooklab.edit(llama, FACTS[0], hparams=rome_hp(llama), stats={})
    assert same_weights(llama, before) and no_hooks_left(llama)


def test_apply_refuses_non_finite_update(llama, stats):
    before = snapshot(llama)
    e = hooklab.compute_edit(llama, FACTS[0], "rome", hparams=rome_hp(llama), stats=stats)
    e.updates[e.layers[0]].left[0, 0] = float("inf")
    with pytest.raises(EditSolveError, match="nothing was applied"):
        e.apply(llama)
    assert same_weights(llama, before) and not e.applied


# ---------------------------------------------------------------- hyperparameters


def test_hparams_strict_loading(tmp_path, llama):
    hp = hooklab.MemitHparams.for_model(llama)
    data = hp.to_dict()
    assert hooklab.MemitHparams.from_dict(data) == hp
    (tmp_path / "h.json").write_text(json.dumps(data))
    (tmp_path / "h.yaml").write_text("".join(f"{k}: {json.dumps(v)}\n" for k, v in data.items()))
    assert hooklab.MemitHparams.from_file(tmp_path / "h.json") == hp == hooklab.MemitHparams.from_file(tmp_path / "h.yaml")
    with pytest.raises(HparamsError, match=r"unknown field\(s\) \['mom2_update_wieght'\]"):
        hooklab.MemitHparams.from_dict({**data, "mom2_update_wieght": 1.0})
    with pytest.raises(HparamsError, match=r"missing field\(s\) \['seed'\]"):
        hooklab.MemitHparams.from_dict({k: v for k, v in data.items() if k != "seed"})
    with pytest.raises(HparamsError, match="must be an integer"):
        hooklab.MemitHparams.from_dict({**data, "v_steps": 2.5})
    with pytest.raises(HparamsError, match="must have 2 entries"):
        hooklab.MemitHparams.from_dict({**data, "context_lengths": [[10, 5, 1]]})
    with pytest.raises(HparamsError, match="out of range"):
        hooklab.edit(llama, FACTS[0], "rome", hparams=rome_hp(llama, layer=7), stats={})
    with pytest.raises(HparamsError, match="takes RomeHparams"):
        hooklab.edit(llama, FACTS[0], "rome", hparams=hp, stats={})
    with pytest.raises(HparamsError, match="distinct and increasing"):
        hooklab.MemitHparams(layers=(1, 0)).check(3)
    with pytest.raises(HparamsError, match="is the last layer"):
        hooklab.MemitHparams(layers=(0, 1)).check(2)
