"""Score text with a registered model: the exact prepare-time transform, then the model.

    >>> p = load_predictor(Warehouse.from_env(), "champion")
    >>> p.predict_proba(["A wonderful film.", None])      # -> array([0.97, nan])
    >>> p.explain("A wonderful film.")                   # attention models: [("wonderful", 0.61), ...]
    >>> p.predict_with_coverage(["A wonderful film.", "这部电影很好看"]).score   # -> array([0.97, nan])

Coverage (:mod:`pipeline.train.coverage`): the share of a text's tokens the model knows. A text below the
version's coverage rule (``config.json`` ``"coverage"``, else the default rule) is not scored by
:meth:`Predictor.predict_with_coverage`: never a confident guess on text the model cannot read.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from pipeline.core.config import Warehouse
from pipeline.core.errors import IntegrityError
from pipeline.prepare.preprocess import load_preprocessor
from pipeline.train import registry
from pipeline.train.coverage import CoverageRule, coverage_of, rule_from_config
from pipeline.train.loader import trim_padding
from pipeline.train.weights import load_model


@dataclass(frozen=True)
class Prediction:
    """What the model makes of each text, in input order (all arrays of the texts' length):

    ``score``    P(positive) for a readable text; NaN for a text below the coverage rule or with no tokens
    ``known``    tokens the model knows (after truncation to its ``max_len``)
    ``tokens``   tokens the model reads (after truncation); 0 for None, blank or punctuation-only text
    ``coverage`` ``known / tokens``; NaN when there are no tokens
    ``readable`` the coverage rule holds (so ``score`` is a number)
    """

    score: np.ndarray
    known: np.ndarray
    tokens: np.ndarray
    coverage: np.ndarray
    readable: np.ndarray

    @property
    def unknown(self) -> np.ndarray:
        """Texts with tokens that the model cannot read: labelled ``'unknown'``, never scored."""
        return (self.tokens > 0) & ~self.readable


@dataclass(frozen=True)
class _Encoded:
    """The texts with tokens among ``n``: their positions ``rows``, padded ``ids`` and token ``lengths``."""

    n: int
    rows: np.ndarray
    ids: np.ndarray
    lengths: np.ndarray

    def subset(self, mask: np.ndarray) -> "_Encoded":
        return _Encoded(self.n, self.rows[mask], self.ids[mask], self.lengths[mask])


class Predictor:
    """P(positive) for texts, in input order; sorts by length and trims batches for speed.

    Loading verifies the version's files against the SHA-256 recorded at registration. ``predict_proba``
    returns NaN only for a text with nothing to score (None, blank, no tokens); ``predict_with_coverage``
    also leaves NaN for a text the model cannot read (its coverage rule); a non-finite model output
    raises :class:`IntegrityError`, so a damaged model fails a scoring run instead of leaving rows unscored."""

    def __init__(self, model_dir: str | Path, version: str | None = None, device: str = "cpu",
                 batch_size: int = 256):
        self.model_dir = Path(model_dir)
        mv = registry.read_version(self.model_dir)
        self.version = version or mv.version
        registry.verify_files(mv)                # vocabulary + manifest: the exact prepare-time transform
        self.model_config = mv.model_config
        self.temperature = mv.temperature       # calibration: P = sigmoid(logit / T); 1.0 if none was recorded
        self.short_temperature, self.short_max_tokens = mv.short_temperature   # texts of <= that many tokens
        #: texts below it are 'unknown' (versions without a "coverage" entry: the default rule)
        self.coverage_rule: CoverageRule = rule_from_config(mv.config, self.model_dir / "config.json")
        self.device = torch.device(device)
        self.batch_size = batch_size
        self.preprocessor = load_preprocessor(self.model_dir)
        self.max_len = int(self.preprocessor.max_len)
        self.model = load_model(self.model_dir / "model.safetensors", self.model_config, self.device,
                                sha256=(mv.config.get("checksums") or {}).get("model.safetensors"))

    @property
    def has_attention(self) -> bool:
        return self.model.attention is not None          # encoder "none" has no attention, whatever its pooling

    def _batch(self, ids: np.ndarray, lengths: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        """Encoded rows as model input: trimmed to their longest row, except for the lineage baseline
        (``exact_lengths=False``), whose output depends on its full padded width."""
        T = max(int(lengths.max()), 1) if self.model_config.exact_lengths else ids.shape[1]
        ids = trim_padding(ids, T, self.preprocessor.pad_side)
        return (torch.from_numpy(np.ascontiguousarray(ids)).long().to(self.device),
                torch.from_numpy(lengths).long().to(self.device))

    def _encode_rows(self, texts: Sequence[str | None]) -> _Encoded:
        """Encode the texts that have tokens, once (coverage and the model read the same ids)."""
        texts = list(texts)
        keep = [i for i, t in enumerate(texts) if isinstance(t, str) and t.strip()]
        if not keep:
            return _Encoded(len(texts), np.zeros(0, np.int64), np.zeros((0, self.max_len), np.int32),
                            np.zeros(0, np.int32))
        ids, lengths = self.preprocessor.encode([texts[i] for i in keep])
        keep, lengths = np.asarray(keep), np.asarray(lengths)
        has_tokens = lengths > 0
        return _Encoded(len(texts), keep[has_tokens], np.asarray(ids)[has_tokens], lengths[has_tokens])

    def predict_proba(self, texts: Sequence[str | None]) -> np.ndarray:
        """P(positive) per text, in input order: the model's output for every text with tokens, whatever its
        coverage (:meth:`predict_with_coverage` adds which texts the model can read, and scores only those)."""
        return self._proba(self._encode_rows(texts))

    def predict_with_coverage(self, texts: Sequence[str | None]) -> Prediction:
        """Coverage of every text, and a score for the readable ones only (see :class:`Prediction`): a text
        below :attr:`coverage_rule` never reaches the model, so it never gets a confident-looking number."""
        encoded = self._encode_rows(texts)
        known = np.zeros(encoded.n, np.int64)
        tokens = np.zeros(encoded.n, np.int64)
        share = np.full(encoded.n, np.nan, dtype=np.float64)
        known[encoded.rows], share[encoded.rows] = coverage_of(encoded.ids, encoded.lengths)
        tokens[encoded.rows] = encoded.lengths
        readable = self.coverage_rule.readable(known, share)
        score = self._proba(encoded.subset(readable[encoded.rows]))
        return Prediction(score=score, known=known, tokens=tokens, coverage=share, readable=readable)

    @torch.inference_mode()
    def _proba(self, encoded: _Encoded) -> np.ndarray:
        """P(positive) of the encoded rows, placed at their positions (NaN elsewhere). Rows are sorted by token
        count and batched, so that a batch carries little padding: callers pass texts in any order (this is
        the one place rows are sorted)."""
        out = np.full(encoded.n, np.nan, dtype=np.float64)
        keep, ids, lengths = encoded.rows, encoded.ids, encoded.lengths
        order = np.argsort(lengths, kind="stable")
        for s in range(0, len(order), self.batch_size):
            sel = order[s:s + self.batch_size]
            x, n = self._batch(ids[sel], lengths[sel])
            t = np.where(lengths[sel] <= self.short_max_tokens, self.short_temperature, self.temperature)
            probs = torch.sigmoid(self.model(x, n)[0].float().cpu() / torch.from_numpy(t).float()).numpy()
            if not np.isfinite(probs).all():
                raise IntegrityError(f"model {self.version} produced {int((~np.isfinite(probs)).sum())} non-finite "
                                     f"score(s) for {len(sel)} texts: its weights are damaged; retrain or promote "
                                     "another version")
            out[keep[sel]] = probs
        return out

    def _encode_one(self, text) -> tuple[np.ndarray, np.ndarray] | None:
        """(ids [1, max_len], lengths [1]) of one text, or None when it has no tokens to explain."""
        if not isinstance(text, str) or not text.strip():
            return None
        ids, lengths = self.preprocessor.encode([text])
        ids, lengths = np.asarray(ids), np.asarray(lengths)
        return (ids, lengths) if int(lengths[0]) > 0 else None

    @torch.inference_mode()
    def explain(self, text: str, top_k: int = 5) -> list[tuple[str, float]]:
        """The ``top_k`` tokens by attention weight (empty list for models without attention)."""
        encoded = self._encode_one(text) if self.has_attention else None
        if encoded is None:
            return []
        ids, lengths = encoded
        n, side = int(lengths[0]), self.preprocessor.pad_side
        x, ln = self._batch(ids, lengths)
        _, _, attn = self.model.forward_parts(x, ln)
        weights = trim_padding(attn.float().cpu().numpy(), n, side)[0]        # the real tokens' weights
        tokens = self.preprocessor.tokenize([text])[0]
        if len(tokens) == n:            # not truncated: show the words as written
            words = list(tokens)
        else:                           # truncated: show what the model saw
            words = [self.preprocessor.vocab[int(i)] for i in trim_padding(ids, n, side)[0]]
        pairs = sorted(zip(words, weights.tolist()), key=lambda p: -p[1])
        return [(wd, float(v)) for wd, v in pairs[:top_k]]

    @property
    def has_ngrams(self) -> bool:
        return self.model.ngrams is not None

    @torch.inference_mode()
    def explain_phrases(self, text: str, top_k: int = 5) -> list[tuple[str, float]]:
        """Wide & deep and n-gram-only models: the ``top_k`` words and word pairs (and triples) that moved the
        logit most, with their signed share of it (positive pushes towards a positive review). Empty for models
        without an n-gram half."""
        encoded = self._encode_one(text) if self.has_ngrams else None
        if encoded is None:
            return []
        ids, lengths = encoded
        n = int(lengths[0])
        row = trim_padding(ids, n, self.preprocessor.pad_side)[0]
        x = torch.from_numpy(row.astype(np.int64)).unsqueeze(0).to(self.device)
        bag = self.model.ngrams
        feats, real = bag.features(x, torch.tensor([n], device=self.device))
        share = bag.terms(feats, real)[0] / real.sum()
        share = (share * self.model_config.ngram_weight).cpu().numpy()
        words = [self.preprocessor.vocab[int(i)] for i in row]
        phrases = words + [f"{a} {b}" for a, b in zip(words, words[1:])] if bag.n >= 2 else list(words)
        if bag.n >= 3:
            phrases += [f"{a} {b} {c}" for a, b, c in zip(words, words[1:], words[2:])]
        total: dict[str, float] = {}
        for phrase, v in zip(phrases, share[: len(phrases)].tolist()):
            total[phrase] = total.get(phrase, 0.0) + v
        return sorted(total.items(), key=lambda p: -abs(p[1]))[:top_k]


def load_predictor(wh: Warehouse, model: str = "champion", device: str = "cpu", batch_size: int = 256) -> Predictor:
    """A Predictor for a registered version (or the champion)."""
    mv = registry.get(wh, model)
    return Predictor(mv.path, version=mv.version, device=device, batch_size=batch_size)
