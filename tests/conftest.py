"""Pico checkpoints built from configs (2 layers, tiny widths), a tiny tokenizer, SmolLM2.

Every pico model is a real HF checkpoint folder written by ``save_pretrained``, so hooklab
loads it the way it loads any user checkpoint.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import (
    AutoModelForCausalLM,
    GPT2Config,
    LlamaConfig,
    PreTrainedTokenizerFast,
    Qwen2Config,
)

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
VOCAB = 384

PICO_CONFIGS = {
    "gpt2": lambda: GPT2Config(
        n_layer=2, n_embd=32, n_head=4, n_positions=64, vocab_size=VOCAB, bos_token_id=1, eos_token_id=2
    ),
    "llama": lambda: LlamaConfig(
        hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, vocab_size=VOCAB, max_position_embeddings=64, tie_word_embeddings=False,
        bos_token_id=1, eos_token_id=2, pad_token_id=0,
    ),  # fmt: skip
    "qwen2": lambda: Qwen2Config(
        hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, vocab_size=VOCAB, max_position_embeddings=64, tie_word_embeddings=True,
        bos_token_id=1, eos_token_id=2, pad_token_id=0,
    ),  # fmt: skip
}

TEXT = """The Eiffel Tower is located in the city of Paris. The Colosseum is in Rome.
Mount Fuji is the highest mountain in Japan. The river Thames flows through London.
Researchers load a model, cache its activations, trace where a fact lives and edit it.
""" * 4


def pytest_collection_modifyitems(config, items):
    if not torch.cuda.is_available():
        skip = pytest.mark.skip(reason="needs CUDA")
        for item in items:
            if "gpu" in item.keywords:
                item.add_marker(skip)


@pytest.fixture(scope="session")
def tokenizer_dir(tmp_path_factory) -> Path:
    """A byte-level BPE tokenizer of VOCAB tokens trained on a few sentences."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB, special_tokens=["<pad>", "<s>", "</s>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )  # fmt: skip
    tok.train_from_iterator(TEXT.splitlines(), trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>")
    out = tmp_path_factory.mktemp("tokenizer")
    fast.save_pretrained(out)
    return out


def make_pico(arch: str, out: Path, tokenizer_dir: Path, *, seed: int = 0, shard: bool = False, **fields) -> Path:
    """Save a randomly initialised pico model of ``arch`` (and the tokenizer) into ``out``.

    ``fields`` replace the pico config's (e.g. ``num_hidden_layers=4``).
    """
    torch.manual_seed(seed)
    config = PICO_CONFIGS[arch]()
    config.update(fields)
    model = AutoModelForCausalLM.from_config(config)
    with torch.no_grad():  # larger than the 0.02 init, so logits differ clearly between tokens
        for p in model.parameters():
            p.normal_(0, 0.3) if p.dim() > 1 else p.uniform_(0.5, 1.5)
    model.save_pretrained(out, max_shard_size="40KB" if shard else "5GB")
    PreTrainedTokenizerFast.from_pretrained(tokenizer_dir).save_pretrained(out)
    return out


@pytest.fixture(scope="session", params=sorted(PICO_CONFIGS))
def pico(request, tmp_path_factory, tokenizer_dir) -> Path:
    """One pico checkpoint folder per architecture (single safetensors file)."""
    return make_pico(request.param, tmp_path_factory.mktemp(request.param), tokenizer_dir)


@pytest.fixture(scope="session", params=sorted(PICO_CONFIGS))
def pico_sharded(request, tmp_path_factory, tokenizer_dir) -> Path:
    """One pico checkpoint per architecture, saved in several shards with an index."""
    return make_pico(request.param, tmp_path_factory.mktemp(request.param + "-sharded"), tokenizer_dir, shard=True)


@pytest.fixture(scope="session")
def pico_llama(tmp_path_factory, tokenizer_dir) -> Path:
    return make_pico("llama", tmp_path_factory.mktemp("llama-only"), tokenizer_dir)


@pytest.fixture(scope="session")
def pair(tmp_path_factory, tokenizer_dir) -> tuple[Path, Path]:
    """Two pico Llamas of one architecture and tokenizer, different weights (models to merge)."""
    root = tmp_path_factory.mktemp("pair")
    return make_pico("llama", root / "a", tokenizer_dir, seed=0), make_pico("llama", root / "b", tokenizer_dir, seed=1)


@pytest.fixture(scope="session")
def smollm2():
    """The embedded default model (downloaded and converted once per cache)."""
    import hooklab

    return hooklab.load("smollm2", device="cpu")


@pytest.fixture
def hooklab_data(monkeypatch) -> Path:
    """HOOKLAB_DATA for code that finds its data with ``hooklab.data_path``: ../shared/data beside the checkout
    unless the environment already names a folder."""
    import os

    folder = Path(os.environ.get("HOOKLAB_DATA") or SHARED / "data")
    monkeypatch.setenv("HOOKLAB_DATA", str(folder))
    return folder


@pytest.fixture
def copy_of(tmp_path):
    """Copy a checkpoint folder, so a test may damage the copy."""
    import shutil

    def copy(folder: Path) -> Path:
        return Path(shutil.copytree(folder, tmp_path / folder.name))

    return copy


def rewrite_header(file: Path, change) -> None:
    """Apply ``change`` to a safetensors file's JSON header in place, keeping every tensor's bytes."""
    import json
    import struct

    data = file.read_bytes()
    (n,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8 : 8 + n])
    change(header)
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)
    file.write_bytes(struct.pack("<Q", len(raw)) + raw + data[8 + n :])
