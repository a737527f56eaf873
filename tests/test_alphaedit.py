"""AlphaEdit against a plain float64 computation: the null-space projection, the solve, and
sequential edits that see the keys of the edits applied before them."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from editing import FACTS, key_moments, pico_llama4, same_weights, snapshot  # noqa: F401 (fixtures)

import hooklab
from hooklab import sites
from hooklab.edit.alphaedit import projection as projection_module
from hooklab.edit.alphaedit.main import earlier_keys, solve_projected
from hooklab.edit.alphaedit.projection import cached_projection, null_space_projection
from hooklab.errors import EditSolveError, HparamsError

LAYERS = (1, 2)


@pytest.fixture(scope="module")
def llama(pico_llama4):  # noqa: F811
    """A 4-layer pico Llama: an edit window of two layers below the last."""
    return hooklab.load(pico_llama4, device="cpu")


@pytest.fixture(scope="module")
def stats(llama):
    return key_moments(llama, range(llama.cfg.n_layers))


def random_moment(d: int, seed: int = 0) -> torch.Tensor:
    """A second moment with a known spectrum: half the directions barely used (eigenvalue 1e-4)."""
    gen = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(d, d, generator=gen, dtype=torch.float64))
    small, used = torch.full((d // 2,), 1e-4), torch.linspace(0.5, 2, d - d // 2)
    values = torch.cat([small, used]).double()
    return (q * values) @ q.T, q, values


def test_projection_is_the_null_space_of_the_small_eigenvalues():
    c, q, values = random_moment(16)
    p = null_space_projection(c, threshold=1e-2)
    small = q[:, values < 1e-2].numpy()
    np.testing.assert_allclose(p.numpy(), small @ small.T, atol=1e-12)  # the same span, numpy's basis
    np.testing.assert_allclose((p @ p).numpy(), p.numpy(), atol=1e-12)  # a projection
    np.testing.assert_allclose((p @ q[:, values > 1e-2]).numpy(), 0, atol=1e-12)  # kills the used directions
    with pytest.raises(EditSolveError, match=r"nullspace_threshold=1e-05.*smallest is 0.0001.*raise nullspace_threshold"):
        null_space_projection(c, threshold=1e-5)


def test_projection_is_cached_by_the_statistics(tmp_path, monkeypatch):
    c, _, _ = random_moment(12, seed=1)
    first = cached_projection(c, 1e-2, tmp_path)
    assert len(list(tmp_path.glob("*.safetensors"))) == 1
    def recompute(*args):
        raise RuntimeError("recomputed")

    monkeypatch.setattr(projection_module, "null_space_projection", recompute)
    assert torch.equal(cached_projection(c, 1e-2, tmp_path), first)
    with pytest.raises(RuntimeError, match="recomputed"):  # another threshold is another projection
        cached_projection(c, 2e-2, tmp_path)


def test_solve_equals_the_formula_and_leaves_preserved_keys_alone():
    d_mlp, d_model, n = 16, 8, 3
    c, q, values = random_moment(d_mlp, seed=2)
    gen = torch.Generator().manual_seed(3)
    keys, resid = torch.randn(n, d_mlp, generator=gen), torch.randn(n, d_model, generator=gen)
    earlier_k = torch.randn(d_mlp, 2, generator=gen, dtype=torch.float64)
    p = null_space_projection(c, 1e-2)
    left, right = solve_projected(keys, resid, p, earlier_k @ earlier_k.T, l2=10.0)
    # ΔW = R Kᵀ P (P (K Kᵀ + K_p K_pᵀ) + α I)⁻ᵀ, written out in numpy float64 (AlphaEdit's eq. 14)
    K, R, P, Kp = keys.double().numpy().T, resid.double().numpy().T, p.numpy(), earlier_k.numpy()
    upd = np.linalg.inv(P @ (K @ K.T + Kp @ Kp.T) + 10.0 * np.eye(d_mlp)) @ P @ K @ R.T  # (d_mlp, d_model)
    np.testing.assert_allclose((left @ right.T).double().numpy(), upd.T, rtol=1e-4, atol=1e-6)
    preserved = q[:, values > 1e-2].float()
    assert float((left @ right.T @ preserved).abs().max()) < 1e-5  # ΔW k₀ = 0 where P k₀ = 0


def test_sequential_edits_see_the_keys_of_applied_edits(llama, stats, tmp_path):
    before = snapshot(llama)
    moments = {name: m for name, m in stats.items()}
    median = float(torch.linalg.eigvalsh(moments[sites.mlp_out(llama, 1).hook_in]).median())
    hp = hooklab.AlphaEditHparams(layers=LAYERS, nullspace_threshold=median, v_steps=4, context_lengths=())
    first = hooklab.edit(llama, FACTS[:2], method="alphaedit", hparams=hp, stats=moments)
    assert len(llama.edits) == 1 and llama.edits[0] is first
    for layer in LAYERS:
        kept = first.updates[layer].keys
        assert kept.shape == (llama.cfg.d_mlp, 2)
        torch.testing.assert_close(earlier_keys(llama, layer, torch.device("cpu")), kept.double() @ kept.double().T)
    c = moments[sites.mlp_out(llama, 1).hook_in].double()
    eigenvalues, eigenvectors = torch.linalg.eigh(c)
    preserved = eigenvectors[:, eigenvalues >= median].float()
    delta = first.updates[1].matrix()
    assert float((delta @ preserved).abs().max()) < 1e-4 * float(delta.abs().max())

    second = hooklab.compute_edit(llama, FACTS[2:], method="alphaedit", hparams=hp, stats=moments)
    with first.undone():  # without the first edit applied, its keys are not in K_p
        assert earlier_keys(llama, 1, torch.device("cpu")) is None
    path = first.save(tmp_path / "a.safetensors")
    second.apply(llama)
    second.undo()
    first.undo()
    assert same_weights(llama, before) and llama.edits == []
    again = hooklab.apply_edit(llama, path)  # the keys travel with the file
    torch.testing.assert_close(again.updates[1].keys, first.updates[1].keys)
    again.undo()


def test_bad_settings_are_refused_before_any_weight_moves(llama, stats):
    before = snapshot(llama)
    hp = hooklab.AlphaEditHparams(layers=LAYERS, nullspace_threshold=1e-30, v_steps=2, context_lengths=())
    with pytest.raises(EditSolveError, match="nullspace_threshold=1e-30"):
        hooklab.edit(llama, FACTS[:1], method="alphaedit", hparams=hp, stats=stats)
    assert same_weights(llama, before) and llama.edits == []
    with pytest.raises(HparamsError, match="must be positive"):
        hooklab.AlphaEditHparams(layers=LAYERS, l2=0.0).check(llama.cfg.n_layers)
    assert hooklab.AlphaEditHparams.for_model(llama).layers == hooklab.MemitHparams.for_model(llama).layers
