"""What to edit: a prompt template, its subject and the new target, and loaders from datasets.

A request reads "``prompt.format(subject)`` continues with ``target``". The subject's last token
is where ROME and MEMIT look the fact up, so the prompt must contain the subject: either as a
``{}`` placeholder or written out (its first occurrence then becomes the placeholder).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from hooklab.errors import EditRequestError, RecordFormatError


@dataclass(frozen=True)
class EditRequest:
    """One fact to write: ``prompt.format(subject)`` should continue with ``target``.

    Args:
        prompt: a template with one ``{}`` for the subject, or a sentence that contains it.
        subject: the entity whose fact changes ("Eiffel Tower").
        target: the new continuation (" Rome"). A leading space is added when neither the
            target starts with whitespace nor the prompt ends with it, as ROME and MEMIT do,
            so that the target tokenizes as a new word.

    Example:
        >>> hooklab.EditRequest(prompt="{} is located in the city of", subject="Eiffel Tower", target=" Rome")
    """

    prompt: str
    subject: str
    target: str

    def __post_init__(self) -> None:
        for name in ("prompt", "subject", "target"):
            if not isinstance(getattr(self, name), str):
                raise EditRequestError(f"{name} must be a string, got {type(getattr(self, name)).__name__}.")
        if not self.subject.strip():
            raise EditRequestError("the subject is empty; name the entity whose fact changes (subject='Eiffel Tower').")
        if not self.target.strip():
            raise EditRequestError(
                f"the target of {self.subject!r} is empty; give the new continuation (target=' Rome')."
            )
        prompt = self.prompt
        if prompt.count("{}") > 1 or "{" in prompt.replace("{}", "") or "}" in prompt.replace("{}", ""):
            raise EditRequestError(
                f"prompt {prompt!r} must contain the subject once, as one '{{}}' placeholder and no other braces."
            )
        if "{}" not in prompt:
            if self.subject not in prompt:
                raise EditRequestError(
                    f"the subject {self.subject!r} is not in the prompt {prompt!r}; write it into the prompt "
                    "or mark its place with '{}'."
                )
            prompt = prompt.replace(self.subject, "{}", 1)
            object.__setattr__(self, "prompt", prompt)
        if not self.target[0].isspace() and not prompt.endswith((" ", "\n", "\t")):
            object.__setattr__(self, "target", " " + self.target)

    @property
    def text(self) -> str:
        """The prompt with the subject filled in."""
        return self.prompt.format(self.subject)

    def to_dict(self) -> dict[str, str]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> EditRequest:
        """A request from ``{"prompt", "subject", "target"}``; other keys are refused."""
        keys = set(data)
        if keys != {"prompt", "subject", "target"}:
            raise EditRequestError(
                f"an edit request has exactly the keys prompt, subject and target; got {sorted(keys)}."
            )
        return cls(**data)


Requests = EditRequest | Mapping[str, str] | Sequence[EditRequest | Mapping[str, str]]


def as_requests(requests: Requests) -> list[EditRequest]:
    """One request or several (``EditRequest`` or dicts with prompt, subject, target) as a list.

    A batch that asks for two targets of the same prompt and subject is refused: no update can
    make both true. (Editing a fact again in a later batch is allowed: the later edit wins.)
    """
    if isinstance(requests, (EditRequest, Mapping)):
        requests = [requests]
    out = [r if isinstance(r, EditRequest) else EditRequest.from_dict(r) for r in requests]
    if not out:
        raise EditRequestError("no edit requests given.")
    seen: dict[tuple[str, str], int] = {}
    for i, r in enumerate(out):
        j = seen.setdefault((r.prompt, r.subject), i)
        if out[j].target != r.target:
            raise EditRequestError(
                f"requests {j} and {i} give {r.prompt.format(r.subject)!r} two targets ({out[j].target!r} and "
                f"{r.target!r}); keep one, or edit them in two batches one after the other (the later one wins)."
            )
    return out


def requests_from_counterfact(records: Iterable[Mapping[str, Any]]) -> list[EditRequest]:
    """One request per CounterFact record: its rewrite prompt, subject and ``target_new``."""

    def fields(r: Mapping[str, Any]) -> tuple[str, str, str]:
        rewrite = r["requested_rewrite"]
        return rewrite["prompt"], rewrite["subject"], rewrite["target_new"]["str"]

    return _from_records(records, fields, "CounterFact", "the ROME schema: requested_rewrite.{prompt, subject, target_new.str}")


def requests_from_zsre(records: Iterable[Mapping[str, Any]]) -> list[EditRequest]:
    """One request per zsRE record: the question ``src`` answered with ``alt`` (as EasyEdit and WISE edit)."""
    return _from_records(records, lambda r: (r["src"], r["subject"], r["alt"]), "zsRE", "the MEND format: subject, src, alt")


def _from_records(records: Iterable[Mapping[str, Any]], fields, name: str, schema: str) -> list[EditRequest]:
    requests = []
    for i, record in enumerate(records):
        try:
            prompt, subject, target = fields(record)
        except (KeyError, TypeError) as e:
            raise RecordFormatError(f"record {i} is not a {name} record ({schema}): it lacks {e}.") from None
        try:
            requests.append(EditRequest(prompt, subject, target))
        except EditRequestError as e:
            raise EditRequestError(f"record {i}: {e}") from None
    return requests
