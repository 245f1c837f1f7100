"""The profile of a set of scored texts: what drift monitoring compares (:mod:`pipeline.score.drift`).

A :class:`Profile` holds the score histogram (20 bins over 0..1), the label counts (positive / negative /
unknown), a histogram of the tokens the model read per text (fixed bins, :data:`LENGTH_EDGES`) with its
quantiles, and the unknown-token rate (the share of tokens the model does not know, ``1 - coverage``, averaged
over texts). Profiles add up (chunks, partitions) and are stored as JSON: a model's *reference* profile, taken
from its validation reviews at registration, is ``reference_profile.json`` in the version's folder.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from pipeline.core.errors import IntegrityError

REFERENCE_FILE = "reference_profile.json"
SCORE_BINS = 20
LENGTH_EDGES = (0, 1, 5, 10, 20, 50, 100, 200, 400, 800, 1600)   # tokens read per text; last bin open-ended


@dataclass
class Profile:
    """What a set of scored texts looks like (see the module docstring)."""
    rows: int = 0
    score_hist: list = field(default_factory=lambda: [0] * SCORE_BINS)
    labels: dict = field(default_factory=lambda: {"positive": 0, "negative": 0, "unknown": 0})
    length_hist: list = field(default_factory=lambda: [0] * len(LENGTH_EDGES))
    unknown_tokens: float = 0.0        # sum over texts of (1 - coverage)
    texts_with_coverage: int = 0

    def add(self, scores: np.ndarray, labels: np.ndarray, tokens: np.ndarray | None,
            coverage: np.ndarray | None) -> "Profile":
        """Add rows: ``scores`` (NaN for 'unknown'), ``labels`` 0 negative / 1 positive / 2 unknown, ``tokens``
        read per text and ``coverage`` (NaN: not reported) — all arrays of the same length."""
        scores = np.asarray(scores, dtype=np.float64)
        labels = np.asarray(labels)
        self.rows += len(labels)
        ok = ~np.isnan(scores)
        hist = np.histogram(np.clip(scores[ok], 0.0, 1.0), bins=SCORE_BINS, range=(0.0, 1.0))[0]
        self.score_hist = (np.asarray(self.score_hist) + hist).tolist()
        for code, name in enumerate(("negative", "positive", "unknown")):
            self.labels[name] += int((labels == code).sum())
        if tokens is not None:
            idx = np.searchsorted(LENGTH_EDGES, np.asarray(tokens), side="right") - 1
            self.length_hist = (np.asarray(self.length_hist)
                                + np.bincount(np.clip(idx, 0, len(LENGTH_EDGES) - 1),
                                              minlength=len(LENGTH_EDGES))).tolist()
        if coverage is not None:
            cov = np.asarray(coverage, dtype=np.float64)
            cov = cov[~np.isnan(cov)]
            self.unknown_tokens += float((1.0 - cov).sum())
            self.texts_with_coverage += len(cov)
        return self

    def merge(self, other: "Profile") -> "Profile":
        self.rows += other.rows
        self.score_hist = (np.asarray(self.score_hist) + np.asarray(other.score_hist)).tolist()
        self.length_hist = (np.asarray(self.length_hist) + np.asarray(other.length_hist)).tolist()
        for k in self.labels:
            self.labels[k] += other.labels.get(k, 0)
        self.unknown_tokens += other.unknown_tokens
        self.texts_with_coverage += other.texts_with_coverage
        return self

    @property
    def unknown_token_rate(self) -> float | None:
        return self.unknown_tokens / self.texts_with_coverage if self.texts_with_coverage else None

    def share(self, label: str) -> float | None:
        return self.labels[label] / self.rows if self.rows else None

    def length_quantiles(self) -> dict[str, float | None]:
        """p10/p50/p90 of tokens per text, read off the histogram (a bin's lower edge)."""
        counts = np.asarray(self.length_hist)
        total = counts.sum()
        if not total:
            return {"p10": None, "p50": None, "p90": None}
        cum = np.cumsum(counts) / total
        return {f"p{q}": float(LENGTH_EDGES[int(np.searchsorted(cum, q / 100.0))]) for q in (10, 50, 90)}

    def to_dict(self) -> dict:
        return asdict(self) | {"version": 1, "length_edges": list(LENGTH_EDGES),
                               "length_quantiles": self.length_quantiles(),
                               "unknown_token_rate": self.unknown_token_rate}

    @classmethod
    def from_dict(cls, d: dict) -> "Profile":
        """A stored profile, checked: a file of another shape is refused, not half-read."""
        try:
            p = cls(rows=int(d["rows"]), score_hist=[int(x) for x in d["score_hist"]],
                    labels={k: int(d["labels"][k]) for k in ("positive", "negative", "unknown")},
                    length_hist=[int(x) for x in d["length_hist"]], unknown_tokens=float(d["unknown_tokens"]),
                    texts_with_coverage=int(d["texts_with_coverage"]))
        except (KeyError, TypeError, ValueError) as exc:
            raise IntegrityError(f"reference profile is not a profile ({type(exc).__name__}: {exc})") from None
        if len(p.score_hist) != SCORE_BINS or len(p.length_hist) != len(LENGTH_EDGES) \
                or list(d.get("length_edges", LENGTH_EDGES)) != list(LENGTH_EDGES):
            raise IntegrityError("reference profile has other bins than this version computes; re-register")
        return p


def read_reference(model_dir: str | Path) -> Profile | None:
    """The model's reference profile, or None for a model registered before profiles existed."""
    path = Path(model_dir) / REFERENCE_FILE
    if not path.exists():
        return None
    try:
        data = json.loads(path.read_bytes().decode("utf-8"))
    except ValueError as exc:              # not UTF-8, not JSON
        raise IntegrityError(f"{path} is not a JSON profile: {exc}") from None
    if not isinstance(data, dict):
        raise IntegrityError(f"{path} is not a profile (a JSON {type(data).__name__}, not an object)")
    profile = Profile.from_dict(data)
    if profile.rows < 0 or min(profile.score_hist + profile.length_hist) < 0 or not 0 <= profile.unknown_tokens:
        raise IntegrityError(f"{path} holds negative counts: it is not a profile this version wrote")
    return profile
