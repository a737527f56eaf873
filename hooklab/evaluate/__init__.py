"""Edit evaluation: CounterFact (ES PS NS, their magnitudes, fluency) and zsRE (rel gen loc)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, Literal

from hooklab.evaluate import counterfact, zsre
from hooklab.evaluate.counterfact import CounterFactScore, score_counterfact
from hooklab.evaluate.zsre import ZsreScore, score_zsre
from hooklab.errors import RecordFormatError
from hooklab.model import HookedModel

if TYPE_CHECKING:
    from hooklab.edit.deltas import Edit

__all__ = ["CounterFactScore", "ZsreScore", "evaluate", "score_counterfact", "score_zsre"]


def evaluate(
    model: HookedModel,
    records: Sequence[Mapping[str, Any]],
    protocol: Literal["counterfact", "zsre"] = "counterfact",
    *,
    edit: Edit | None = None,
    fluency: bool = True,
    seed: int = 0,
) -> dict[str, float]:
    """Mean metrics over ``records`` on ``model`` as it is now.

    ``"counterfact"`` gives ``es ps ns em pm nm fluency`` (ps and pm over the records that have
    paraphrase prompts; fluency NaN with ``fluency=False``); ``"zsre"`` gives ``rel gen loc``,
    where loc compares with the model with ``edit`` undone (without ``edit``: with itself).
    Definitions in the README.

    Example:
        >>> records = json.load(open("counterfact_known_dev.json"))[:100]
        >>> hooklab.evaluate(model, records, "counterfact")     # {'es': 0.0, 'ps': 0.07, 'ns': 1.0, ...}
    """
    if not records:
        raise RecordFormatError("no records to evaluate.")
    if protocol == "counterfact":
        return counterfact.summarize(score_counterfact(model, records, fluency=fluency, seed=seed))
    if protocol == "zsre":
        return zsre.summarize(score_zsre(model, records, edit=edit))
    raise RecordFormatError(f"unknown protocol {protocol!r}; use 'counterfact' or 'zsre'.")
