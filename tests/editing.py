"""Shared pieces of the editing tests: key statistics by a plain computation, weight snapshots."""

from __future__ import annotations

import pytest
import torch
from conftest import make_pico

import hooklab
from hooklab import sites

FACTS = [
    hooklab.EditRequest("{} is located in the city of", "The Eiffel Tower", " Rome"),
    hooklab.EditRequest("{} is the highest mountain in", "Mount Fuji", " London"),
    hooklab.EditRequest("The river {} flows through", "Thames", " Paris"),
]


def key_moments(model, layers, n_rows: int = 40, length: int = 48, seed: int = 0) -> dict[str, torch.Tensor]:
    """E[k kᵀ] of each layer's MLP keys over random token rows: run_with_cache and a matrix product."""
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, model.cfg.d_vocab, (n_rows, length), generator=gen)
    names = [sites.mlp_out(model, layer).hook_in for layer in layers]
    with torch.no_grad():
        _, cache = model.run_with_cache(ids, names_filter=names)
    out = {}
    for name in names:
        k = cache[name].reshape(-1, model.cfg.d_mlp).double()
        out[name] = k.T @ k / k.shape[0]
    return out


def snapshot(model) -> dict[str, torch.Tensor]:
    return {name: w.detach().clone() for name, w in model.named_weights()}


def same_weights(model, snap) -> bool:
    """Bit for bit (NaN-safe: compares the raw bits)."""
    now = dict(model.named_weights())
    return all(torch.equal(now[n].detach().view(torch.uint8), w.view(torch.uint8)) for n, w in snap.items())


@pytest.fixture(scope="module")
def llama(pico_llama):
    """The pico Llama, loaded once per test module."""
    return hooklab.load(pico_llama, device="cpu")


@pytest.fixture(scope="module")
def stats(llama):
    """Its key statistics at every layer."""
    return key_moments(llama, range(llama.cfg.n_layers))


@pytest.fixture(scope="session")
def pico_llama4(tmp_path_factory, tokenizer_dir):
    """A 4-layer pico Llama: enough layers for an edit window that spans two device slots."""
    return make_pico("llama", tmp_path_factory.mktemp("llama4"), tokenizer_dir, seed=4, num_hidden_layers=4)
