"""CounterFact metrics (ROME paper, section 4.2), per record.

For a record with target_new and target_true (each scored as " " + str, length-normalised
teacher-forced log-probability, the mean over its tokens):
- ES, efficacy: 1 if P(new) > P(true) after the rewrite prompt; EM its magnitude P(new) − P(true),
  with P = exp(mean log-probability);
- PS, paraphrase: the same, averaged over the record's paraphrase prompts (records without
  paraphrases have none, and are left out of the mean);
- NS, neighborhood: the share of neighborhood prompts (other subjects, same relation; their
  answer is target_true) where P(true) > P(new); NM: P(true) − P(new);
- fluency: n-gram entropy of a generation from each generation prompt (the paraphrase prompts
  where a record has none).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from hooklab.errors import RecordFormatError
from hooklab.evaluate.fluency import generate_texts, ngram_entropy
from hooklab.evaluate.scoring import score
from hooklab.model import HookedModel


@dataclass(frozen=True)
class CounterFactScore:
    """One record's metrics; ``ps``/``pm`` are None without paraphrases, ``fluency`` when not measured."""

    es: float
    em: float
    ps: float | None
    pm: float | None
    ns: float
    nm: float
    fluency: float | None


def score_counterfact(
    model: HookedModel, records: Sequence[Mapping[str, Any]], *, fluency: bool = True, seed: int = 0
) -> list[CounterFactScore]:
    """Every record's metrics on ``model`` as it is now, in one batched pass (plus generation)."""
    pairs, spans = [], []
    for i, record in enumerate(records):
        try:
            rewrite = record["requested_rewrite"]
            new, true = " " + rewrite["target_new"]["str"].strip(), " " + rewrite["target_true"]["str"].strip()
            groups = [[rewrite["prompt"].format(rewrite["subject"])], record["paraphrase_prompts"], record["neighborhood_prompts"]]
        except (KeyError, TypeError) as e:
            raise RecordFormatError(f"record {i} is not a CounterFact record: it lacks {e}.") from None
        spans.append([len(g) for g in groups])
        pairs += [(p, t) for g in groups for p in g for t in (new, true)]
    scored = iter(score(model, pairs))
    texts = _fluency_texts(model, records, seed) if fluency else None
    out = []
    for i, (n_rewrite, n_para, n_neigh) in enumerate(spans):
        groups = [[(next(scored).mean_log_prob, next(scored).mean_log_prob) for _ in range(n)] for n in (n_rewrite, n_para, n_neigh)]
        rewrite, para, neigh = groups
        out.append(
            CounterFactScore(
                es=_mean(new > true for new, true in rewrite),
                em=_mean(math.exp(new) - math.exp(true) for new, true in rewrite),
                ps=_mean(new > true for new, true in para) if para else None,
                pm=_mean(math.exp(new) - math.exp(true) for new, true in para) if para else None,
                ns=_mean(true > new for new, true in neigh),
                nm=_mean(math.exp(true) - math.exp(new) for new, true in neigh),
                fluency=texts[i] if texts is not None else None,
            )
        )
    return out


def summarize(scores: Sequence[CounterFactScore]) -> dict[str, float]:
    """Means over records: es ps ns em pm nm fluency (ps/pm over the records with paraphrases)."""
    mean = lambda xs: _mean(x for x in xs if x is not None) if any(x is not None for x in xs) else math.nan  # noqa: E731
    return {key: mean([getattr(s, key) for s in scores]) for key in ("es", "ps", "ns", "em", "pm", "nm", "fluency")}


def _fluency_texts(model: HookedModel, records: Sequence[Mapping[str, Any]], seed: int) -> list[float | None]:
    prompts, owner = [], []
    for i, record in enumerate(records):
        for p in record.get("generation_prompts") or record.get("paraphrase_prompts") or []:
            prompts.append(p)
            owner.append(i)
    entropies: list[list[float]] = [[] for _ in records]
    for i, text in zip(owner, generate_texts(model, prompts, seed=seed)):
        entropies[i].append(ngram_entropy(text))
    return [_mean(e) if e else None for e in entropies]


def _mean(values) -> float:
    values = [float(v) for v in values]
    return sum(values) / len(values)
