"""Causal tracing: the batched tracer against a plain one-forward-per-restoration computation,
its invariants (seeded, restore all = clean, restore nothing = corrupted), placement over
two device slots, errors, and what the default model says about the Eiffel Tower."""

from __future__ import annotations

import json

import pytest
import torch
from transformers import AutoModelForCausalLM, LlamaConfig, PreTrainedTokenizerFast

import hooklab
from hooklab.errors import HooklabError, SubjectNotFoundError, TraceArgumentError
from hooklab.locate import CausalTracer, Restoration, embedding_std, noise_scale, window_layers

PROMPT = "The Eiffel Tower is located in the city of"
SUBJECT = "Eiffel Tower"
HOOK = {"hidden": "blocks.{}.hook_resid_post", "mlp": "blocks.{}.hook_mlp_out", "attn": "blocks.{}.hook_attn_out"}


@pytest.fixture(scope="module")
def deep_llama(tmp_path_factory, tokenizer_dir):
    """A 6-layer Llama, so windows clip at both ends and suffix runs span several layers."""
    torch.manual_seed(1)
    config = LlamaConfig(
        hidden_size=32, intermediate_size=64, num_hidden_layers=6, num_attention_heads=4, num_key_value_heads=2,
        vocab_size=384, max_position_embeddings=64, tie_word_embeddings=False, bos_token_id=1, eos_token_id=2,
    )  # fmt: skip
    model = AutoModelForCausalLM.from_config(config)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.3) if p.dim() > 1 else p.uniform_(0.5, 1.5)
    out = tmp_path_factory.mktemp("deep-llama")
    model.save_pretrained(out)
    PreTrainedTokenizerFast.from_pretrained(tokenizer_dir).save_pretrained(out)
    return out


