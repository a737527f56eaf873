"""zsRE metrics (as in the ROME, MEMIT, EasyEdit and WISE evaluations), per record.

All three are teacher-forced token accuracies, the answer scored as " " + answer:
- rel, reliability: share of ``alt`` tokens that are the model's top prediction after ``src``
  (the edit writes ``alt``);
- gen, generalisation: the same after the paraphrase ``rephrase``;
- loc, locality: share of positions, with ``loc_ans`` teacher-forced after the unrelated
  question ``loc``, where the model's top prediction is the one the unedited model makes.
  The unedited predictions come from the same model with the edit undone for the moment
  (bit for bit); without an edit the model is its own reference (loc = 1).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from hooklab.errors import RecordFormatError
from hooklab.evaluate.scoring import score
from hooklab.model import HookedModel

if TYPE_CHECKING:
    from hooklab.edit.deltas import Edit


@dataclass(frozen=True)
class ZsreScore:
    rel: float
    gen: float
    loc: float


def score_zsre(model: HookedModel, records: Sequence[Mapping[str, Any]], *, edit: Edit | None = None) -> list[ZsreScore]:
    """Every record's metrics on ``model``; ``edit`` (applied to it) gives the unedited reference for loc."""
    pairs, loc_pairs = [], []
    for i, record in enumerate(records):
        try:
            alt = " " + record["alt"].strip()
            pairs += [(record["src"], alt), (record["rephrase"], alt)]
            loc_pairs.append((record["loc"], " " + record["loc_ans"].strip()))
        except (KeyError, TypeError, AttributeError) as e:
            raise RecordFormatError(f"record {i} is not a zsRE record (MEND format): it lacks {e}.") from None
    scored = score(model, pairs + loc_pairs)
    edited, loc_now = scored[: len(pairs)], scored[len(pairs) :]
    if edit is None:
        reference = loc_now
    else:
        with edit.undone():
            reference = score(model, loc_pairs)
    return [
        ZsreScore(
            rel=edited[2 * i].token_accuracy,
            gen=edited[2 * i + 1].token_accuracy,
            loc=float((loc_now[i].argmax == reference[i].argmax).float().mean()),
        )
        for i in range(len(records))
    ]


def summarize(scores: Sequence[ZsreScore]) -> dict[str, float]:
    """Means over records: rel gen loc."""
    return {key: sum(getattr(s, key) for s in scores) / len(scores) for key in ("rel", "gen", "loc")}
