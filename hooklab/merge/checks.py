"""Checks that models can be merged, all run before anything is written.

Same architecture, same tensor names and shapes, same tokenizer vocabulary: merging models
that differ in any of these gives a checkpoint that loads but means nothing.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

from hooklab.errors import MergeMismatchError
from hooklab.merge.sources import TensorSource, TensorSpec

log = logging.getLogger(__name__)

# Config fields that change what a tensor means without changing its shape.
STRUCTURE = ("model_type", "num_hidden_layers", "hidden_size", "intermediate_size", "num_attention_heads",
             "num_key_value_heads", "head_dim", "vocab_size", "tie_word_embeddings", "n_layer", "n_embd",
             "n_head")  # fmt: skip
# Fields that legitimately differ between fine-tunes of one model.
IGNORED = {"_name_or_path", "transformers_version", "dtype", "torch_dtype", "architectures", "use_cache"}


def check_compatible(sources: Sequence[TensorSource]) -> dict[str, TensorSpec]:
    """The first source's tensor specs, once every source agrees with it; else a MergeMismatchError."""
    first = sources[0]
    specs = first.specs()
    for other in sources[1:]:
        _same_architecture(first, other)
        _same_tensors(first, specs, other, other.specs())
    _same_vocab(sources)
    return specs


def _same_architecture(a: TensorSource, b: TensorSource) -> None:
    ca, cb = a.config.to_dict(), b.config.to_dict()
    archs = ca.get("architectures"), cb.get("architectures")
    if all(archs) and archs[0] != archs[1]:
        raise MergeMismatchError(
            f"{a.label} is {', '.join(archs[0])} but {b.label} is {', '.join(archs[1])}; merging needs models of one "
            "architecture (fine-tunes of one base model)."
        )
    for field in STRUCTURE:
        if field in ca and field in cb and ca[field] != cb[field]:
            raise MergeMismatchError(
                f"{a.label} has {field}={ca[field]!r} but {b.label} has {field}={cb[field]!r}; merging "
                "needs models of one architecture and size (fine-tunes of one base model)."
            )
    differ = sorted(k for k in set(ca) | set(cb) if k not in IGNORED and ca.get(k) != cb.get(k))
    if differ:
        log.warning("%s and %s differ in config %s; the merged model takes the first's", a.label, b.label, differ)


def _same_tensors(a: TensorSource, sa: dict[str, TensorSpec], b: TensorSource, sb: dict[str, TensorSpec]) -> None:
    only_a, only_b = sorted(set(sa) - set(sb)), sorted(set(sb) - set(sa))
    if only_a or only_b:
        parts = [f"{len(names)} only in {src.label} (e.g. {names[:3]})" for names, src in ((only_a, a), (only_b, b)) if names]
        raise MergeMismatchError(
            f"the models have different tensors: {'; '.join(parts)}. Merging needs checkpoints of one "
            "architecture with every tensor present; re-save an incomplete one with `save_pretrained`."
        )
    for name, spec in sa.items():
        if sb[name].shape != spec.shape:
            raise MergeMismatchError(
                f"{name} has shape {list(spec.shape)} in {a.label} but {list(sb[name].shape)} in {b.label}; "
                "merging needs models of one size (a resized vocabulary counts: resize both alike first)."
            )


def _same_vocab(sources: Sequence[TensorSource]) -> None:
    first = sources[0].vocab()
    for other in sources[1:]:
        vocab = other.vocab()
        if vocab == first:
            continue
        changed = sorted(t for t in set(first) | set(vocab) if first.get(t) != vocab.get(t))
        raise MergeMismatchError(
            f"{sources[0].label} and {other.label} have different tokenizers ({len(first)} vs {len(vocab)} "
            f"tokens; {len(changed)} differ, e.g. {changed[:3]}). A merged model would read token ids "
            "one way in some rows and another way in others: merge models that share one tokenizer."
        )
