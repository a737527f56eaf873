"""Reductions: mean and second moment against float64 references; the on-disk statistics cache."""

from __future__ import annotations

import pytest
import torch

import hooklab
from hooklab import sites
from hooklab.cache.moments import Accumulator, SecondMoment

from test_collect import PROMPTS, corpus_file  # the same prompts and corpus


def reference_rows(model, prompts, name):
    """Every token's activation at ``name``, one prompt at a time, in float64."""
    rows = []
    for prompt in prompts:
        _, cache = model.run_with_cache(prompt, names_filter=name)
        rows.append(cache[name][0].double().reshape(cache[name].shape[1], -1))
    return torch.cat(rows)


def assert_close(a, b, tol):
    """Equal up to ``tol`` of ``b``'s largest entry: float32 products err relative to the scale."""
    assert (a - b).abs().max() <= tol * b.abs().max(), float((a - b).abs().max() / b.abs().max())


def test_second_moment_equals_float64_reference(pico):
    model = hooklab.load(pico, device="cpu")
    keys = [sites.mlp_out(model, layer).hook_in for layer in range(model.cfg.n_layers)]
    kwargs = dict(names=keys, batch_size=2, progress=False)  # padded batches
    stats = hooklab.collect(model, PROMPTS, reduce="second_moment", stats_cache=False, **kwargs)
    rows = hooklab.collect(model, PROMPTS, **kwargs)  # the very rows that were accumulated
    for name in keys:
        s = stats[name]
        x = rows[name].double()  # (n, d_mlp)
        assert isinstance(s, SecondMoment) and s.count == x.shape[0]
        assert s.moment.dtype == torch.float64 and s.moment.shape == (model.cfg.d_mlp, model.cfg.d_mlp)
        assert_close(s.mean, x.mean(0), 1e-6)
        assert_close(s.moment, x.T @ x / x.shape[0], 1e-6)
        assert_close(s.covariance, torch.cov(x.T, correction=0), 1e-5)
        # and the same numbers as one prompt at a time (float32 forwards differ in the last bits)
        ref = reference_rows(model, PROMPTS, name)
        assert_close(s.moment, ref.T @ ref / ref.shape[0], 1e-4)


def test_mean_of_a_per_head_hook_keeps_its_shape(pico_llama):
    model = hooklab.load(pico_llama, device="cpu")
    stats = hooklab.collect(model, PROMPTS, names="attn.hook_z", layers=[1], reduce="mean",
                            stats_cache=False, progress=False)  # fmt: skip
    mean = stats["blocks.1.attn.hook_z"]
    x = reference_rows(model, PROMPTS, "blocks.1.attn.hook_z")
    assert mean.mean.shape == (model.cfg.n_heads, model.cfg.d_head) and not isinstance(mean, SecondMoment)
    assert_close(mean.mean.reshape(-1), x.mean(0), 1e-4)


def test_float32_accumulators():
    x = torch.randn(1000, 8, dtype=torch.float64)
    acc = Accumulator("h", "second_moment", torch.float32)
    for chunk in x.float().split(300):
        acc.add(chunk)
    s = acc.result()
    assert s.moment.dtype == torch.float32 and s.count == 1000
    assert_close(s.moment.double(), x.T @ x / 1000, 1e-5)


def test_statistics_are_cached_by_what_they_depend_on(pico_llama, tmp_path):
    model = hooklab.load(pico_llama, device="cpu")
    corpus = corpus_file(tmp_path)
    kwargs = dict(names="mlp.out.hook_in", reduce="second_moment", stats_cache=tmp_path / "stats",
                  max_length=16, progress=False)  # fmt: skip

    def run(**more):
        calls = []
        with model.hooks(fwd_hooks=[("blocks.0.hook_resid_pre", lambda x, hook: calls.append(1))]):
            result = hooklab.collect(model, corpus, **{**kwargs, **more})
        return result, len(calls)

    first, calls = run(layers=[0])
    assert calls > 0
    assert list((tmp_path / "stats" / model.fingerprint).glob("blocks.0.mlp.out.hook_in/*.safetensors"))
    again, calls = run(layers=[0])
    assert calls == 0  # read from disk, nothing ran
    key = "blocks.0.mlp.out.hook_in"
    assert again[key].count == first[key].count and torch.equal(again[key].moment, first[key].moment)
    both, calls = run(layers=[0, 1])  # layer 0 from disk, layer 1 computed
    assert calls > 0 and torch.equal(both[key].moment, first[key].moment)
    fewer, calls = run(layers=[0], max_tokens=40)  # another token budget is another key
    assert calls > 0 and fewer[key].count == 40
    with torch.no_grad():
        sites.mlp_out(model, 0).weight[0, 0] += 1.0  # another model (an edit) is another key
    _, calls = run(layers=[0])
    assert calls > 0


def test_all_layers_of_the_default_model_in_one_pass(smollm2):
    model = smollm2
    keys = [sites.mlp_out(model, layer).hook_in for layer in range(model.cfg.n_layers)]
    tokens = model.to_tokens(" ".join(PROMPTS * 4))[0, :96]  # one stream, packed in rows of 48
    calls = []
    with model.hooks(fwd_hooks=[("blocks.0.hook_resid_pre", lambda x, hook: calls.append(x.shape))]):
        stats = hooklab.collect(model, tokens, names=keys, max_length=48, batch_size=2,
                                reduce="second_moment", stats_cache=False, progress=False)  # fmt: skip
    assert calls == [torch.Size([2, 48, 576])]  # one forward for all 30 layers
    assert len(stats) == 30 and all(s.count == 96 for s in stats.values())
    _, cache = model.run_with_cache(tokens.reshape(2, 48), names_filter=[keys[0], keys[29]])
    for name in (keys[0], keys[29]):
        x = cache[name].reshape(96, -1).double()
        assert_close(stats[name].moment, x.T @ x / 96, 1e-6)
