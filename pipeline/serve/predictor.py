"""Score text with a registered model: the exact prepare-time transform, then the model.

    >>> p = load_predictor(Warehouse.from_env(), "champion")
    >>> p.predict_proba(["A wonderful film.", None])      # -> array([0.97, nan])
    >>> p.explain("A wonderful film.")                   # attention models: [("wonderful", 0.61), ...]
    >>> p.predict_with_coverage(["A wonderful film.", "这部电影很好看"]).score   # -> array([0.97, nan])

Coverage (:mod:`pipeline.model.coverage`): the share of a text's tokens the model knows. A text below the
version's coverage rule (``config.json`` ``"coverage"``, else the default rule) is not scored by
:meth:`Predictor.predict_with_coverage`: never a confident guess on text the model cannot read.
Unsure texts (:mod:`pipeline.model.abstain`, off by default): with ``max_error=A`` a readable text whose score
is closer to 0.5 than the margin the version recorded for the stated error rate ``A`` is left unknown the
same way (``Prediction.unsure``; NaN score), in :meth:`Predictor.predict_with_coverage` only.

A CPU score depends on its text and its model only: never on the texts it is scored with, their order, the
chunk or part it travels in, the batch size, or how many threads or workers score (bit for bit, fp32 and int8;
tests/test_batch_independence.py). How: every batch runs on one torch thread (:mod:`pipeline.serve.workers`),
with at least ``MIN_ROWS`` rows and row-exact layers (:mod:`pipeline.serve.rowwise`), and the final sigmoid is
taken per score in float64 (:func:`calibrated_proba`). Precision (:mod:`pipeline.serve.precision`): ``bf16``
autocast on CUDA; static ``int8`` on CPU where registration kept it, else ``fp32``. CUDA scores are not made
batch-independent (bf16 kernels are another story): CPU is the reference.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import torch

from pipeline import registry
from pipeline.core.config import Warehouse
from pipeline.core.errors import IntegrityError
from pipeline.model.abstain import margin_for, unsure
from pipeline.model.calibration import band_temperature
from pipeline.model.coverage import CoverageRule, coverage_of_flat, rule_from_config
from pipeline.model.device import autocast, pick_device
from pipeline.model.network import NGRAM_ONLY, NgramLogit
from pipeline.model.quantize import quantize
from pipeline.model.weights import load_model
from pipeline.prepare.preprocess import load_preprocessor
from pipeline.prepare.text import trim_padding
from pipeline.serve.batching import CPU_BATCH_ROWS, WIDTH_STEP, Encoded, filled, row_batches, token_batches, width_classes
from pipeline.serve.ngram import ngram_logits
from pipeline.serve.precision import PRECISIONS, int8_ranges, resolve_precision
from pipeline.serve.rowwise import ngram_bag, row_independent
from pipeline.serve.workers import map_in_order, one_thread_pool

__all__ = ["CUDA_TOKEN_BUDGET", "PRECISIONS", "Prediction", "Predictor", "calibrated_proba", "load_predictor",
           "resolve_precision", "token_batches"]

#: padded tokens (rows x longest row) per CUDA batch: a GRU's steps run one after another, so the more rows
#: each step carries the better, up to what a GPU's memory holds easily (~1 KiB of activations per token)
CUDA_TOKEN_BUDGET = 1 << 18
_MIN_PART_TEXTS = 512           # n-gram models: fewer texts than this per thread is not worth a thread


@dataclass(frozen=True)
class Prediction:
    """What the model makes of each text, in input order (all arrays of the texts' length):

    ``score``    P(positive) for a readable text; NaN for a text below the coverage rule, with no tokens, or
                 unsure
    ``known``    tokens the model knows (after truncation to its ``max_len``)
    ``tokens``   tokens the model reads (after truncation); 0 for None, blank or punctuation-only text
    ``coverage`` ``known / tokens``; NaN when there are no tokens
    ``readable`` the coverage rule holds (so ``score`` is a number, unless the text is ``unsure``)
    ``unsure``   readable, but its score was closer to 0.5 than the ``max_error`` margin (None, or all False,
                 when the predictor has no ``max_error``)
    """

    score: np.ndarray
    known: np.ndarray
    tokens: np.ndarray
    coverage: np.ndarray
    readable: np.ndarray
    unsure: np.ndarray | None = None

    @property
    def unknown(self) -> np.ndarray:
        """Texts with tokens that the model cannot read, or (``max_error``) is unsure of: labelled
        ``'unknown'``, never scored."""
        out = (self.tokens > 0) & ~self.readable
        return out if self.unsure is None else out | self.unsure


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
                 batch_size: int | None = None, precision: str = "auto", token_budget: int = CUDA_TOKEN_BUDGET,
                 max_error: float | None = None):
        """``device``: ``cpu``, ``cuda``, ``cuda:N`` or ``auto`` (cuda, then mps, then cpu); a device this machine
        lacks is an ``InputError`` listing the ones it has. ``precision``: ``auto`` (bf16 autocast on CUDA; on
        CPU int8 when the version's registration kept it, else fp32), ``fp32``, or ``int8`` (CPU only, and only
        for a version whose registration kept it). ``batch_size`` rows per batch on CPU (None: ``CPU_BATCH_ROWS``
        of the precision); ``token_budget``
        padded tokens per batch on CUDA. :attr:`device` (``"cpu"``, ``"cuda:0"``) and :attr:`precision`
        (``"fp32"``, ``"int8"``, ``"bf16"``) say what was picked, for the run's audit record. ``max_error``
        (None: off): a stated error rate the version recorded a margin for (:mod:`pipeline.model.abstain`);
        another value, or a version without the record, is an ``InputError`` listing the ones it has."""
        self.model_dir = Path(model_dir)
        mv = registry.read_version(self.model_dir)
        self.version = version or mv.version
        registry.verify_files(mv)                # vocabulary + manifest: the exact prepare-time transform
        self.model_config = mv.model_config
        self.temperature = mv.temperature       # calibration: P = sigmoid(logit / T); 1.0 if none was recorded
        self.temperature_bands = mv.temperature_bands      # [(max tokens, T), ...]: shorter texts, their own T
        #: texts below it are 'unknown' (versions without a "coverage" entry: the default rule)
        self.coverage_rule: CoverageRule = rule_from_config(mv.config, self.model_dir / "config.json")
        #: the stated error rate and its recorded margin: readable texts scored within it of 0.5 are 'unknown'
        self.max_error = None if max_error is None else float(max_error)
        self.abstain_margin = None if max_error is None else margin_for(mv.config, max_error, self.version)
        self.torch_device = pick_device(device)
        self.device = str(self.torch_device)
        self.precision = resolve_precision(precision, self.torch_device, mv)
        self.batch_size = CPU_BATCH_ROWS.get(self.precision, CPU_BATCH_ROWS["fp32"]) if batch_size is None else batch_size
        self.token_budget = token_budget
        #: CPU: score whole batches in parallel, one core each (see :meth:`_batch_workers`); False: one at a time
        self.parallel_batches = True
        self.preprocessor = load_preprocessor(self.model_dir)
        self.max_len = int(self.preprocessor.max_len)
        model = load_model(self.model_dir / "model.safetensors", self.model_config, self.torch_device,
                           sha256=(mv.config.get("checksums") or {}).get("model.safetensors"))
        if self.precision == "int8":
            model = quantize(model, int8_ranges(mv))
        #: the scoring copy: on CPU with row-exact layers (:mod:`pipeline.serve.rowwise`)
        self.model = row_independent(model) if self.torch_device.type == "cpu" else model

    @property
    def has_attention(self) -> bool:
        return self.model.attention is not None          # encoder "none" has no attention, whatever its pooling

    @property
    def has_ngrams(self) -> bool:
        return ngram_bag(self.model) is not None

    def _batch(self, ids: np.ndarray, lengths: np.ndarray,
               width: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Encoded rows as model input, ``width`` columns: by default trimmed to their longest row, except for
        the lineage baseline (``exact_lengths=False``), whose output depends on its full padded width."""
        if width is None:
            width = max(int(lengths.max()), 1) if self.model_config.exact_lengths else ids.shape[1]
        ids = trim_padding(ids, width, self.preprocessor.pad_side)
        return (torch.from_numpy(np.ascontiguousarray(ids)).long().to(self.torch_device),
                torch.from_numpy(lengths).long().to(self.torch_device))

    def _encode_rows(self, texts: Sequence[str | None] | pa.Array | pa.ChunkedArray) -> Encoded:
        """Encode the texts that have tokens, once (coverage and the model read the same ids). ``texts``: a
        sequence (None, non-strings and blank texts have no tokens) or an Arrow string array (NULL: none)."""
        if isinstance(texts, (pa.Array, pa.ChunkedArray)):
            n, keep = len(texts), None
        else:
            texts = list(texts)
            n = len(texts)
            keep = [i for i, t in enumerate(texts) if isinstance(t, str) and t.strip()]
            if not keep:
                return Encoded.empty(n)
            texts = [texts[i] for i in keep] if len(keep) < n else texts
        flat, lengths = self.preprocessor.encode_flat(texts)
        lengths = lengths.astype(np.int32)
        rows = np.arange(n) if keep is None else np.asarray(keep)
        return Encoded(n, rows, flat, lengths).subset(lengths > 0)   # no tokens (blank, punctuation): no score

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
        unsure_ = np.zeros(encoded.n, bool) if self.abstain_margin is None else unsure(score, self.abstain_margin)
        score[unsure_] = np.nan
        return Prediction(score=score, known=known, tokens=tokens, coverage=share, readable=readable, unsure=unsure_)

    def _in_parts(self, texts, answer, join):
        """``answer(texts)``; for an n-gram-only model, ``answer`` of consecutive slices of the texts on up to
        ``torch.get_num_threads()`` threads at once, joined in input order (its numpy and Arrow work releases
        the GIL; a text's answer does not depend on the slice it is in). Torch models run their batches in
        parallel instead (:meth:`_batch_workers`)."""
        parts = min(torch.get_num_threads(), len(texts) // _MIN_PART_TEXTS) if self._flat_ngrams() else 1
        if parts <= 1:
            return answer(texts)
        if not isinstance(texts, (pa.Array, pa.ChunkedArray)):
            texts = list(texts)
        cuts = np.linspace(0, len(texts), parts + 1).astype(int)
        slices = [texts[a:b] for a, b in zip(cuts[:-1], cuts[1:])]
        return join(list(one_thread_pool(parts).map(answer, slices)))

    def _proba(self, encoded: Encoded) -> np.ndarray:
        """P(positive) of the encoded rows, placed at their positions (NaN elsewhere). An n-gram-only model
        reads the unpadded ids in one pass (:func:`pipeline.serve.ngram.ngram_logits`); other models read
        batches of rows sorted by token count (:meth:`_model_logits`): callers pass texts in any order."""
        out = np.full(encoded.n, np.nan, dtype=np.float64)
        if not len(encoded.rows):
            return out
        if self._flat_ngrams():
            logits = ngram_logits(ngram_bag(self.model), encoded.flat, encoded.lengths)
            out[encoded.rows] = self._calibrated(logits, encoded.lengths)
            return out
        lengths = encoded.lengths
        order = np.argsort(lengths, kind="stable")
        workers = self._batch_workers()

        def scored(cut: slice) -> tuple[np.ndarray, np.ndarray]:
            sel = order[cut]
            return sel, self._model_logits(encoded, sel)

        cuts = self._batches(lengths[order], workers)
        batches = map_in_order(scored, cuts, workers) if self.torch_device.type == "cpu" else map(scored, cuts)
        for sel, logits in batches:
            out[encoded.rows[sel]] = self._calibrated(logits, lengths[sel])
        return out

    @torch.inference_mode()
    def _model_logits(self, encoded: Encoded, sel: np.ndarray) -> np.ndarray:
        """float32 logits of rows ``sel`` (one batch): on CPU run with at least ``MIN_ROWS`` rows
        (:func:`~pipeline.serve.batching.filled`) at the width :meth:`_width` gives."""
        run = filled(sel) if self.torch_device.type == "cpu" else sel
        lengths = encoded.lengths[run]
        width = self._width(lengths)
        x, n = self._batch(encoded.padded(run, width, self.preprocessor.pad_side), lengths, width)
        with autocast(self.torch_device) if self.precision == "bf16" else contextlib.nullcontext():
            logits = self._forward(x, n)
        return logits[:len(sel)].float().cpu().numpy()

    def _width(self, lengths: np.ndarray) -> int:
        """A batch's padded width: ``max_len`` for the lineage baseline, the longest row's width class for a
        Transformer (a function of each row's own length: its rows are never mixed across classes), else the
        longest row."""
        if not self.model_config.exact_lengths:
            return self.max_len
        longest = max(int(lengths.max()), 1)
        step = self._width_step()
        return longest if step is None else int(width_classes(np.array([longest]), step, self.max_len)[0])

    def _width_step(self) -> int | None:
        """``WIDTH_STEP`` for a Transformer on CPU (its attention rounds with the padded width), else None."""
        if self.model_config.encoder == "transformer" and self.torch_device.type == "cpu":
            return WIDTH_STEP
        return None

    def _batch_workers(self) -> int:
        """Batches scored at once, each on one core: ``torch.get_num_threads()`` for a torch model on the CPU
        (when :attr:`parallel_batches`), else 1 (one batch at a time, still on one torch thread).

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
        return row_batches(sorted_lengths, self.batch_size, workers, self._width_step(), self.max_len)

    def _flat_ngrams(self) -> bool:
        """Whether the model is the n-gram bag alone, in eval mode, on CPU: then its output is
        :func:`~pipeline.serve.ngram.ngram_logits`."""
        bag = ngram_bag(self.model)
        return (self.model_config.encoder == NGRAM_ONLY and isinstance(bag, NgramLogit) and not self.model.training
                and not bag.training and self.torch_device.type == "cpu")

    def _forward(self, x: torch.Tensor, n: torch.Tensor) -> torch.Tensor:
        """The model's logits. An int8 layer refuses non-finite activations (quantizing NaN would give a
        number) where fp32 returns NaN: both mean damaged weights, and both are the same IntegrityError
        (:meth:`_calibrated`), whichever precision registration picked."""
        try:
            return self.model(x, n)[0]
        except FloatingPointError as exc:
            raise IntegrityError(f"model {self.version} has non-finite weights or activations ({exc}): its weights "
                                 "are damaged; retrain or promote another version") from None

    def _calibrated(self, logits: np.ndarray, lengths: np.ndarray) -> np.ndarray:
        """P(positive) = sigmoid(logit / T), T by the text's token count; a non-finite one is an IntegrityError."""
        t = band_temperature(lengths, self.temperature_bands, self.temperature)
        probs = calibrated_proba(logits, t)
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
        bag = ngram_bag(self.model)
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


def load_predictor(wh: Warehouse, model: str = "champion", device: str = "cpu", batch_size: int | None = None,
                   precision: str = "auto", max_error: float | None = None) -> Predictor:
    """A Predictor for a registered version (or the champion); ``device``, ``precision`` and ``max_error`` as
    :class:`Predictor` takes them (``precision="auto"``: what the version's registration decided)."""
    mv = registry.get(wh, model)
    return Predictor(mv.path, version=mv.version, device=device, batch_size=batch_size, precision=precision,
                     max_error=max_error)


def calibrated_proba(logits: np.ndarray, temperature: np.ndarray | float) -> np.ndarray:
    """sigmoid(logit / T) per score, float64, in numpy: element by element the same arithmetic wherever a score
    sits in its array (torch's float32 sigmoid rounds the last elements of an array, its scalar tail, apart
    from the rest: a score moved by 1 ulp with its place in the batch)."""
    z = np.asarray(logits, np.float64) / np.asarray(temperature, np.float64)
    with np.errstate(invalid="ignore"):
        e = np.exp(-np.abs(z))                         # <= 1: no overflow
        return np.where(z >= 0, 1.0 / (1.0 + e), e / (1.0 + e))


def _joined(parts: list[Prediction]) -> Prediction:
    """The predictions of consecutive slices of texts as one, in order."""
    return Prediction(**{f: np.concatenate([getattr(p, f) for p in parts])
                         for f in ("score", "known", "tokens", "coverage", "readable", "unsure")})
