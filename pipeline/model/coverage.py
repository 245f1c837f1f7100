"""Coverage: how much of a text the model can read, and the rule below which it does not guess.

A model only knows the words of its vocabulary; every other word reaches it as the one id ``<unk>``.
A text made only of such words (Chinese, say, for a model trained on English IMDb reviews) still gets a
score, and it looks as confident as any other: that score says nothing about the text. So every scored
text also gets its **coverage**:

* ``known``: how many of its tokens the model knows (ids other than ``<pad>`` and ``<unk>``), counted
  over the tokens the model actually reads (after truncation to ``max_len``);
* ``share``: ``known / tokens`` (NaN for a text with no tokens at all: there is nothing to cover).

A :class:`CoverageRule` (``min_known`` known tokens and a ``min_share`` of them) decides which texts
are *readable*. Below it a text is labelled ``'unknown'`` and gets no score. The rule is recorded with
the model: a version's ``config.json`` may carry ``"coverage": {"min_known": 1, "min_share": 0.5}``;
a version without it uses :data:`DEFAULT_RULE`.

Why the defaults (1 known token, half of them known), measured with the ``default`` preset's vocabulary
(30,000 ids, 400 tokens head+tail): none of the 2,500 IMDb validation reviews falls below it (lowest
share 0.81, 1st percentile 0.89), nor any of 5,000 unlabelled IMDb reviews the vocabulary never saw
(lowest 0.73); 9 of 10 one-line product/restaurant reviews pass (the tenth is "meh", a word the model
does not know), while 7 of 10 short non-English sentences (all in other scripts, Spanish, Polish) and 9
of 10 bits of gibberish fall below it (0 or 1 known tokens); German, French and Italian sentences that
share half their words with English ("Der Film war sehr gut", 4 of 5) pass. A text that is half unknown words is still mostly guessed from words the model learned;
fewer than half known and the score rests on ``<unk>`` more than on the text.

    >>> known, share = coverage_of(ids, lengths)          # vectorised over an encoded batch
    >>> known, share = coverage_of_flat(flat, lengths)    # the same over unpadded rows
    >>> DEFAULT_RULE.readable(known, share)               # -> bool mask
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.core.errors import IntegrityError
from pipeline.prepare.vocab import UNK_ID

#: the ``config.json`` key a model version may carry its rule under
CONFIG_KEY = "coverage"


@dataclass(frozen=True)
class CoverageRule:
    """A text is readable when at least ``min_known`` of its tokens are known AND known tokens make up at
    least ``min_share`` (0..1) of its tokens. ``CoverageRule(0, 0.0)`` reads everything that has tokens."""

    min_known: int = 1
    min_share: float = 0.5

    def readable(self, known: np.ndarray, share: np.ndarray) -> np.ndarray:
        """Bool mask: the texts the model may score. A text with no tokens (share NaN) is never readable."""
        share = np.asarray(share, dtype=np.float64)
        with np.errstate(invalid="ignore"):
            return (np.asarray(known) >= self.min_known) & (share >= self.min_share) & ~np.isnan(share)

    def describe(self) -> str:
        """The rule in words, for reports and the ``predict`` hint."""
        return f"at least {self.min_known} known word(s) and {self.min_share:.0%} of its words known"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


DEFAULT_RULE = CoverageRule()


def coverage_of(ids: np.ndarray, lengths: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(known tokens int64 [n], share known float64 [n]) of encoded rows ``ids`` [n, max_len] (padded with
    ``<pad>`` = 0) whose real token counts are ``lengths`` [n]. Vectorised: one comparison over the batch.
    A row with no tokens has share NaN."""
    ids, lengths = np.asarray(ids), np.asarray(lengths, dtype=np.int64)
    # <pad> (0) < <unk> (1) < every real token: ids above <unk> are exactly the known tokens
    known = (ids > UNK_ID).sum(axis=1, dtype=np.int64) if ids.size else np.zeros(len(lengths), np.int64)
    share = np.full(len(lengths), np.nan, dtype=np.float64)
    has_tokens = lengths > 0
    share[has_tokens] = known[has_tokens] / lengths[has_tokens]
    return known, share


def coverage_of_flat(flat: np.ndarray, lengths: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """:func:`coverage_of` for unpadded rows: ``flat`` holds the rows' token ids one row after another and
    ``lengths`` [n] their counts. The same numbers, without an [n, max_len] array."""
    flat, lengths = np.asarray(flat), np.asarray(lengths, dtype=np.int64)
    seen = np.zeros(len(flat) + 1, np.int64)
    np.cumsum(flat > UNK_ID, out=seen[1:])
    ends = np.cumsum(lengths)
    known = seen[ends] - seen[ends - lengths]
    share = np.full(len(lengths), np.nan, dtype=np.float64)
    has_tokens = lengths > 0
    share[has_tokens] = known[has_tokens] / lengths[has_tokens]
    return known, share


def rule_from_config(config: dict, where: str | Path = "config.json") -> CoverageRule:
    """The rule a model version's ``config`` records under ``"coverage"``, else :data:`DEFAULT_RULE`.
    A malformed entry is an :class:`IntegrityError` naming ``where`` and the field."""
    entry = config.get(CONFIG_KEY) if isinstance(config, dict) else None
    if entry is None:
        return DEFAULT_RULE
    if not isinstance(entry, dict):
        raise IntegrityError(f"{where}: {CONFIG_KEY!r} must be an object like "
                             f'{{"min_known": 1, "min_share": 0.5}}, got {entry!r}')
    unknown = sorted(set(entry) - {"min_known", "min_share"})
    if unknown:
        raise IntegrityError(f"{where}: {CONFIG_KEY!r} has unknown field(s) {unknown}; it takes min_known and "
                             f"min_share")
    min_known = entry.get("min_known", DEFAULT_RULE.min_known)
    min_share = entry.get("min_share", DEFAULT_RULE.min_share)
    if isinstance(min_known, bool) or not isinstance(min_known, int) or min_known < 0:
        raise IntegrityError(f"{where}: {CONFIG_KEY}.min_known must be a whole number >= 0, got {min_known!r}")
    if (isinstance(min_share, bool) or not isinstance(min_share, (int, float)) or math.isnan(min_share)
            or not 0.0 <= min_share <= 1.0):
        raise IntegrityError(f"{where}: {CONFIG_KEY}.min_share must be a number within 0..1, got {min_share!r}")
    return CoverageRule(int(min_known), float(min_share))
