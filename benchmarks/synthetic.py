"""Synthetic checkpoints for benchmarks: real HF folders with random weights and a tokenizer.

No hub is reachable, so large-model benchmarks build their checkpoint here: config, random
bf16 weights in ~5 GB safetensors shards with an index, and a small BPE tokenizer (the one
TransformerLens also needs in the folder). Weights are generated on a GPU when there is one.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import save_file
from transformers import AutoModelForCausalLM, LlamaConfig, PreTrainedTokenizerFast

LLAMA3_8B = dict(
    hidden_size=4096, intermediate_size=14336, num_hidden_layers=32, num_attention_heads=32,
    num_key_value_heads=8, vocab_size=128256, max_position_embeddings=8192, rope_theta=500000.0,
    rms_norm_eps=1e-5, tie_word_embeddings=False, bos_token_id=1, eos_token_id=2,
)  # fmt: skip
# SmolLM2-135M's shape, for GPU runs of the default model's size without downloading it.
SMOLLM2_135M = dict(
    hidden_size=576, intermediate_size=1536, num_hidden_layers=30, num_attention_heads=9,
    num_key_value_heads=3, vocab_size=49152, max_position_embeddings=8192, rope_theta=100000.0,
    rms_norm_eps=1e-5, tie_word_embeddings=True, bos_token_id=1, eos_token_id=2,
)  # fmt: skip
TINY = dict(
    hidden_size=64, intermediate_size=128, num_hidden_layers=4, num_attention_heads=4,
    num_key_value_heads=2, vocab_size=512, max_position_embeddings=256, tie_word_embeddings=False,
    bos_token_id=1, eos_token_id=2,
)  # fmt: skip
SHAPES = {"llama3-8b": LLAMA3_8B, "smollm2-135m": SMOLLM2_135M, "tiny": TINY}

_TEXT = "The Eiffel Tower is located in the city of Paris. Mount Fuji is in Japan. " * 20


def tokenizer(vocab_size: int = 512) -> PreTrainedTokenizerFast:
    """A byte-level BPE tokenizer trained on a sentence (enough to turn prompts into ids)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=min(vocab_size, 512), special_tokens=["<pad>", "<s>", "</s>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )  # fmt: skip
    tok.train_from_iterator([_TEXT], trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>")


def build(out: Path, shape: str = "llama3-8b", *, dtype=torch.bfloat16, shard_bytes: int = 5 * 10**9, seed=0) -> Path:
    """Write a random-weight checkpoint of ``shape`` into ``out`` (skipped if already complete)."""
    out = Path(out)
    if (out / "tokenizer.json").is_file():
        return out
    out.mkdir(parents=True, exist_ok=True)
    config = LlamaConfig(**SHAPES[shape], dtype=dtype)
    with torch.device("meta"):
        skeleton = AutoModelForCausalLM.from_config(config)
    names = [(n, p.shape) for n, p in skeleton.state_dict().items() if not _tied(config, n)]
    groups, size = [[]], 0  # shard boundaries from the shapes, so each shard is written as it is made
    for name, shape_ in names:
        if size >= shard_bytes:
            groups.append([])
            size = 0
        groups[-1].append((name, shape_))
        size += shape_.numel() * dtype.itemsize
    device = "cuda" if torch.cuda.is_available() else "cpu"
    gen = torch.Generator(device).manual_seed(seed)
    weight_map, total = {}, 0
    for i, group in enumerate(groups):
        fname = f"model-{i + 1:05d}-of-{len(groups):05d}.safetensors"
        shard = {}
        for name, shape_ in group:
            if name.endswith("norm.weight"):
                shard[name] = torch.ones(shape_, dtype=dtype)
            else:
                t = torch.randn(shape_, generator=gen, device=device, dtype=torch.float32) * 0.02
                shard[name] = t.to(dtype).cpu()
            weight_map[name] = fname
            total += shard[name].numel() * dtype.itemsize
        save_file(shard, out / fname, metadata={"format": "pt"})
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    (out / "model.safetensors.index.json").write_text(json.dumps(index, indent=1))
    config.save_pretrained(out)
    tokenizer(config.vocab_size).save_pretrained(out)
    return out


def _tied(config: LlamaConfig, name: str) -> bool:
    return config.tie_word_embeddings and name == "lm_head.weight"
