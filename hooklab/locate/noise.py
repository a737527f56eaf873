"""How much noise corrupts the subject: a multiple of the spread of the model's token embeddings.

ROME corrupts the subject's token embeddings with Gaussian noise of 3 standard deviations,
the deviation measured over the embeddings of the subjects of its known facts. hooklab
measures it the same way over a reference set of subjects, by default ``REFERENCE_SUBJECTS``
(a hundred well-known people, places, organisations and works, shipped here so that tracing
needs no data file); pass your own, e.g. the subjects of the facts you trace. For the default
model the default set gives 0.118, the 656 known CounterFact subjects 0.118 and WikiText
tokens 0.113, while all vocabulary rows give 0.136 (rare tokens spread wider), which is why
it is measured over real words. The value is cached under ``cache_dir()/trace-noise``, keyed
by the model's fingerprint and a digest of the reference set.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import tempfile
from collections.abc import Sequence
from pathlib import Path

import torch

from hooklab.errors import TraceArgumentError
from hooklab.model import HookedModel
from hooklab.paths import cache_dir

log = logging.getLogger(__name__)

REFERENCE_SUBJECTS = (
    "Albert Einstein", "Marie Curie", "Isaac Newton", "Leonardo da Vinci", "Wolfgang Amadeus Mozart",
    "William Shakespeare", "Pablo Picasso", "Frida Kahlo", "Nelson Mandela", "Mahatma Gandhi",
    "Charles Darwin", "Ada Lovelace", "Galileo Galilei", "Napoleon Bonaparte", "Abraham Lincoln",
    "Winston Churchill", "Jane Austen", "Leo Tolstoy", "Gabriel García Márquez", "Haruki Murakami",
    "Johann Sebastian Bach", "Ludwig van Beethoven", "Miles Davis", "Serena Williams", "Lionel Messi",
    "Michael Jordan", "Usain Bolt", "Roger Federer", "Simone de Beauvoir", "Confucius",
    "Eiffel Tower", "Mount Kilimanjaro", "Amazon River", "Sahara Desert", "Great Barrier Reef",
    "Lake Baikal", "Machu Picchu", "Sydney Opera House", "Golden Gate Bridge", "Buenos Aires",
    "Kyoto", "Reykjavik", "Nairobi", "Istanbul", "Saint Petersburg", "Cape Town", "Vancouver",
    "Mumbai", "Lisbon", "Edinburgh", "Kathmandu", "Mount Everest", "Danube", "Bavaria", "Tasmania",
    "Toyota", "Nokia", "Microsoft Windows", "BBC", "Real Madrid", "Manchester United",
    "Volkswagen Golf", "iPhone", "PlayStation", "Harvard University", "United Nations", "Red Cross",
    "Ferrari", "Samsung", "Airbus A380", "Boeing 747", "Nintendo", "Spotify", "Google Maps",
    "Wikipedia", "Deutsche Bank", "Sony", "Honda Civic", "Lufthansa", "Oxford University Press",
    "Mona Lisa", "The Beatles", "Star Wars", "Harry Potter", "The Godfather", "Don Quixote",
    "War and Peace", "Pink Floyd", "The Simpsons", "Game of Thrones", "Swan Lake", "The Odyssey",
    "Radiohead", "Breaking Bad", "Le Monde", "The New York Times", "Catalan", "Esperanto",
    "Bundesliga", "Tour de France", "Olympic Games", "Nobel Prize", "FIFA World Cup",
)  # fmt: skip

_SIGMA = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*sigma\s*$")


def noise_scale(model: HookedModel, noise: str | float = "3sigma", reference: Sequence[str] | None = None) -> float:
    """The standard deviation of the corrupting noise: ``"<k>sigma"`` (k × :func:`embedding_std`) or a number.

    Example:
        >>> hooklab.locate.noise_scale(model)                      # 3 × 0.118 for the default model
        >>> hooklab.locate.noise_scale(model, "3sigma", subjects)  # ROME: over the traced facts' subjects
    """
    match = _SIGMA.match(noise) if isinstance(noise, str) else None
    if match:
        return float(match.group(1)) * embedding_std(model, reference)
    try:
        scale = float(noise)  # a number, or a number written as text ("0.1")
    except (TypeError, ValueError):
        raise TraceArgumentError(f"noise must be a number or a string like '3sigma', got {noise!r}.") from None
    if not scale >= 0:
        raise TraceArgumentError(f"noise must be at least 0, got {noise}.")
    return scale


def embedding_std(model: HookedModel, reference: Sequence[str] | None = None) -> float:
    """Standard deviation of the token embeddings of ``reference``'s tokens (all values pooled)."""
    reference = list(REFERENCE_SUBJECTS if reference is None else reference)
    if not reference:
        raise TraceArgumentError("the reference set for the noise scale is empty; give some subjects.")
    path = cache_dir() / "trace-noise" / f"{model.fingerprint}.json"
    key = hashlib.sha256("\n".join(reference).encode()).hexdigest()[:16]
    cached = _read(path)
    if key in cached:
        return cached[key]
    ids = [i for text in reference for i in model.tokenizer(text, add_special_tokens=False).input_ids]
    embed = model.bridge.embed
    device = next(embed.parameters()).device
    with torch.no_grad():
        std = float(embed(torch.tensor([ids], device=device)).float().std())
    log.info("token-embedding std over %d reference tokens: %.4f (cached in %s)", len(ids), std, path)
    _write(path, {**cached, key: std})
    return std


def _read(path: Path) -> dict[str, float]:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def _write(path: Path, values: dict[str, float]) -> None:
    """Write atomically, so a reader never sees half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile("w", dir=path.parent, suffix=".tmp", delete=False) as f:
        json.dump(values, f, indent=1)
    os.replace(f.name, path)
