"""The ML functions of ``reviewflow sql``: vectorised Arrow UDFs over the registered models.

==========================================  ===============================================================
``sentiment(text)``                         P(positive) with the query's model (``--model``, default champion)
``sentiment(text, model)``                  the same with any version or alias, e.g. ``'challenger'``
``sentiment_label(text [, model])``         ``'positive'`` / ``'negative'`` (threshold 0.5) or ``'unknown'``
``sentiment_explain(text [, model])``       the words that move the score most:
                                            ``LIST(STRUCT(phrase VARCHAR, weight DOUBLE))``
==========================================  ===============================================================

NULL in, NULL out; empty text gives NULL (score and label); text the model cannot read (below its coverage
rule) gives a NULL score and the label ``'unknown'``, as in scored tables. DuckDB hands each function whole vectors; rows are grouped by model and each group is
scored in one batched call. Every model is loaded at most once per query, and a query may use at most
:data:`MAX_MODELS` different ones (a model name is data: ``sentiment(text, review_id)`` must not load models
until memory runs out). Model names are looked up in the registry only (names are validated: no paths).

``sentiment_explain`` is occlusion: it scores the text (its first :data:`EXPLAIN_CHARS` characters) once, then once without each of its first
:data:`EXPLAIN_WORDS` distinct words (all occurrences, case-folded), and reports the :data:`EXPLAIN_TOP` words
whose removal changes P(positive) most, ``weight`` = P(text) - P(text without the word) (positive: the word
pushes towards positive). It is model-agnostic and honest about what the model does, and costs
``EXPLAIN_WORDS + 1`` predictions per text: meant for a few rows, not a whole table.

The functions are two-argument Arrow UDFs (``__reviewflow_*``) behind overloaded TEMP macros, created before the
connection is locked down (:func:`pipeline.score.sql.lock_down`).
"""

from __future__ import annotations

import re
from typing import Any, Callable

import numpy as np
import pyarrow as pa

import duckdb

from pipeline.core.errors import InputError

MAX_MODELS = 3
EXPLAIN_WORDS = 48
EXPLAIN_TOP = 5
EXPLAIN_CHARS = 20_000          # sentiment_explain reads this much of a text (a long review is ~1,300 characters)
_WORD = re.compile(r"[^\W_]+(?:'[^\W_]+)?", re.UNICODE)
_EXPLAIN_TYPE = pa.list_(pa.struct([("phrase", pa.string()), ("weight", pa.float64())]))
FUNCTION_CALL = re.compile(r"\bsentiment(?:_label|_explain)?\s*\(", re.IGNORECASE)


class Models:
    """The models one query uses, each loaded on first use: ``''`` (or NULL) is the query's default model
    (``default``, or ``load_default()``), any other name goes to ``load(name)``."""

    def __init__(self, default: Any | None = None, load: Callable[[str], Any] | None = None,
                 load_default: Callable[[], Any] | None = None):
        self._default, self._load, self._load_default, self._cache = default, load, load_default, {}

    def get(self, name: str | None) -> Any:
        if not name:
            if self._default is None and self._load_default is not None:
                self._default = self._load_default()
            if self._default is None:
                raise InputError("sentiment(): no model to score with")
            return self._default
        if name not in self._cache:
            if len(self._cache) >= MAX_MODELS:
                raise InputError(f"one query may use at most {MAX_MODELS} models besides its default; "
                                 f"asked for {name!r} after {', '.join(self._cache)}")
            if self._load is None:
                raise InputError(f"sentiment(text, model): no registry to load {name!r} from")
            self._cache[name] = self._load(name)
        return self._cache[name]


def _scores(predictor, texts: list) -> np.ndarray:
    """P(positive) per text; NaN for nothing to score or text the model cannot read."""
    with_coverage = getattr(predictor, "predict_with_coverage", None)
    if with_coverage is not None:
        return np.asarray(with_coverage(texts).score, dtype=np.float64)
    return np.asarray(predictor.predict_proba(texts), dtype=np.float64)


def _by_model(models: Models, texts: pa.Array, names: pa.Array, fn: Callable[[Any, list], list]) -> list:
    """``fn(predictor, texts)`` per group of rows with the same model name, put back in row order."""
    texts = texts.combine_chunks() if isinstance(texts, pa.ChunkedArray) else texts
    names = names.combine_chunks() if isinstance(names, pa.ChunkedArray) else names
    text_list, name_list = texts.to_pylist(), names.to_pylist()
    out: list = [None] * len(text_list)
    for name in dict.fromkeys(name_list):
        rows = [i for i, (t, n) in enumerate(zip(text_list, name_list)) if n == name and t is not None]
        if rows:
            for i, value in zip(rows, fn(models.get(name), [text_list[i] for i in rows])):
                out[i] = value
    return out


def _score_values(predictor, texts: list) -> list:
    return [None if np.isnan(p) else float(p) for p in _scores(predictor, texts)]


def _label_values(predictor, texts: list) -> list:
    return [None if not t.strip() else ("unknown" if np.isnan(p) else "positive" if p >= 0.5 else "negative")
            for t, p in zip(texts, _scores(predictor, texts))]


def explain(predictor, text: str, top: int = EXPLAIN_TOP) -> list[dict] | None:
    """The ``top`` words whose removal changes P(positive) most (see the module docstring); None when the model
    cannot score the text."""
    text = text[:EXPLAIN_CHARS]             # each variant is a copy: a 10 MB text must not become 49 of them
    words = list(dict.fromkeys(w.lower() for w in _WORD.findall(text)))[:EXPLAIN_WORDS]
    if not words:
        return None
    variants = [re.sub(rf"(?<![^\W_]){re.escape(w)}(?![^\W_])", " ", text, flags=re.IGNORECASE) for w in words]
    probs = _scores(predictor, [text] + variants)
    if np.isnan(probs[0]):
        return None
    weights = probs[0] - np.nan_to_num(probs[1:], nan=probs[0])
    order = np.argsort(-np.abs(weights))[:top]
    return [{"phrase": words[i], "weight": round(float(weights[i]), 6)} for i in order]


def _explain_values(predictor, texts: list) -> list:
    return [explain(predictor, t) for t in texts]


def register(con: duckdb.DuckDBPyConnection, models: Models) -> None:
    """Create the functions of the module docstring on ``con`` (before it is locked down)."""
    def udf(fn, arrow_type):
        def run(texts, names):
            return pa.array(_by_model(models, texts, names, fn), type=arrow_type)
        return run

    explain_type = duckdb.list_type(duckdb.struct_type({"phrase": "VARCHAR", "weight": "DOUBLE"}))
    for name, fn, arrow_type, sql_type in (("score", _score_values, pa.float64(), "DOUBLE"),
                                           ("label", _label_values, pa.string(), "VARCHAR"),
                                           ("explain", _explain_values, _EXPLAIN_TYPE, explain_type)):
        con.create_function(f"__reviewflow_{name}", udf(fn, arrow_type), ["VARCHAR", "VARCHAR"], sql_type,
                            type="arrow", null_handling="special", side_effects=False)
    for macro, inner in (("sentiment", "score"), ("sentiment_label", "label"), ("sentiment_explain", "explain")):
        con.execute(f"CREATE TEMP MACRO {macro}(t) AS __reviewflow_{inner}(t, ''), "
                    f"(t, m) AS __reviewflow_{inner}(t, m)")
