"""CounterFact and zsRE metrics against plain computations on the full model output."""

from __future__ import annotations

import math

import pytest
import torch
from editing import FACTS, key_moments, llama  # noqa: F401 (fixture)

import hooklab
from hooklab.errors import RecordFormatError
from hooklab.evaluate import score_counterfact, score_zsre
from hooklab.evaluate.fluency import generate_texts, ngram_entropy
from hooklab.evaluate.scoring import score


def reference(model, prompt: str, continuation: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Log-probabilities and argmax of the continuation's tokens from one full forward."""
    tok = model.tokenizer
    ids, cont = tok(prompt)["input_ids"], tok(continuation, add_special_tokens=False)["input_ids"]
    with torch.no_grad():
        lp = model(torch.tensor([ids + cont]))[0].log_softmax(-1)
    at = [len(ids) - 1 + j for j in range(len(cont))]
    return lp[at, cont], lp[at].argmax(-1)


def record(prompt, subject, new, true, paraphrases=(), neighbours=("The Colosseum is in",)):
    return {
        "requested_rewrite": {"prompt": prompt, "subject": subject, "target_new": {"str": new}, "target_true": {"str": true}},
        "paraphrase_prompts": list(paraphrases),
        "neighborhood_prompts": list(neighbours),
        "generation_prompts": [],
    }


def test_teacher_forced_scores_match_full_forward(pico):
    model = hooklab.load(pico, device="cpu")
    pairs = [("The Eiffel Tower is in", " Paris"), ("Mount Fuji", " is the highest mountain"), ("x", " Rome and Paris")]
    for (prompt, cont), got in zip(pairs, score(model, pairs, batch_size=2)):  # batches mix lengths
        lp, top = reference(model, prompt, cont)
        assert torch.allclose(got.log_probs, lp, atol=1e-4) and torch.equal(got.argmax, top)
        assert got.mean_log_prob == pytest.approx(float(lp.mean()), abs=1e-4)


def test_counterfact_metrics(llama):
    recs = [
        record("{} is located in the city of", "The Eiffel Tower", "Rome", "Paris", ["Where is the Eiffel Tower? In"]),
        record("{} flows through", "The river Thames", "Paris", "London", neighbours=["Mount Fuji is in", "x"]),
    ]
    scores = score_counterfact(llama, recs, fluency=False)
    for rec, s in zip(recs, scores):
        rw = rec["requested_rewrite"]
        new, true = " " + rw["target_new"]["str"], " " + rw["target_true"]["str"]
        mean = lambda p, t: float(reference(llama, p, t)[0].mean())  # noqa: E731
        prompt = rw["prompt"].format(rw["subject"])
        assert s.es == float(mean(prompt, new) > mean(prompt, true))
        assert s.em == pytest.approx(math.exp(mean(prompt, new)) - math.exp(mean(prompt, true)), abs=1e-5)
        neigh = [float(mean(p, true) > mean(p, new)) for p in rec["neighborhood_prompts"]]
        assert s.ns == pytest.approx(sum(neigh) / len(neigh))
        assert s.fluency is None
    assert scores[0].ps is not None and scores[1].ps is None and scores[1].pm is None
    means = hooklab.evaluate(llama, recs, fluency=False)
    assert set(means) == {"es", "ps", "ns", "em", "pm", "nm", "fluency"} and math.isnan(means["fluency"])
    assert means["ps"] == scores[0].ps  # over the records that have paraphrases only
    assert means["ns"] == pytest.approx((scores[0].ns + scores[1].ns) / 2)


def test_ngram_entropy_by_hand():
    h2 = -(2 / 3 * math.log2(2 / 3) + 1 / 3 * math.log2(1 / 3))  # bigrams of "a b a b": ab ×2, ba ×1
    h3 = 1.0  # trigrams aba, bab
    assert ngram_entropy("a b a b") == pytest.approx((2 / 3 * h2 + 4 / 3 * h3) / 2)
    assert ngram_entropy("the the the the the") == 0.0


def test_generations_are_seeded_and_continue_the_prompt(llama):
    prompts = ["The Eiffel Tower is", "Mount Fuji"]
    a = generate_texts(llama, prompts, max_new_tokens=6, seed=3)
    assert a == generate_texts(llama, prompts, max_new_tokens=6, seed=3)
    assert all(text.startswith(p) for text, p in zip(a, prompts))
    scores = score_counterfact(llama, [{**record("{} is in", "Paris", "Rome", "France"), "generation_prompts": prompts}])
    assert scores[0].fluency == pytest.approx(sum(ngram_entropy(t) for t in generate_texts(llama, prompts)) / 2)


def test_zsre_metrics_and_locality_against_the_unedited_model(llama):
    recs = [
        {"subject": "Mount Fuji", "src": "Which country is Mount Fuji in?", "rephrase": "Where is Mount Fuji?",
         "alt": "Paris Rome", "loc": "nq question: who wrote hamlet", "loc_ans": "William Shakespeare"},
    ]  # fmt: skip
    s = score_zsre(llama, recs)[0]
    _, top = reference(llama, recs[0]["src"], " Paris Rome")
    tokens = torch.tensor(llama.tokenizer(" Paris Rome", add_special_tokens=False)["input_ids"])
    assert s.rel == pytest.approx(float((top == tokens).float().mean())) and s.loc == 1.0
    _, unedited = reference(llama, recs[0]["loc"], " William Shakespeare")
    request = hooklab.requests_from_zsre(recs)[0]
    e = hooklab.edit(llama, request, "rome", stats=key_moments(llama, [0]),
                     hparams=dict(hooklab.RomeHparams.for_model(llama).to_dict(), v_steps=5, context_lengths=[]))  # fmt: skip
    _, edited = reference(llama, recs[0]["loc"], " William Shakespeare")
    s = score_zsre(llama, recs, edit=e)[0]
    e.undo()
    assert s.loc == pytest.approx(float((edited == unedited).float().mean()))
    assert hooklab.evaluate(llama, recs, "zsre").keys() == {"rel", "gen", "loc"}


def test_bad_records(llama):
    with pytest.raises(RecordFormatError, match="record 0 is not a CounterFact record"):
        hooklab.evaluate(llama, [{"prompt": "x"}])
    with pytest.raises(RecordFormatError, match="not a zsRE record"):
        hooklab.evaluate(llama, [{"src": "x"}], "zsre")
    with pytest.raises(RecordFormatError, match="unknown protocol"):
        hooklab.evaluate(llama, [FACTS[0].to_dict()], "mmlu")
    with pytest.raises(RecordFormatError, match="no records"):
        hooklab.evaluate(llama, [])


def test_generation_without_a_pad_token(llama):
    """Tokenizers without a pad token (SmolLM2's under some transformers versions) still generate, padding
    with end of sequence; the padding is masked, so the texts are those generated with a pad token."""
    prompts = ["The Eiffel Tower is", "Mount Fuji"]
    with_pad = generate_texts(llama, prompts, max_new_tokens=6, seed=3)
    tok, pad = llama.tokenizer, llama.tokenizer.pad_token
    tok.pad_token = None
    try:
        assert tok.pad_token_id is None
        assert generate_texts(llama, prompts, max_new_tokens=6, seed=3) == with_pad
    finally:
        tok.pad_token = pad
