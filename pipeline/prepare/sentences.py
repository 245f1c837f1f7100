"""Sentence splitting and short-span sampling, vectorised with pyarrow.compute (no Python loop per row).

Used to build evaluation sets that look like what users bring (single sentences, short passages)
out of our own reviews. The rule, in order:

1. every HTML-looking tag other than a line break (``<i>``, ``</p>`` ...) becomes a space;
2. HTML line breaks (``<br />``, ``<br>``, ``<BR/>`` ... any case) and newlines are sentence breaks;
3. a sentence ends after a run of ``.``, ``!``, ``?`` or ``…`` (optionally followed by closing quotes
   or brackets) when whitespace follows; so ``"Wow!?! Next"`` splits after ``!?!``, ``"Wait... what"``
   splits after the ellipsis, and ``"3.5 stars"`` does not split (no whitespace after the dot);
4. whitespace is collapsed to single spaces and each sentence is stripped;
5. sentences with fewer than ``min_words`` words are dropped (a word is a run of Unicode letters or
   digits; an empty sentence is always dropped).

Known, accepted limits: there is no abbreviation list, so ``"Mr. Smith"``, ``"e.g. this"`` or
``"vs. that"`` split after the dot (the short piece is usually dropped by ``min_words``); a text
with no end punctuation is one sentence; a lowercase start after ``?`` still splits.
Pyarrow's RE2 has no look-behind, so the split points are marked by inserting a ``\\x1f`` delimiter
(any ``\\x1f`` already in a text also splits).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from pipeline.prepare.text import as_string_array

SEP = "\x1f"
# every tag except a line break (<br>, <br/>, <BR />): those are kept for BREAK_RE
TAG_RE = r"<(?:[ac-zAC-Z/!][^<>]*|[bB]|[bB][^rR<>][^<>]*|[bB][rR][^\s/<>][^<>]*)>"
# group 1 (sentence end) is kept; line breaks and newlines (group 1 empty) become only the delimiter
BREAK_RE = "([.!?\u2026]+[\"'\u201d\u2019)\\]]*)\\s+|<\\s*[bB][rR]\\s*/?\\s*>|[\\r\\n]+"
SPACE_RE = r"\s\s+|[^\S ]"          # only what is not already one plain space
WORD = r"[\p{L}\p{N}]"
WORD_RE = WORD + "+"


def _enough_words_re(min_words: int) -> str:
    """A regex that matches a text with at least ``min_words`` words (stops at the first fit)."""
    if min_words <= 1:
        return WORD
    return "(?:" + WORD + "+[^\\p{L}\\p{N}]+){" + str(min_words - 1) + "}" + WORD


def split_sentences(texts: Sequence[str | None] | pa.Array | pa.ChunkedArray,
                    min_words: int = 3) -> tuple[np.ndarray, pa.Array]:
    """Split texts into sentences. Returns ``(row, sentences)``: ``row[i]`` (int64, ascending) is the
    index in ``texts`` of the text sentence i came from; sentences are stripped strings, in text order
    then sentence order. NULL or empty texts give no sentences. See the module doc for the rule."""
    arr = as_string_array(texts)
    marked = pc.replace_substring_regex(arr, TAG_RE, " ")
    marked = pc.replace_substring_regex(marked, BREAK_RE, "\\1" + SEP)
    pieces = pc.split_pattern(marked, SEP)
    flat = pc.list_flatten(pieces)
    keep = pc.match_substring_regex(flat, _enough_words_re(int(min_words)))
    sentences = pc.filter(flat, keep)
    sentences = pc.utf8_trim_whitespace(pc.replace_substring_regex(sentences, SPACE_RE, " "))
    rows = pc.filter(pc.list_parent_indices(pieces), keep)
    rows = rows.to_numpy(zero_copy_only=False).astype(np.int64, copy=False)
    if pa.types.is_large_string(sentences.type) and _fits_string(sentences):
        sentences = sentences.cast(pa.string())
    return rows, sentences


def _fits_string(a: pa.Array) -> bool:
    return (pc.sum(pc.binary_length(a)).as_py() or 0) < (1 << 31) - 1


def word_counts(texts: pa.Array | Sequence[str]) -> np.ndarray:
    """Words (runs of Unicode letters/digits) per text, int64; NULL counts 0."""
    counts = pc.count_substring_regex(as_string_array(texts), WORD_RE)
    return counts.to_numpy(zero_copy_only=False).astype(np.int64, copy=False)


def _groups(row: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """For an ascending row array: (row id of each group, first position, size)."""
    if len(row) == 0:
        z = np.zeros(0, np.int64)
        return z, z, z
    if np.any(np.diff(row) < 0):
        raise ValueError("row must be ascending (as split_sentences returns it)")
    ids, first, size = np.unique(row, return_index=True, return_counts=True)
    return ids.astype(np.int64), first.astype(np.int64), size.astype(np.int64)


def sample_spans(row, sentences, *, max_sentences: int, per_text: int, seed: int,
                 min_sentences: int = 1) -> tuple[np.ndarray, pa.Array]:
    """Per source text, up to ``per_text`` spans of ``min_sentences..max_sentences`` consecutive
    sentences joined by one space. ``row``/``sentences`` are split_sentences' output. For each text with
    k >= min_sentences sentences, each of ``per_text`` draws picks a length uniformly in
    ``min_sentences..min(max_sentences, k)`` and then a start uniformly among the places it fits;
    identical draws are kept once (hence "up to"). Deterministic from ``seed`` (numpy Generator).
    Returns ``(row, span)`` sorted by row, then start, then length."""
    if max_sentences < 1 or per_text < 1 or not 1 <= min_sentences <= max_sentences:
        raise ValueError("need 1 <= min_sentences <= max_sentences and per_text >= 1")
    row = np.asarray(row, np.int64)
    sentences = as_string_array(sentences)
    if len(row) != len(sentences):
        raise ValueError(f"row has {len(row)} entries, sentences {len(sentences)}")
    ids, first, size = _groups(row)
    ok = size >= min_sentences
    ids, first, size = ids[ok], first[ok], size[ok]
    g = np.repeat(np.arange(len(ids)), per_text)
    u = np.random.default_rng(seed).random((2, len(g)))
    top = np.minimum(size[g], max_sentences)
    length = min_sentences + np.floor(u[0] * (top - min_sentences + 1)).astype(np.int64)
    start = np.floor(u[1] * (size[g] - length + 1)).astype(np.int64)
    uniq = np.unique(np.stack([g, start, length], axis=1), axis=0)
    g, start, length = uniq[:, 0], uniq[:, 1], uniq[:, 2]
    offsets = np.zeros(len(g) + 1, np.int64)
    np.cumsum(length, out=offsets[1:])
    within = np.arange(offsets[-1], dtype=np.int64) - np.repeat(offsets[:-1], length)
    take = np.repeat(first[g] + start, length) + within
    lists = pa.LargeListArray.from_arrays(pa.array(offsets), sentences.take(pa.array(take)))
    return ids[g].astype(np.int64), pc.binary_join(lists, " ")
