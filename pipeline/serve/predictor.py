"""Score text with a registered model: the exact prepare-time transform, then the model.

    >>> p = load_predictor(Warehouse.from_env(), "champion")
    >>> p.predict_proba(["A wonderful film.", None])      # -> array([0.97, nan])
    >>> p.explain("A wonderful film.")                   # attention models: [("wonderful", 0.61), ...]
    >>> p.predict_with_coverage(["A wonderful film.", "这部电影很好看"]).score   # -> array([0.97, nan])

Coverage (:mod:`pipeline.model.coverage`): the share of a text's tokens the model knows. A text below the
version's coverage rule (``config.json`` ``"coverage"``, else the default rule) is not scored by
:meth:`Predictor.predict_with_coverage`: never a confident guess on text the model cannot read.

Precision (:attr:`Predictor.precision`): ``bf16`` autocast on CUDA; on CPU dynamic ``int8`` when registration
recorded that it keeps validation accuracy (``config.json`` ``"int8": true``, :mod:`pipeline.model.quantize`),
else ``fp32``. On CUDA batches are cut by a token budget (:func:`token_batches`), on CPU by a row count.
"""

from __future__ import annotations

import contextlib
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd
import pyarrow as pa
import torch

from pipeline.core.config import Warehouse
from pipeline.core.errors import InputError, IntegrityError
from pipeline.prepare.preprocess import load_preprocessor
from pipeline.prepare.text import flat_ranges, pad_rows
from pipeline import registry
from pipeline.model.coverage import CoverageRule, coverage_of_flat, rule_from_config
from pipeline.model.device import autocast, pick_device
from pipeline.prepare.text import trim_padding
from pipeline.model.network import NGRAM_ONLY, NgramLogit
from pipeline.model.quantize import quantize
from pipeline.model.weights import load_model

PRECISIONS = ("auto", "fp32", "int8")
#: padded tokens (rows x longest row) per CUDA batch: a GRU's steps run one after another, so the more rows
#: each step carries the better, up to what a GPU's memory holds easily (~1 KiB of activations per token)
CUDA_TOKEN_BUDGET = 1 << 18


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
    """The texts with tokens among ``n``: their positions ``rows``, their kept token ids unpadded, one text
    after another (``flat``), and their token counts ``lengths`` (all > 0). Rows are padded per batch only
    (:meth:`padded`), and an n-gram-only model never pads them."""

    n: int
    rows: np.ndarray
    flat: np.ndarray
    lengths: np.ndarray

    @property
    def starts(self) -> np.ndarray:
        starts = np.zeros(len(self.lengths), np.int64)
        np.cumsum(self.lengths[:-1], out=starts[1:])
        return starts

    def subset(self, mask: np.ndarray) -> "_Encoded":
        if mask.all():
            return self
        sel = np.flatnonzero(mask)
        lengths = self.lengths[sel]
        return _Encoded(self.n, self.rows[sel], self.flat[flat_ranges(self.starts[sel], lengths)], lengths)

    def padded(self, sel: np.ndarray, width: int, pad_side: str) -> np.ndarray:
        """Rows ``sel`` as ids [len(sel), width] padded with 0 on ``pad_side`` (what ``Preprocessor.encode``
        gives, trimmed to ``width`` columns)."""
        lengths = self.lengths[sel]
        return pad_rows(self.flat[flat_ranges(self.starts[sel], lengths)], lengths, width, pad_side)


