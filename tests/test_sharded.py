"""Loading over several device slots: both strategies agree bit for bit, logits match one device.

On CPU the slots are all ``"cpu"``; the same code paths run (plan, per-slot reads, routing).
GPU tests run the real thing across cards and skip without CUDA.
"""

from __future__ import annotations

import pytest
import torch

import hooklab
from hooklab.errors import HooklabError, PlacementError

PROMPT = "The Eiffel Tower is located in the city of"


def assert_same_weights(a, b):
    wa, wb = dict(a.named_weights()), dict(b.named_weights())
    assert wa.keys() == wb.keys()
    for name in wa:
        assert wa[name].dtype == wb[name].dtype, name
        assert torch.equal(wa[name].cpu(), wb[name].cpu()), name


@pytest.mark.parametrize("dtype", [None, "bfloat16"])
def test_stream_and_cpu_then_shard_bit_identical(pico_sharded, dtype):
    a = hooklab.load(pico_sharded, devices=["cpu", "cpu"], strategy="stream", dtype=dtype)
    b = hooklab.load(pico_sharded, devices=["cpu", "cpu"], strategy="cpu_then_shard", dtype=dtype)
    assert a.placement == b.placement
    assert_same_weights(a, b)
    assert a.fingerprint == b.fingerprint


def test_sharded_logits_equal_single_device(pico):
    one = hooklab.load(pico, device="cpu")
    two = hooklab.load(pico, devices=["cpu", "cpu"])
    assert two.placement.layers == (0, 1)
    tokens = one.to_tokens(PROMPT)
    assert torch.equal(one(tokens), two(tokens))
    _, c1 = one.run_with_cache(tokens)
    _, c2 = two.run_with_cache(tokens)
    assert torch.equal(c1["blocks.1.hook_resid_post"], c2["blocks.1.hook_resid_post"])


def test_tied_weights_stay_tied(pico):
    model = hooklab.load(pico, devices=["cpu", "cpu"])
    hf = model.hf_model
    if hf.config.tie_word_embeddings:
        assert hf.get_output_embeddings().weight is hf.get_input_embeddings().weight
    else:
        assert hf.get_output_embeddings().weight is not hf.get_input_embeddings().weight


def test_stream_weights_are_copy_on_write(pico_llama, copy_of):
    folder = copy_of(pico_llama)
    before = (folder / "model.safetensors").read_bytes()
    model = hooklab.load(folder, device="cpu")
    with torch.no_grad():
        for _, p in model.named_weights():
            p.add_(1.0)
    assert (folder / "model.safetensors").read_bytes() == before
    assert hooklab.load(folder).fingerprint != model.fingerprint


# --- GPU -----------------------------------------------------------------------------------


@pytest.mark.gpu
@pytest.mark.parametrize("strategy", ["stream", "cpu_then_shard"])
def test_gpu_logits_match_cpu(pico, strategy):
    cpu = hooklab.load(pico, device="cpu")
    gpu = hooklab.load(pico, device="cuda:0", strategy=strategy)
    tokens = cpu.to_tokens(PROMPT)
    assert torch.allclose(cpu(tokens), gpu(tokens.cuda()).cpu(), atol=1e-4)
    assert_same_weights(cpu, gpu)


@pytest.mark.gpu
def test_multi_gpu_forward_and_cache(pico):
    n = torch.cuda.device_count()
    if n < 2:
        pytest.skip("needs 2 GPUs")
    one = hooklab.load(pico, device="cuda:0")
    two = hooklab.load(pico, n_devices=2)
    assert two.placement.distinct_devices == ["cuda:0", "cuda:1"]
    assert hooklab.sites.layer_device(two, 1) == torch.device("cuda:1")
    tokens = one.to_tokens(PROMPT)
    assert torch.allclose(one(tokens), two(tokens).to("cuda:0"), atol=1e-5)
    _, cache = two.run_with_cache(tokens)
    assert cache["blocks.1.hook_resid_post"].device == torch.device("cuda:1")
    gathered = cache.to("cpu")
    assert gathered["blocks.1.hook_resid_post"].device == torch.device("cpu")


@pytest.mark.gpu
def test_failed_gpu_load_leaves_no_memory(pico_sharded, copy_of, tmp_path):
    import json

    # cuBLAS takes its workspace (32 MiB on Hopper) from the allocator at the first matrix product
    # of the process and keeps it: make that happen before the baseline, it is not a leak.
    torch.ones(8, 8, device="cuda:0") @ torch.ones(8, 8, device="cuda:0")
    torch.cuda.empty_cache()
    base = torch.cuda.memory_allocated()
    missing_shard = copy_of(pico_sharded).rename(tmp_path / "missing-shard")
    index = json.loads((missing_shard / "model.safetensors.index.json").read_text())
    (missing_shard / sorted(set(index["weight_map"].values()))[-1]).unlink()
    with pytest.raises(HooklabError, match="copy the missing files"):
        hooklab.load(missing_shard, device="cuda:0")

    wrong_shape = copy_of(pico_sharded)
    config = json.loads((wrong_shape / "config.json").read_text())
    config["vocab_size"] += 1
    (wrong_shape / "config.json").write_text(json.dumps(config))
    with pytest.raises(HooklabError, match="says"):
        hooklab.load(wrong_shape, device="cuda:0")

    with pytest.raises(PlacementError, match="asked for"):
        hooklab.load(pico_sharded, n_devices=torch.cuda.device_count() + 1)
    assert torch.cuda.memory_allocated() == base