@torch.no_grad()
def reference_scores(model, tracer: CausalTracer, kind: str, window: int) -> torch.Tensor:
    """ROME's loop, written plainly: one full forward of the corrupted samples per restoration."""
    tokens = tracer.prompt.tokens.expand(tracer.samples, -1)
    b, e = tracer.prompt.subject
    noise = tracer.corruption()
    n_tokens, n_layers = tokens.shape[1], model.cfg.n_layers
    _, clean = model.run_with_cache(tracer.prompt.tokens)

    def add_noise(x, hook):
        x = x.clone()
        x[:, b:e] += noise
        return x

    scores = torch.zeros(n_tokens, n_layers)
    for t in range(n_tokens):
        for layer in range(n_layers):
            if kind == "hidden":
                restored = [layer]
            else:
                restored = range(max(0, layer - window // 2), min(n_layers, layer + window - window // 2))
            hooks = [("hook_embed", add_noise)]
            for lay in restored:
                name = HOOK[kind].format(lay)

                def restore(x, hook, name=name, t=t):
                    x = x.clone()
                    x[:, t] = clean[name][0, t]
                    return x

                hooks.append((name, restore))
            logits = model.run_with_hooks(tokens, fwd_hooks=hooks)
            scores[t, layer] = logits[:, -1].softmax(-1)[:, tracer.target_id].mean()
    return scores


@pytest.mark.parametrize("kind,window", [("hidden", 1), ("mlp", 1), ("attn", 2)])
def test_equals_unbatched_reference_every_architecture(pico, kind, window):
    model = hooklab.load(pico)
    tracer = CausalTracer(model, PROMPT, SUBJECT, samples=3, noise=0.5, seed=1)
    result = tracer.trace(kind, window)
    torch.testing.assert_close(result.scores, reference_scores(model, tracer, kind, window), atol=2e-6, rtol=0)


@pytest.mark.parametrize("kind,window", [("hidden", 10), ("mlp", 3), ("attn", 4)])
def test_equals_unbatched_reference_deep(deep_llama, kind, window):
    model = hooklab.load(deep_llama)
    tracer = CausalTracer(model, PROMPT, SUBJECT, samples=4, noise=0.4, seed=3, max_rows=8)  # forces chunks
    result = tracer.trace(kind, window)
    torch.testing.assert_close(result.scores, reference_scores(model, tracer, kind, window), atol=2e-6, rtol=0)
    assert result.scores.shape == (len(tracer.prompt.ids), 6)


def test_every_position_fallback_traces_the_same(deep_llama):
    model = hooklab.load(deep_llama)
    tracer = CausalTracer(model, PROMPT, SUBJECT, samples=3, noise=0.5)
    suffixes = tracer.trace("mlp", 3)
    tracer.blocks.slices_positions = False  # as for a block argument of unknown layout
    torch.testing.assert_close(tracer.trace("mlp", 3).scores, suffixes.scores, atol=2e-6, rtol=0)


def test_window_layers_clip_like_rome():
    assert window_layers(0, 10, 30) == tuple(range(0, 5))
    assert window_layers(12, 10, 30) == tuple(range(7, 17))
    assert window_layers(29, 10, 30) == tuple(range(24, 30))
    assert window_layers(4, 1, 30) == (4,)
    assert window_layers(4, 3, 30) == (3, 4, 5)


def test_restore_everything_gives_clean_and_nothing_gives_corrupted(deep_llama):
    model = hooklab.load(deep_llama)
    tracer = CausalTracer(model, PROMPT, SUBJECT, samples=5, noise=1.0)
    assert abs(tracer.high - tracer.low) > 1e-3  # the noise does something
    every_token = tuple(range(len(tracer.prompt.ids)))
    b, _ = tracer.prompt.subject
    restored = tracer.restore(
        "hidden",
        [
            Restoration(every_token, (0,)),  # all states after layer 0: the rest is the clean run
            Restoration(every_token, (5,)),
            Restoration((len(every_token) - 1,), (5,)),  # the state the answer is read from
            Restoration(tuple(range(b)), (0, 3)),  # tokens before the subject: as corrupted
        ],
    )
    torch.testing.assert_close(restored[:3], torch.full((3,), tracer.high), atol=1e-6, rtol=0)
    assert restored[3] == pytest.approx(tracer.low, abs=1e-6)
    every_mlp = tracer.restore("mlp", [Restoration(every_token, tuple(range(6)))])
    assert every_mlp[0] != pytest.approx(tracer.high, abs=1e-4)  # attention still reads corrupted states
    result = tracer.trace("hidden")
    assert result.scores[-1, -1] == pytest.approx(tracer.high, abs=1e-6)
    assert torch.all(result.scores[:b] == tracer.low)


def test_no_noise_restores_nothing_new(pico_llama):
    model = hooklab.load(pico_llama)
    result = hooklab.trace(model, PROMPT, SUBJECT, kind="mlp", noise=0.0, samples=2)
    assert result.low == pytest.approx(result.high, abs=1e-6)
    torch.testing.assert_close(result.scores, torch.full_like(result.scores, result.high), atol=1e-6, rtol=0)


def test_deterministic_for_a_seed(deep_llama):
    model = hooklab.load(deep_llama)
    a = hooklab.trace(model, PROMPT, SUBJECT, kind="attn", window=3, samples=3, noise=0.5, seed=7)
    b = hooklab.trace(model, PROMPT, SUBJECT, kind="attn", window=3, samples=3, noise=0.5, seed=7)
    c = hooklab.trace(model, PROMPT, SUBJECT, kind="attn", window=3, samples=3, noise=0.5, seed=8)
    assert torch.equal(a.scores, b.scores) and a.low == b.low
    assert not torch.equal(a.scores, c.scores)


def test_two_device_slots_trace_the_same(deep_llama):
    one = hooklab.load(deep_llama, device="cpu")
    two = hooklab.load(deep_llama, devices=["cpu", "cpu"])
    assert len(set(two.placement.layers)) == 2
    for kind in ("hidden", "mlp"):
        a = hooklab.trace(one, PROMPT, SUBJECT, kind=kind, window=3, samples=3, noise=0.5)
        b = hooklab.trace(two, PROMPT, SUBJECT, kind=kind, window=3, samples=3, noise=0.5)
        torch.testing.assert_close(a.scores, b.scores, atol=1e-6, rtol=0)


def test_target_given_as_text_or_id(deep_llama):
    model = hooklab.load(deep_llama)
    by_text = hooklab.trace(model, PROMPT, SUBJECT, target=" Paris", samples=2, noise=0.5)
    paris = model.tokenizer(" Paris", add_special_tokens=False).input_ids[0]
    by_id = hooklab.trace(model, PROMPT, SUBJECT, target=paris, samples=2, noise=0.5)
    assert by_text.target_id == paris and torch.equal(by_text.scores, by_id.scores)
    logits = model(model.to_tokens(PROMPT))[0, -1].softmax(-1)
    assert by_text.high == pytest.approx(float(logits[paris]), abs=1e-6)


def test_subject_absent_lists_the_tokens(pico_llama):
    model = hooklab.load(pico_llama)
    tokens = model.to_str_tokens(PROMPT)
    with pytest.raises(SubjectNotFoundError, match="'Eifel Tower' does not occur") as info:
        hooklab.trace(model, PROMPT, "Eifel Tower")
    assert str(tokens) in str(info.value) and "case and spacing" in str(info.value)
    assert isinstance(info.value, HooklabError)


@pytest.mark.parametrize(
    "kwargs,message",
    [
        ({"kind": "neurons"}, "kind must be one of"),
        ({"window": 0}, "window must be at least 1"),
        ({"samples": 0}, "samples must be at least 1"),
        ({"noise": "lots"}, "noise must be a number or a string like '3sigma'"),
        ({"noise": -1.0}, "noise must be at least 0"),
        ({"target": 10**6}, "outside the vocabulary"),
        ({"target": ""}, "has no tokens"),
    ],
)
def test_bad_arguments(pico_llama, kwargs, message):
    model = hooklab.load(pico_llama)
    before = [p.clone() for _, p in model.named_weights()]
    with pytest.raises(TraceArgumentError, match=message):
        hooklab.trace(model, PROMPT, SUBJECT, **kwargs)
    assert all(torch.equal(a, p) for a, (_, p) in zip(before, model.named_weights()))
    assert not any(hp.fwd_hooks for hp in model.hook_dict.values())  # no hook left behind


def test_hooks_removed_after_a_trace(pico_llama):
    model = hooklab.load(pico_llama)
    fingerprint = model.fingerprint
    hooklab.trace(model, PROMPT, SUBJECT, kind="mlp", samples=2, noise=0.5)
    assert not any(hp.fwd_hooks for hp in model.hook_dict.values())
    assert all(not block._forward_pre_hooks for block in model.bridge.blocks)
    assert model.fingerprint == fingerprint


def test_noise_scale_measured_once_and_cached(pico_llama, tmp_path, monkeypatch):
    model = hooklab.load(pico_llama)
    monkeypatch.setenv("HOOKLAB_CACHE", str(tmp_path))
    subjects = ["Eiffel Tower", "Colosseum", "Mount Fuji"]
    ids = [i for s in subjects for i in model.tokenizer(s, add_special_tokens=False).input_ids]
    expected = model.hf_model.get_input_embeddings().weight[ids].std().item()
    assert embedding_std(model, subjects) == pytest.approx(expected, rel=1e-6)
    (cache_file,) = (tmp_path / "trace-noise").iterdir()
    cached = json.loads(cache_file.read_text())
    key = next(iter(cached))
    cache_file.write_text(json.dumps({key: 0.25}))  # a cached value is used as it is
    assert noise_scale(model, "3sigma", subjects) == pytest.approx(0.75)
    assert noise_scale(model, "2.5sigma", subjects) == pytest.approx(0.625)
    assert noise_scale(model, 0.1) == 0.1
    default = embedding_std(model)  # the built-in reference subjects go under their own key
    assert len(json.loads(cache_file.read_text())) == 2 and default > 0


def test_result_round_trips_and_plots(deep_llama, tmp_path):
    model = hooklab.load(deep_llama)
    result = hooklab.trace(model, PROMPT, SUBJECT, kind="mlp", window=3, samples=2, noise=0.5)
    again = hooklab.locate.TraceResult.from_dict(json.loads(json.dumps(result.to_dict())))
    assert again.tokens == result.tokens and torch.allclose(again.scores, result.scores)
    token, layer, score = result.peak()
    assert score == result.scores.max() and result.scores[token, layer] == score
    result.plot(tmp_path / "trace.png")
    assert (tmp_path / "trace.png").stat().st_size > 10_000


def test_default_model_recalls_paris_from_the_subject(smollm2):
    tracer = CausalTracer(smollm2, PROMPT, SUBJECT, samples=4)
    assert smollm2.tokenizer.decode([tracer.target_id]) == " Paris"
    assert tracer.high > 0.5 and tracer.low < 0.1
    b, e = tracer.prompt.subject
    assert tracer.prompt.str_tokens[b:e] == (" E", "iffel", " Tower")
    iffel, of = b + 1, len(tracer.prompt.ids) - 1
    early_mlps = window_layers(3, 10, 30)
    mlp = tracer.restore("mlp", [Restoration((iffel,), early_mlps), Restoration((of,), early_mlps)])
    assert mlp[0] > tracer.low + 0.3  # the subject's early MLPs bring Paris back ...
    assert mlp[1] < tracer.low + 0.05  # ... the last token's do not
    late_attn = tracer.restore("attn", [Restoration((of,), window_layers(20, 10, 30))])
    assert late_attn[0] > tracer.low + 0.3  # late attention at the last token moves it there


def test_token_classes_follow_rome():
    #          0      1*     2*     3*     4     5     6
    classes = hooklab.locate.token_classes((1, 4), 7)
    assert classes == [[1], [2], [3], [4], [5], [6]]
    assert hooklab.locate.token_classes((0, 1), 3) == [[0], [], [0], [1], [], [2]]  # one-token subject
    assert hooklab.locate.token_classes((0, 2), 2) == [[0], [], [1], [], [], [1]]  # subject ends the prompt


def test_trace_many_averages_indirect_effects_by_class(deep_llama, tmp_path):
    model = hooklab.load(deep_llama)
    records = [
        {"requested_rewrite": {"prompt": "The {} is located in the city of", "subject": "Eiffel Tower"}},
        {"prompt": "Mount Fuji is the highest mountain in", "subject": "Mount Fuji"},
        {"prompt": "The river Thames flows through", "subject": "Thames"},
        {"prompt": "The Colosseum is in", "subject": "Eiffel Tower"},  # not in its prompt: skipped
    ]
    path = tmp_path / "facts.json"
    path.write_text(json.dumps(records))
    summary = hooklab.trace_many(model, path, kind="mlp", window=3, samples=2, noise=0.5, progress=False)
    assert summary.n_prompts == 3 and [i for i, _ in summary.skipped] == [3]
    singles = [
        hooklab.trace(model, p, s, kind="mlp", window=3, samples=2, noise=0.5)
        for p, s in [("The Eiffel Tower is located in the city of", "Eiffel Tower"), *[(r["prompt"], r["subject"]) for r in records[1:3]]]
    ]  # fmt: skip
    last_subject = torch.stack([r.scores[r.subject_range[1] - 1] - r.low for r in singles]).mean(0)
    torch.testing.assert_close(summary.effect[2], last_subject)
    last_token = torch.stack([r.scores[-1] - r.low for r in singles]).mean(0)
    torch.testing.assert_close(summary.effect[5], last_token)
    assert summary.high == pytest.approx(sum(r.high for r in singles) / 3)
    layer, size = summary.peak("Last subject token")
    assert size == pytest.approx(float(last_subject.max())) and layer == int(last_subject.argmax())
    summary.plot(tmp_path / "aie.png")
    hooklab.locate.plot_summaries([summary, summary], tmp_path / "lines.png")
    assert (tmp_path / "aie.png").stat().st_size > 10_000 and (tmp_path / "lines.png").stat().st_size > 10_000
    assert json.loads(json.dumps(summary.to_dict()))["counts"] == list(summary.counts)


def test_trace_many_rejects_unknown_records(pico_llama):
    model = hooklab.load(pico_llama)
    with pytest.raises(TraceArgumentError, match="record 1 has neither"):
        hooklab.trace_many(model, [{"prompt": PROMPT, "subject": SUBJECT}, {"text": "x"}], progress=False)


def test_cli_writes_png_and_json(deep_llama, tmp_path, capsys):
    from hooklab.cli import main

    out = tmp_path / "eiffel"
    main(["trace", "--model", str(deep_llama), "--prompt", PROMPT, "--subject", SUBJECT, "--kind", "mlp",
          "--window", "3", "--samples", "2", "--noise", "0.5", "--out", str(out)])  # fmt: skip
    saved = json.loads((tmp_path / "eiffel-mlp.json").read_text())
    assert saved["kind"] == "mlp" and saved["subject"] == SUBJECT
    assert len(saved["scores"]) == len(saved["tokens"]) and len(saved["scores"][0]) == 6
    assert (tmp_path / "eiffel-mlp.png").stat().st_size > 10_000
    assert "peak p" in capsys.readouterr().out
    with pytest.raises(SystemExit) as exit_info:
        main(["trace", "--model", str(deep_llama), "--prompt", PROMPT, "--subject", "Colosseum", "--out", str(out)])
    assert exit_info.value.code == 1
    assert "'Colosseum' does not occur" in capsys.readouterr().err


# --- GPU -----------------------------------------------------------------------------------


@pytest.mark.gpu
def test_gpu_trace_matches_cpu(deep_llama):
    cpu = hooklab.load(deep_llama, device="cpu")
    gpu = hooklab.load(deep_llama, device="cuda:0")
    for kind in ("hidden", "mlp", "attn"):
        a = hooklab.trace(cpu, PROMPT, SUBJECT, kind=kind, window=3, samples=3, noise=0.5)
        b = hooklab.trace(gpu, PROMPT, SUBJECT, kind=kind, window=3, samples=3, noise=0.5)
        torch.testing.assert_close(a.scores, b.scores, atol=1e-4, rtol=0)


@pytest.mark.gpu
def test_sharded_gpus_trace_like_one(deep_llama):
    if torch.cuda.device_count() < 2:
        pytest.skip("needs 2 GPUs")
    one = hooklab.load(deep_llama, device="cuda:0")
    two = hooklab.load(deep_llama, n_devices=2)
    assert hooklab.sites.layer_device(two, 5) == torch.device("cuda:1")
    for kind in ("hidden", "mlp"):
        a = hooklab.trace(one, PROMPT, SUBJECT, kind=kind, window=3, samples=3, noise=0.5)
        b = hooklab.trace(two, PROMPT, SUBJECT, kind=kind, window=3, samples=3, noise=0.5)
        torch.testing.assert_close(a.scores, b.scores, atol=1e-5, rtol=0)