class Predictor:
    """P(positive) for texts, in input order; sorts by length and trims batches for speed.

    Loading verifies the version's files against the SHA-256 recorded at registration. ``predict_proba``
    returns NaN only for a text with nothing to score (None, blank, no tokens); ``predict_with_coverage``
    also leaves NaN for a text the model cannot read (its coverage rule); a non-finite model output
    raises :class:`IntegrityError`, so a damaged model fails a scoring run instead of leaving rows unscored."""

    #: ``predict_proba`` / ``predict_with_coverage`` also take an Arrow string array (NULL: no text), so
    #: scoring hands over its chunk without making a Python string of every row
    accepts_arrow = True

    def __init__(self, model_dir: str | Path, version: str | None = None, device: str = "cpu",
                 batch_size: int = 256, precision: str = "auto", token_budget: int = CUDA_TOKEN_BUDGET):
        """``device``: ``cpu``, ``cuda``, ``cuda:N`` or ``auto`` (cuda, then mps, then cpu); a device this machine
        lacks is an ``InputError`` listing the ones it has. ``precision``: ``auto`` (bf16 autocast on CUDA; on
        CPU int8 when the version's registration kept it, else fp32), ``fp32``, or ``int8`` (CPU only, and only
        for a version whose registration kept it). ``batch_size`` rows per batch on CPU; ``token_budget``
        padded tokens per batch on CUDA. :attr:`device` (``"cpu"``, ``"cuda:0"``) and :attr:`precision`
        (``"fp32"``, ``"int8"``, ``"bf16"``) say what was picked, for the run's audit record."""
        self.model_dir = Path(model_dir)
        mv = registry.read_version(self.model_dir)
        self.version = version or mv.version
        registry.verify_files(mv)                # vocabulary + manifest: the exact prepare-time transform
        self.model_config = mv.model_config
        self.temperature = mv.temperature       # calibration: P = sigmoid(logit / T); 1.0 if none was recorded
        self.short_temperature, self.short_max_tokens = mv.short_temperature   # texts of <= that many tokens
        #: texts below it are 'unknown' (versions without a "coverage" entry: the default rule)
        self.coverage_rule: CoverageRule = rule_from_config(mv.config, self.model_dir / "config.json")
        self.torch_device = pick_device(device)
        self.device = str(self.torch_device)
        self.precision = resolve_precision(precision, self.torch_device, mv)
        self.batch_size = batch_size
        self.token_budget = token_budget
        #: CPU: score whole batches in parallel, one core each (see :meth:`_batch_workers`); False: one at a time
        self.parallel_batches = True
        self.preprocessor = load_preprocessor(self.model_dir)
        self.max_len = int(self.preprocessor.max_len)
        self.model = load_model(self.model_dir / "model.safetensors", self.model_config, self.torch_device,
                                sha256=(mv.config.get("checksums") or {}).get("model.safetensors"))
        if self.precision == "int8":
            self.model = quantize(self.model)

    @property
    def has_attention(self) -> bool:
        return self.model.attention is not None          # encoder "none" has no attention, whatever its pooling

    def _batch(self, ids: np.ndarray, lengths: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        """Encoded rows as model input: trimmed to their longest row, except for the lineage baseline
        (``exact_lengths=False``), whose output depends on its full padded width."""
        T = max(int(lengths.max()), 1) if self.model_config.exact_lengths else ids.shape[1]
        ids = trim_padding(ids, T, self.preprocessor.pad_side)
        return (torch.from_numpy(np.ascontiguousarray(ids)).long().to(self.torch_device),
                torch.from_numpy(lengths).long().to(self.torch_device))

    def _encode_rows(self, texts: Sequence[str | None] | pa.Array | pa.ChunkedArray) -> _Encoded:
        """Encode the texts that have tokens, once (coverage and the model read the same ids). ``texts``: a
        sequence (None, non-strings and blank texts have no tokens) or an Arrow string array (NULL: none)."""
        if isinstance(texts, (pa.Array, pa.ChunkedArray)):
            n, keep = len(texts), None
        else:
            texts = list(texts)
            n = len(texts)
            keep = [i for i, t in enumerate(texts) if isinstance(t, str) and t.strip()]
            if not keep:
                return _Encoded(n, np.zeros(0, np.int64), np.zeros(0, np.int32), np.zeros(0, np.int32))
            texts = [texts[i] for i in keep] if len(keep) < n else texts
        flat, lengths = self.preprocessor.encode_flat(texts)
        lengths = lengths.astype(np.int32)
        rows = np.arange(n) if keep is None else np.asarray(keep)
        encoded = _Encoded(n, rows, flat, lengths)
        return encoded.subset(lengths > 0)     # blank or punctuation-only texts: no tokens, no score

    def predict_proba(self, texts: Sequence[str | None] | pa.Array) -> np.ndarray:
        """P(positive) per text, in input order: the model's output for every text with tokens, whatever its
        coverage (:meth:`predict_with_coverage` adds which texts the model can read, and scores only those)."""
        return self._in_parts(texts, lambda part: self._proba(self._encode_rows(part)), np.concatenate)

    def predict_with_coverage(self, texts: Sequence[str | None] | pa.Array) -> Prediction:
        """Coverage of every text, and a score for the readable ones only (see :class:`Prediction`): a text
        below :attr:`coverage_rule` never reaches the model, so it never gets a confident-looking number."""
        return self._in_parts(texts, self._with_coverage, _joined)

    def _with_coverage(self, texts: Sequence[str | None] | pa.Array) -> Prediction:
        encoded = self._encode_rows(texts)
        known = np.zeros(encoded.n, np.int64)
        tokens = np.zeros(encoded.n, np.int64)
        share = np.full(encoded.n, np.nan, dtype=np.float64)
        known[encoded.rows], share[encoded.rows] = coverage_of_flat(encoded.flat, encoded.lengths)
        tokens[encoded.rows] = encoded.lengths
        readable = self.coverage_rule.readable(known, share)
        score = self._proba(encoded.subset(readable[encoded.rows]))
        return Prediction(score=score, known=known, tokens=tokens, coverage=share, readable=readable)

    def _in_parts(self, texts, answer, join):
        """``answer(texts)``; for an n-gram-only model, ``answer`` of consecutive slices of the texts on up to
        ``torch.get_num_threads()`` threads at once, joined in input order. Its numpy and Arrow work releases
        the GIL, so one call uses every core the caller gave torch, and a text's answer does not depend on the
        texts it comes with (up to torch's sigmoid rounding a value 1 ulp apart by its place in the array).
        Torch models run their batches in parallel instead (:meth:`_batch_workers`)."""
        parts = min(torch.get_num_threads(), len(texts) // _MIN_PART_TEXTS) if self._flat_ngrams() else 1
        if parts <= 1:
            return answer(texts)
        if not isinstance(texts, (pa.Array, pa.ChunkedArray)):
            texts = list(texts)
        cuts = np.linspace(0, len(texts), parts + 1).astype(int)
        slices = [texts[a:b] for a, b in zip(cuts[:-1], cuts[1:])]
        return join(list(_pool(parts).map(answer, slices)))

    @torch.inference_mode()
    def _proba(self, encoded: _Encoded) -> np.ndarray:
        """P(positive) of the encoded rows, placed at their positions (NaN elsewhere). Rows are sorted by token
        count and batched, so that a batch carries little padding: callers pass texts in any order (this is
        the one place rows are sorted). An n-gram-only model reads the unpadded ids in one pass instead
        (:func:`ngram_logits`, the same logits without padding every text to ``max_len``)."""
        out = np.full(encoded.n, np.nan, dtype=np.float64)
        if self._flat_ngrams():
            if len(encoded.rows):
                logits = torch.from_numpy(ngram_logits(self.model.ngrams, encoded.flat, encoded.lengths))
                out[encoded.rows] = self._calibrated(logits, encoded.lengths)
            return out
        keep, lengths = encoded.rows, encoded.lengths
        order = np.argsort(lengths, kind="stable")

        def scored(cut: slice) -> tuple[np.ndarray, np.ndarray]:
            sel = order[cut]
            width = max(int(lengths[sel].max()), 1) if self.model_config.exact_lengths else self.max_len
            x, n = self._batch(encoded.padded(sel, width, self.preprocessor.pad_side), lengths[sel])
            with torch.inference_mode(), (autocast(self.torch_device) if self.precision == "bf16"
                                          else contextlib.nullcontext()):
                logits = self._forward(x, n)
            return sel, self._calibrated(logits, lengths[sel])

        workers = self._batch_workers()
        for sel, probs in _map_batches(scored, self._batches(lengths[order], workers), workers):
            out[keep[sel]] = probs
        return out

    def _batch_workers(self) -> int:
        """Batches scored at once, each on one core: ``torch.get_num_threads()`` for a torch model on the CPU
        (when :attr:`parallel_batches`), else 1 (one batch at a time, on all of torch's threads).

        Why: a recurrent layer runs its steps one after another, each a [B, H] x [H, 3H] GEMM and a dozen
        element-wise gate ops on [B, H]; split over 2 threads, every one of those small ops ends in a barrier,
        thousands per batch, and one preempted thread stalls both (measured on 2 shared cores:
        benchmarks/profile_score.py). Whole batches on separate cores need no barrier at all."""
        if not self.parallel_batches or self.torch_device.type != "cpu" or self._flat_ngrams():
            return 1
        return max(torch.get_num_threads(), 1)

    def _batches(self, sorted_lengths: np.ndarray, workers: int = 1) -> list[slice]:
        """Batches of the rows sorted by length: by padded tokens on CUDA, by ``batch_size`` rows elsewhere
        (smaller when that leaves fewer batches than ``workers``, so that every worker gets one)."""
        if self.torch_device.type == "cuda":
            width = None if self.model_config.exact_lengths else self.max_len
            return token_batches(sorted_lengths, self.token_budget, fixed_width=width)
        size = max(min(self.batch_size, -(-len(sorted_lengths) // workers)), 1)
        return [slice(s, s + size) for s in range(0, len(sorted_lengths), size)]

    def _flat_ngrams(self) -> bool:
        """Whether the model is the n-gram bag alone, in eval mode: then :func:`ngram_logits` is its output."""
        bag = self.model.ngrams
        return (self.model_config.encoder == NGRAM_ONLY and isinstance(bag, NgramLogit) and not self.model.training
                and not bag.training and self.torch_device.type == "cpu")

    def _forward(self, x: torch.Tensor, n: torch.Tensor) -> torch.Tensor:
        """The model's logits. int8 kernels refuse non-finite activations with a RuntimeError of their own
        ("ChooseQuantizationParams…") where fp32 returns NaN: both mean damaged weights, and both are the same
        IntegrityError (:meth:`_calibrated`), whichever precision registration picked."""
        try:
            return self.model(x, n)[0]
        except RuntimeError as exc:
            if self.precision == "int8" and not all(torch.isfinite(p).all() for p in self.model.parameters()):
                raise IntegrityError(f"model {self.version} has non-finite weights ({exc}): its weights are damaged; "
                                     "retrain or promote another version") from None
            raise

    def _calibrated(self, logits: torch.Tensor, lengths: np.ndarray) -> np.ndarray:
        """P(positive) = sigmoid(logit / T), T by the text's token count; a non-finite one is an IntegrityError."""
        t = np.where(lengths <= self.short_max_tokens, self.short_temperature, self.temperature)
        probs = torch.sigmoid(logits.float().cpu() / torch.from_numpy(t).float()).numpy()
        if not np.isfinite(probs).all():
            raise IntegrityError(f"model {self.version} produced {int((~np.isfinite(probs)).sum())} non-finite "
                                 f"score(s) for {len(lengths)} texts: its weights are damaged; retrain or promote "
                                 "another version")
        return probs

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
        x = torch.from_numpy(row.astype(np.int64)).unsqueeze(0).to(self.torch_device)
        bag = self.model.ngrams
        feats, real = bag.features(x, torch.tensor([n], device=self.torch_device))
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


def load_predictor(wh: Warehouse, model: str = "champion", device: str = "cpu", batch_size: int = 256,
                   precision: str = "auto") -> Predictor:
    """A Predictor for a registered version (or the champion); ``device`` and ``precision`` as
    :class:`Predictor` takes them (``precision="auto"``: what the version's registration decided)."""
    mv = registry.get(wh, model)
    return Predictor(mv.path, version=mv.version, device=device, batch_size=batch_size, precision=precision)


def resolve_precision(requested: str, device: torch.device, mv: registry.ModelVersion) -> str:
    """The precision a version runs in on ``device``: ``bf16`` on CUDA (``fp32`` when asked for); on CPU (and
    mps) ``int8`` when asked for or when ``auto`` and the version's registration kept it, else ``fp32``. int8
    on a version whose registration did not keep it, or on a GPU, is an ``InputError`` saying why."""
    if requested not in PRECISIONS:
        raise InputError(f"precision {requested!r} is not one of {', '.join(PRECISIONS)}")
    if requested == "fp32":
        return "fp32"
    if requested == "int8" and device.type != "cpu":
        raise InputError(f"precision int8 is for CPU scoring (dynamic int8 has no {device.type} kernels); on "
                         f"{device} use precision auto or fp32")
    if device.type == "cuda":
        return "bf16"
    if requested == "int8" and not mv.int8:
        raise InputError(f"model {mv.version} does not score in int8: {mv.int8_reason}; use precision auto or "
                         "fp32")
    return "int8" if mv.int8 and device.type == "cpu" else "fp32"


def token_batches(sorted_lengths: np.ndarray, budget: int, *, fixed_width: int | None = None) -> list[slice]:
    """Consecutive batches of rows sorted by length (ascending) whose padded size, rows x the batch's longest
    row (x ``fixed_width`` when every row is padded to it), stays within ``budget`` tokens; a row longer than
    the budget is a batch alone. Short texts thus travel many to a batch, long ones few, and every batch costs
    about the same memory and time. Rows of length 0 count as 1 (a model reads at least one position)."""
    if budget < 1:
        raise ValueError("token budget must be >= 1")
    lengths = np.maximum(np.asarray(sorted_lengths, np.int64), 1)
    if fixed_width is not None:
        lengths = np.full(len(lengths), max(int(fixed_width), 1), np.int64)
    cuts, start, n = [], 0, len(lengths)
    while start < n:
        window = lengths[start:start + max(budget // int(lengths[start]), 1)]     # no longer batch fits
        cost = np.arange(1, len(window) + 1) * window           # rows so far x longest so far (sorted)
        size = max(int(np.searchsorted(cost, budget, side="right")), 1)
        cuts.append(slice(start, start + size))
        start += size
    return cuts


_MIN_PART_TEXTS = 512           # fewer texts than this per thread: not worth a thread
_POOLS: dict[int, ThreadPoolExecutor] = {}
_POOLS_LOCK = threading.Lock()


def _pool(workers: int) -> ThreadPoolExecutor:
    """A process-wide pool of ``workers`` threads for :meth:`Predictor._in_parts` (made once, reused)."""
    with _POOLS_LOCK:
        if workers not in _POOLS:
            _POOLS[workers] = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="reviewflow-predict")
        return _POOLS[workers]


def _map_batches(score, cuts: list[slice], workers: int):
    """``score(cut)`` for every batch, in order: on the calling thread when ``workers`` is 1 (or there is
    one batch), else on ``workers`` pool threads that each run torch ops on one thread. The caller's torch
    thread count is restored afterwards (``torch.set_num_threads`` also sets the count that threads new to
    torch start with, so nothing outside this call sees the 1)."""
    if workers <= 1 or len(cuts) <= 1:
        return map(score, cuts)
    threads = torch.get_num_threads()

    def one_core(cut: slice):
        torch.get_num_threads()         # a pool thread new to torch adopts the default first ...
        torch.set_num_threads(1)        # ... then runs its batch's ops on its own core
        return score(cut)

    try:
        return list(_pool(workers).map(one_core, cuts))
    finally:
        torch.set_num_threads(threads)


def _joined(parts: list[Prediction]) -> Prediction:
    """The predictions of consecutive slices of texts as one, in order."""
    return Prediction(**{f: np.concatenate([getattr(p, f) for p in parts])
                         for f in ("score", "known", "tokens", "coverage", "readable")})


def ngram_logits(bag: NgramLogit, flat: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """The logit of ``bag`` (the n-gram bag alone, eval mode) for unpadded rows: ``flat`` their token ids one
    row after another, ``lengths`` [m] their counts (> 0). float32 [m]: the numbers ``bag(ids, lengths)``
    gives for the same rows padded (the mean of ``weight * scale`` over the row's real n-grams), up to float
    rounding (sums are taken in float64), without padding every text to ``max_len``.

    Each position's terms (its unigram, and the bigram and trigram that start there and stay within its row)
    are added up in place, then each row's are summed (``reduceat``). The bag's hash runs on every
    position; the few k-grams that would cross into the next row are zeroed instead of masked out."""
    lengths = np.asarray(lengths, np.int64)
    if bag.pool == "binary":
        return binary_ngram_logits(bag, flat, lengths)
    table, bucket = _ngram_plan(bag)
    ids = np.asarray(flat, np.int64)
    terms = table[ids].astype(np.float64)
    ends = np.cumsum(lengths)
    count = lengths.copy()
    for k in range(2, bag.n + 1):
        span = len(ids) - k + 1                          # every k consecutive tokens, rows or not ...
        if span <= 0:
            break
        part = table[bucket(*(ids[j:j + span] for j in range(k)))]
        terms[:span] += np.where(_within_rows(ends, lengths, span, k), part, 0.0)
        count += np.maximum(lengths - (k - 1), 0)
    sums = np.zeros(len(lengths), np.float64)
    has = lengths > 0                                    # each row summed on its own: no other row changes it
    if has.any():
        sums[has] = np.add.reduceat(terms, (ends - lengths)[has])
    return (sums / np.maximum(count, 1)).astype(np.float32)


def _within_rows(ends: np.ndarray, lengths: np.ndarray, span: int, k: int) -> np.ndarray:
    """[span] bool: which of the flat positions' k-grams stay inside their row (those starting in a row's
    last k-1 tokens run into the next row: they are no n-gram)."""
    inside = np.ones(span, bool)
    for j in range(1, k):
        cut = ends - j
        inside[cut[(cut >= ends - lengths) & (cut < span)]] = False
    return inside


def binary_ngram_logits(bag: NgramLogit, flat: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """:func:`ngram_logits` of a binary bag (``pool="binary"``): each row's distinct n-grams, found with one
    hash-based ``pandas.unique`` over (row, feature id) keys instead of a sort per row; their ``weight *
    scale`` summed per row (``bincount``), plus the bias."""
    table, bucket = _ngram_plan(bag)
    ids = np.asarray(flat, np.int64)
    row = np.repeat(np.arange(len(lengths), dtype=np.int64), lengths)
    ends = np.cumsum(lengths)
    keys = [row * (len(table) + 1) + ids]
    for k in range(2, bag.n + 1):
        span = len(ids) - k + 1
        if span <= 0:
            break
        grams = bucket(*(ids[j:j + span] for j in range(k)))
        keys.append((row[:span] * (len(table) + 1) + grams)[_within_rows(ends, lengths, span, k)])
    distinct = pd.unique(np.concatenate(keys))
    sums = np.bincount(distinct // (len(table) + 1), weights=table[distinct % (len(table) + 1)],
                       minlength=len(lengths))
    return (sums + float(bag.bias.detach())).astype(np.float32)


_PLANS: dict = {}


def _ngram_plan(bag: NgramLogit):
    """(each feature id's ``weight * scale`` as float32 numpy, the bag's bucket hash on int64 numpy arrays),
    cached per bag while its weights are unchanged."""
    key = (id(bag), bag.weight.weight._version, bag.scale._version)
    plan = _PLANS.get(key)
    if plan is None or plan[0] is not bag:
        table = (bag.weight.weight.detach().squeeze(-1).float() * bag.scale.float()).cpu().numpy()
        _PLANS.clear()                                    # one model at a time: no stale tables kept alive
        plan = _PLANS[key] = (bag, table, _numpy_bucket(bag))
    return plan[1], plan[2]


def _numpy_bucket(bag: NgramLogit):
    """``bag.bucket`` on numpy int64 arrays: the same arithmetic (int64, wrapping, floor modulo) in numpy,
    several times faster than torch's integer kernels here, used only if it gives exactly the bag's buckets
    on a probe of n-grams (extreme ids included); else torch's ``bag.bucket`` itself."""
    def via_torch(*grams):
        return bag.bucket(*(torch.from_numpy(np.ascontiguousarray(g)) for g in grams)).numpy()

    V, B, h = int(bag.vocab_size), int(bag.buckets), getattr(bag, "hash", "prime")
    mult, mix = (bag.PRIME, None) if h == "prime" else (V, getattr(bag, "MIX", None))
    if h not in ("prime", "mix") or (h == "mix" and mix is None):
        return via_torch

    def via_numpy(*grams):
        key = grams[0] * mult if len(grams) > 1 else grams[0].copy()      # in place from here: 1 array
        for i, g in enumerate(grams[1:], 1):
            key += g
            if i + 1 < len(grams):
                key *= mult
        if mix is not None:
            key *= mix
        np.remainder(key, B, out=key)
        key += V
        return key

    rng = np.random.default_rng(0)
    probe = [np.concatenate([[0, 1, V - 1, V - 1], rng.integers(0, V, 4096)]).astype(np.int64) for _ in range(3)]
    with torch.inference_mode():
        same = all(np.array_equal(via_numpy(*probe[:k]), via_torch(*probe[:k])) for k in range(2, bag.n + 1))
    return via_numpy if same else via_torch
