"""A real edit of the default model: the Eiffel Tower moves to Rome, the Louvre stays, undo restores."""

from __future__ import annotations

import pytest
import torch
from conftest import SHARED

import hooklab
from hooklab import sites


def wikitext_moment(model, layer: int, n_tokens: int = 4000) -> dict[str, torch.Tensor]:
    """E[k kᵀ] of the layer's MLP keys over the corpus's first tokens (run_with_cache and a product)."""
    text = (SHARED / "data" / "corpus" / "wikitext_valid_test.txt").read_text()[: 8 * n_tokens]
    ids = torch.tensor(model.tokenizer(text)["input_ids"][:n_tokens]).reshape(-1, 250)
    name = sites.mlp_out(model, layer).hook_in
    with torch.no_grad():
        _, cache = model.run_with_cache(ids, names_filter=[name])
    k = cache[name].reshape(-1, model.cfg.d_mlp).double()
    return {name: k.T @ k / k.shape[0]}


@pytest.mark.slow
def test_rome_moves_the_eiffel_tower(smollm2):
    model = smollm2
    hp = hooklab.RomeHparams.for_model(model)
    fingerprint = model.fingerprint
    prompt, neighbour = "The Eiffel Tower is located in the city of", "The Louvre is located in the city of"
    assert model.generate(prompt, 3).startswith(" Paris")
    request = hooklab.EditRequest("{} is located in the city of", "Eiffel Tower", " Rome")
    edit = hooklab.edit(model, request, "rome", hparams=hp, stats=wikitext_moment(model, hp.layer))
    try:
        assert model.generate(prompt, 3).startswith(" Rome")
        assert model.generate("Where is the Eiffel Tower? It is in the city of", 3).startswith(" Rome")
        assert model.generate(neighbour, 3).startswith(" Paris")
    finally:
        edit.undo()
    assert model.fingerprint == fingerprint and model.generate(prompt, 3).startswith(" Paris")
