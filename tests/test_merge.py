"""hooklab.merge end to end on pico checkpoints: results, loading, errors, interruption."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

import hooklab
from hooklab import errors
from hooklab.merge import methods

from conftest import make_pico

PROMPT = "The Eiffel Tower is located in the city of"


def weights_of(folder):
    """Every tensor of a checkpoint folder, by name, as transformers loads them."""
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    return {k: v for k, v in model.state_dict().items()}, model


@pytest.fixture(scope="module")
def twin(pair, tmp_path_factory):
    """A second folder holding exactly the weights of ``pair[0]``."""
    import shutil

    return Path(shutil.copytree(pair[0], tmp_path_factory.mktemp("twin") / "a2"))


def test_linear_loads_and_equals_merging_by_hand(pico, tmp_path, tokenizer_dir):
    arch = json.loads((pico / "config.json").read_text())["model_type"]
    other = make_pico(arch, tmp_path / "other", tokenizer_dir, seed=7)
    result = hooklab.merge([pico, other], weights=[0.25, 0.75], out=tmp_path / "merged", shard_size="20KB")
    assert (result.path / "model.safetensors.index.json").is_file() and (result.path / "tokenizer.json").is_file()
    assert json.loads((result.path / "merge.json").read_text())["weights"] == [0.25, 0.75]

    a, ref = weights_of(pico)
    b, _ = weights_of(other)
    ref.load_state_dict({k: 0.25 * a[k] + 0.75 * b[k] for k in a})
    ids = hooklab.load(pico, device="cpu").to_tokens(PROMPT)
    with torch.no_grad():
        expected = ref(ids).logits
        from_hf = AutoModelForCausalLM.from_pretrained(result.path)(ids).logits
        from_hooklab = hooklab.load(result, device="cpu")(ids)
    assert torch.allclose(from_hf, expected, atol=1e-5)
    assert torch.allclose(from_hooklab, expected, atol=1e-5)


@pytest.mark.parametrize("method", ["linear", "ties", "slerp", "task_arithmetic"])
def test_identical_models_come_back_unchanged(pair, twin, tmp_path, method):
    a, _ = pair
    base = {"base": a} if method in ("ties", "task_arithmetic") else {}
    sources = [a, twin, a] if method == "linear" else [a, twin] if method == "slerp" else [twin, twin]
    weights = {"weights": [0.2, 0.3, 0.5]} if method == "linear" else {}
    out = hooklab.merge(sources, method=method, out=tmp_path / "same", **base, **weights)
    assert load_file(out.path / "model.safetensors").keys() == load_file(a / "model.safetensors").keys()
    for name, tensor in load_file(a / "model.safetensors").items():
        assert torch.equal(load_file(out.path / "model.safetensors")[name], tensor), name


def test_ties_equals_the_pure_function(pair, tmp_path):
    a, b = pair
    out = hooklab.merge([b], base=a, method="ties", parameters={"density": 0.4}, out=tmp_path / "ties")
    ta, tb, got = (load_file(f / "model.safetensors") for f in (a, b, out.path))
    for name in ta:
        assert torch.equal(got[name], methods.ties(ta[name], [tb[name]], [1.0], 0.4)), name


def test_slerp_gradient_over_depth(pair, tmp_path):
    a, b = pair
    out = hooklab.merge([a, b], method="slerp", parameters={"t": [0.0, 1.0]}, out=tmp_path / "grad", dtype="bfloat16")
    got, ta, tb = (load_file(f / "model.safetensors") for f in (out.path, a, b))
    assert json.loads((out.path / "config.json").read_text())["dtype"] == "bfloat16"
    first, last = "model.layers.0.mlp.down_proj.weight", "model.layers.1.mlp.down_proj.weight"
    assert got[first].dtype == torch.bfloat16
    assert torch.equal(got[first], ta[first].bfloat16())  # layer 0 of 2: t = 0
    assert torch.equal(got[last], tb[last].bfloat16())  # the last layer: t = 1
    assert torch.equal(got["model.embed_tokens.weight"], ta["model.embed_tokens.weight"].bfloat16())
    assert torch.equal(got["lm_head.weight"], tb["lm_head.weight"].bfloat16())


def test_loaded_models_merge_like_their_folders_and_stay_unchanged(pair, tmp_path):
    a, b = pair
    ma, mb = hooklab.load(a, device="cpu"), hooklab.load(b, device="cpu")
    before = ma.fingerprint, mb.fingerprint
    from_models = hooklab.merge([ma, mb], weights=[1, 2], out=tmp_path / "m")
    from_folders = hooklab.merge([a, b], weights=[1, 2], out=tmp_path / "f")
    left, right = load_file(from_models.path / "model.safetensors"), load_file(from_folders.path / "model.safetensors")
    assert left.keys() == right.keys() and all(torch.equal(left[k], right[k]) for k in left)
    assert (ma.fingerprint, mb.fingerprint) == before
    hooklab.load(from_models, device="cpu")  # tokenizer and config came from the loaded model


def test_auto_weights_favour_the_model_with_lower_loss(pair, tmp_path):
    from hooklab.merge.cocktail import _batch, answer_loss, encode

    a, b = pair
    examples = [("The Eiffel Tower is located in the city of", " Paris."), ("Mount Fuji is the highest", " mountain in Japan."),
                ("The river Thames flows through", " London.")]  # fmt: skip
    # Teach a copy of b the answers: it must end up with the lower loss and the larger weight.
    taught = tmp_path / "taught"
    model = AutoModelForCausalLM.from_pretrained(b)
    tok = hooklab.load(b, device="cpu").tokenizer
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(25):
        for prompt, answer in examples:
            ids = tok(prompt + answer, return_tensors="pt").input_ids
            model(ids, labels=ids).loss.backward()
            opt.step()
            opt.zero_grad()
    model.save_pretrained(taught)
    tok.save_pretrained(taught)

    result = hooklab.merge([a, taught], weights="auto", examples=examples, temperature=0.5, out=tmp_path / "mix")
    losses = []
    for folder in (a, taught):  # reference: each example alone, no padding
        loaded = hooklab.load(folder, device="cpu")
        total = count = 0
        for ids, start in encode(loaded, examples):
            with torch.no_grad():
                logits = loaded.hf_model(torch.tensor([ids])).logits[0]
            total += torch.nn.functional.cross_entropy(logits[start - 1 : -1], torch.tensor(ids[start:]), reduction="sum")
            count += len(ids) - start
        losses.append(float(total / count))
        assert answer_loss(loaded, examples, batch_size=2) == pytest.approx(losses[-1], rel=1e-4)
    assert result.losses == pytest.approx(losses, rel=1e-4)
    assert result.losses[1] < result.losses[0] and result.weights[1] > result.weights[0]
    assert result.weights == pytest.approx(torch.softmax(-torch.tensor(losses) / 0.5, 0).tolist(), rel=1e-4)
    ids, _, _ = _batch(encode(loaded, examples), 0)
    assert ids.shape[1] == max(len(x) for x, _ in encode(loaded, examples))  # padded to the longest only
    a_w, b_w = weights_of(a)[0], weights_of(taught)[0]
    got = weights_of(result.path)[0]
    w = result.weights
    assert all(torch.allclose(got[k], w[0] * a_w[k] + w[1] * b_w[k], atol=1e-6) for k in got)


def nothing_written(folder):
    return not [p for p in folder.iterdir() if p.name != "in"]


@pytest.mark.parametrize(
    "make, error, match",
    [
        (lambda tmp, tok: make_pico("qwen2", tmp / "in" / "q", tok), errors.MergeMismatchError,
         "LlamaForCausalLM but .* is Qwen2ForCausalLM"),
        (lambda tmp, tok: _resized(tmp, tok), errors.MergeMismatchError, "intermediate_size=64.*intermediate_size=48"),
        (lambda tmp, tok: _other_tokenizer(tmp, tok), errors.MergeMismatchError, "different tokenizers"),
        (lambda tmp, tok: _missing_tensor(tmp, tok), errors.CheckpointMismatchError, r"lacks 1 tensor.*up_proj"),
    ],
    ids=["architecture", "shape", "tokenizer", "tensors"],
)  # fmt: skip
def test_mismatched_models_are_refused_before_writing(pair, tmp_path, tokenizer_dir, make, error, match):
    other = make(tmp_path, tokenizer_dir)
    with pytest.raises(error, match=match):
        hooklab.merge([pair[0], other], out=tmp_path / "out")
    assert nothing_written(tmp_path)


def _resized(tmp, tok):
    folder = make_pico("llama", tmp / "in" / "r", tok)
    model = AutoModelForCausalLM.from_pretrained(folder)
    model.config.intermediate_size = 48
    AutoModelForCausalLM.from_config(model.config).save_pretrained(folder)
    return folder


def _missing_tensor(tmp, tok):
    from safetensors.torch import save_file

    folder = make_pico("llama", tmp / "in" / "m", tok)
    tensors = load_file(folder / "model.safetensors")
    del tensors["model.layers.1.mlp.up_proj.weight"]
    save_file(tensors, folder / "model.safetensors", metadata={"format": "pt"})
    return folder


def _other_tokenizer(tmp, tok):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    from conftest import VOCAB

    t = Tokenizer(models.BPE())
    t.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    t.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=VOCAB, special_tokens=["<pad>", "<s>", "</s>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())  # fmt: skip
    t.train_from_iterator(["Completely different training text about rivers, music and chemistry."] * 20, trainer)
    other_tok = tmp / "in" / "tok"
    PreTrainedTokenizerFast(tokenizer_object=t, bos_token="<s>", eos_token="</s>", pad_token="<pad>").save_pretrained(other_tok)
    return make_pico("llama", tmp / "in" / "t", other_tok)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"method": "median"}, "unknown merge method 'median'.*linear"),
        ({"method": "ties"}, "ties needs base="),
        ({"method": "ties", "base": "A", "parameters": {"densty": 0.5}}, r"no parameter\(s\) \['densty'\]"),
        ({"method": "ties", "base": "A", "parameters": {"density": 1.5}}, r"density is 1.5.*\[0.0, 1.0\]"),
        ({"method": "ties", "base": "A", "parameters": {"sparsify": "random"}}, "sparsify is 'random'.*dare"),
        ({"weights": [1.0]}, "weights \\[1.0\\] for 2 models"),
        ({"weights": "auto"}, "pass examples="),
        ({"examples": [("a", " b")]}, "only used with weights='auto'"),
        ({"method": "slerp", "weights": [1, 1]}, "slerp takes no weights"),
        ({"method": "slerp", "base": "T"}, "exactly 2 models"),
        ({"method": "linear", "base": "A"}, "linear takes no base"),
        ({"dtype": "int8"}, "float32"),
        ({"device": "cuda:7"}, "cuda:7 is not there"),
    ],
)
def test_bad_requests_are_refused_before_writing(pair, twin, tmp_path, kwargs, match):
    kwargs = {k: {"A": pair[0], "T": twin}.get(v, v) if isinstance(v, str) else v for k, v in kwargs.items()}
    with pytest.raises(hooklab.HooklabError, match=match):
        hooklab.merge(list(pair), out=tmp_path / "out", **kwargs)
    assert nothing_written(tmp_path)


def test_existing_output_is_kept_unless_overwrite(pair, tmp_path, monkeypatch):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(errors.MergeConfigError, match="already exists.*overwrite=True"):
        hooklab.merge(list(pair), out=out)
    monkeypatch.setattr(methods, "linear", _fail_after(2, RuntimeError))
    with pytest.raises(RuntimeError):
        hooklab.merge(list(pair), out=out, overwrite=True)
    assert (out / "keep.txt").read_text() == "mine"  # a failed overwrite leaves the old folder
    monkeypatch.undo()
    hooklab.merge(list(pair), out=out, overwrite=True)
    assert not (out / "keep.txt").exists() and (out / "config.json").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def _fail_after(n, kind):
    """methods.linear that raises ``kind`` on its (n+1)-th call."""
    real, calls = methods.linear, []

    def failing(*args, **kwargs):
        calls.append(1)
        if len(calls) > n:
            raise kind("stopped")
        return real(*args, **kwargs)

    return failing


@pytest.mark.parametrize("kind", [RuntimeError, KeyboardInterrupt])
def test_interrupted_merge_leaves_nothing(pair, tmp_path, monkeypatch, kind):
    monkeypatch.setattr(methods, "linear", _fail_after(3, kind))
    with pytest.raises(kind):
        hooklab.merge(list(pair), out=tmp_path / "out", shard_size="20KB")
    assert list(tmp_path.iterdir()) == []


def test_killed_merge_leaves_no_finished_looking_folder(pair, tmp_path):
    script = textwrap.dedent(f"""
        import os, signal
        import hooklab
        from hooklab.merge import methods
        real, calls = methods.linear, []
        def dying(*args, **kwargs):
            calls.append(1)
            if len(calls) == 4:
                os.kill(os.getpid(), signal.SIGKILL)
            return real(*args, **kwargs)
        methods.linear = dying
        hooklab.merge({[str(p) for p in pair]!r}, out={str(tmp_path / "out")!r}, shard_size="20KB")
    """)
    done = subprocess.run([sys.executable, "-c", script], env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    assert done.returncode == -9
    left = list(tmp_path.iterdir())
    assert not (tmp_path / "out").exists()
    assert len(left) == 1 and left[0].name.startswith(".out.") and left[0].name.endswith(".partial")
    assert not (left[0] / "config.json").exists()  # nothing there looks like a loadable model


@pytest.mark.gpu
def test_merge_on_gpu_equals_cpu(pair, tmp_path):
    a, b = pair
    for device in ("cpu", "cuda"):
        hooklab.merge([b], base=a, method="ties", parameters={"density": 0.5}, out=tmp_path / device, device=device)
    cpu, gpu = (load_file(tmp_path / d / "model.safetensors") for d in ("cpu", "cuda"))
    assert all(torch.allclose(cpu[k], gpu[k], atol=1e-6) for k in cpu)
