"""The edit-method registry: a method added from outside hooklab edits, undoes, saves and loads
like the built-in ones; the README's table and the CLI's choices come from the registry."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from editing import FACTS, key_moments, llama, same_weights, snapshot, stats  # noqa: F401 (fixtures)

import hooklab
from hooklab import sites
from hooklab.edit import EditMethod, Update, as_requests, registry
from hooklab.edit.hparams import Hparams
from hooklab.edit.memit.main import memit, solve_update
from hooklab.errors import EditMethodError, EditRequestError

ROOT = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class ToyHparams(Hparams):
    """A seeded rank-one update per request at one layer: enough to exercise the machinery."""

    layer: int
    scale: float = 0.01
    mom2_tokens: int = 1

    @property
    def edit_layers(self) -> tuple[int, ...]:
        return (self.layer,)

    @classmethod
    def for_model(cls, model) -> ToyHparams:
        return cls(layer=0)


def toy_compute(model, requests, hp, second_moments):
    w = sites.mlp_out(model, hp.layer).weight
    gen = torch.Generator().manual_seed(len(requests))
    left = hp.scale * torch.randn(w.shape[0], len(requests), generator=gen)
    right = torch.randn(w.shape[1], len(requests), generator=gen)
    return {hp.layer: Update.from_factors(hp.layer, left, right)}, {"toy": True}


@pytest.fixture
def toy():
    method = registry.register(EditMethod("toy", "a seeded rank-one update", ToyHparams, compute=toy_compute,
                                          needs_stats=False))  # fmt: skip
    yield method
    registry.unregister("toy")


def test_a_method_registered_from_outside_edits_undoes_saves_and_loads(llama, toy, tmp_path):
    before = snapshot(llama)
    w = sites.mlp_out(llama, 1).weight
    expected = w.detach().clone() + toy_compute(llama, FACTS[:2], ToyHparams(layer=1), {})[0][1].matrix()
    edit = hooklab.edit(llama, FACTS[:2], method="toy", hparams={"layer": 1, "scale": 0.01, "mom2_tokens": 1})
    assert edit.method == "toy" and edit.layers == [1] and edit.notes["toy"] is True
    assert torch.allclose(w.detach(), expected, atol=1e-6)
    edited = snapshot(llama)
    path = edit.save(tmp_path / "toy.safetensors")
    edit.undo()
    assert same_weights(llama, before)
    again = hooklab.apply_edit(llama, path)
    assert again.method == "toy" and same_weights(llama, edited)
    again.undo()
    assert same_weights(llama, before)


def test_registry_refuses_what_cannot_work(toy):
    with pytest.raises(EditMethodError, match="unknown edit method 'tyo'.*'toy'"):
        registry.get("tyo")
    with pytest.raises(EditMethodError, match="registered already.*replace=True"):
        registry.register(toy)
    with pytest.raises(EditMethodError, match="neither of compute and attach"):
        EditMethod("none", "nothing", ToyHparams)
    with pytest.raises(EditMethodError, match="takes an EditMethod"):
        registry.register("toy")
    assert "toy" in registry.names(updates_only=True) and "wise" not in registry.names(updates_only=True)


def test_readme_table_and_cli_choices_come_from_the_registry(capsys):
    readme = (ROOT / "README.md").read_text()
    block = re.search(r"<!-- edit-methods -->\n(.*?)\n<!-- /edit-methods -->", readme, re.S)
    assert block and block.group(1) == registry.table()  # regenerate: python -c "from hooklab.edit import registry; print(registry.table())"
    from hooklab.cli import main

    with pytest.raises(SystemExit):
        main(["edit", "--help"])
    out = capsys.readouterr().out
    assert all(name in out for name in registry.names(updates_only=True))


def test_memit_takes_its_solve_as_an_argument(llama, stats):  # noqa: F811
    """A solve that records its calls and returns MEMIT's own gives MEMIT's updates exactly."""
    hp = hooklab.MemitHparams(layers=(0, 1), v_steps=3, context_lengths=())
    moments = {layer: stats[sites.mlp_out(llama, layer).hook_in] for layer in hp.layers}
    calls = []

    def recording(layer, keys, resid, moment):
        calls.append((layer, keys.shape, resid.shape))
        return solve_update(keys, resid, moment, hp.update_weight(len(FACTS)))

    plain, _ = memit(llama, FACTS, hp, moments)
    custom, _ = memit(llama, FACTS, hp, moments, solve=recording)
    n, d_mlp, d_model = len(FACTS), llama.cfg.d_mlp, llama.cfg.d_model
    assert calls == [(0, (n, d_mlp), (n, d_model)), (1, (n, d_mlp), (n, d_model))]
    assert all(torch.equal(plain[layer].matrix(), custom[layer].matrix()) for layer in hp.layers)


def test_two_targets_for_one_fact_in_a_batch_are_refused(llama):
    twice = [FACTS[0], hooklab.EditRequest(FACTS[0].prompt, FACTS[0].subject, " Lyon")]
    with pytest.raises(EditRequestError, match="requests 0 and 1 give .* two targets"):
        hooklab.compute_edit(llama, twice, method="memit")
    assert as_requests([FACTS[0], FACTS[0]]) == [FACTS[0], FACTS[0]]  # the same edit twice is fine
