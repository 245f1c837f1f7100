"""Text normalisation and tokenisation, vectorised with pyarrow.compute (no Python loop per token).

The rule (the baseline's, made explicit):

1. lowercase (``utf8_lower``);
2. if ``strip_html``: every HTML-looking tag (``<br />``, ``<i>``, ``</p>`` ...) becomes a space;
3. every character of Python's ``string.punctuation`` is deleted (so ``don't`` -> ``dont``, and with
   ``strip_html=False`` a ``<br />`` becomes the token ``br`` as in the baseline);
4. split on Unicode whitespace; empty pieces are dropped (like ``str.split()``).

Pyarrow kernels release the GIL, so callers can run batches on several threads.

Truncation/padding of token positions also lives here (``kept_positions`` / ``pad_rows``) so that
prepare() and ``Preprocessor.encode`` share one implementation.
"""

from __future__ import annotations

import re
import string
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from pipeline.prepare.config import PAD_SIDES, TRUNCATE_MODES

HTML_TAG_RE = r"<[a-z/!][^<>]*>"                   # applied after lowercasing
PUNCT_RE = "[" + "".join("\\" + c for c in string.punctuation) + "]+"


def as_string_array(texts: Sequence[str] | pa.Array | pa.ChunkedArray) -> pa.Array:
    """Any sequence of str (None allowed -> empty) as one arrow string array."""
    if isinstance(texts, pa.ChunkedArray):
        texts = texts.combine_chunks()
    if not isinstance(texts, pa.Array):
        texts = pa.array(list(texts), pa.large_string() if _big(texts) else pa.string())
    if pa.types.is_large_string(texts.type) or pa.types.is_string(texts.type):
        return pc.fill_null(texts, "") if texts.null_count else texts
    raise TypeError(f"expected strings, got {texts.type}")


def _big(texts) -> bool:
    try:
        return sum(len(t) for t in texts if t) > (1 << 30)
    except TypeError:
        return False


def normalise(texts: pa.Array, strip_html: bool = True) -> pa.Array:
    """Lowercase, optionally turn HTML tags into spaces, delete punctuation (vectorised)."""
    out = pc.utf8_lower(as_string_array(texts))
    if strip_html:
        out = pc.replace_substring_regex(out, HTML_TAG_RE, " ")
    return pc.replace_substring_regex(out, PUNCT_RE, "")


@dataclass
class Tokens:
    """Tokens of n texts, flat: ``values[offsets[i]:offsets[i+1]]`` are the tokens of text i."""

    values: pa.Array          # string tokens, flat
    counts: np.ndarray        # int64 [n] number of tokens per text

    @property
    def offsets(self) -> np.ndarray:
        off = np.zeros(len(self.counts) + 1, np.int64)
        np.cumsum(self.counts, out=off[1:])
        return off

    def to_lists(self) -> list[list[str]]:
        off = self.offsets
        flat = self.values.to_pylist()
        return [flat[off[i]:off[i + 1]] for i in range(len(self.counts))]


# byte classes for the tokenizer
_NORMAL, _PUNCT, _SPACE = 0, 1, 2
_CLASS = np.zeros(256, np.uint8)
for _c in string.punctuation:
    _CLASS[ord(_c)] = _PUNCT
for _c in "\t\n\x0b\x0c\r\x1c\x1d\x1e\x1f ":          # what str.split() treats as space (ASCII)
    _CLASS[ord(_c)] = _SPACE
# bytes.translate tables: a byte -> 1 if it is dropped (punctuation or space) / a space, else 0; what to delete
_DROPPED = bytes(int(_CLASS[b] in (_PUNCT, _SPACE)) for b in range(256))
_SPACES = bytes(int(_CLASS[b] == _SPACE) for b in range(256))
_DELETE = bytes(b for b in range(256) if _CLASS[b] in (_PUNCT, _SPACE))   # what tokens never hold
# non-ASCII whitespace of str.split(), as UTF-8 byte sequences
_UNICODE_SPACES = [chr(c).encode() for c in (0x85, 0xA0, 0x1680, *range(0x2000, 0x200B), 0x2028, 0x2029,
                                              0x202F, 0x205F, 0x3000)]
_UNICODE_SPACES_BY_LEAD: dict[int, list[bytes]] = {}
for _seq in _UNICODE_SPACES:
    _UNICODE_SPACES_BY_LEAD.setdefault(_seq[0], []).append(_seq)


def _string_buffers(arr: pa.Array) -> tuple[np.ndarray, np.ndarray]:
    """(offsets int64 [n+1] starting at 0, data uint8) of a string / large_string array, zero-copy."""
    bufs = arr.buffers()
    otype = np.int64 if pa.types.is_large_string(arr.type) else np.int32
    n = len(arr)
    offsets = np.frombuffer(bufs[1], otype, count=arr.offset + n + 1)[arr.offset:].astype(np.int64)
    data = np.frombuffer(bufs[2], np.uint8) if bufs[2] is not None else np.zeros(0, np.uint8)
    data = data[offsets[0]:offsets[-1]]
    return offsets - offsets[0], data


def flat_ranges(starts: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """Concatenated ``arange(s, s + l)`` for each (s, l), vectorised (e.g. the flat positions of some rows'
    tokens, from the rows' start positions and token counts)."""
    total = int(lengths.sum())
    if total == 0:
        return np.zeros(0, np.int64)
    first = np.zeros(len(lengths), np.int64)
    np.cumsum(lengths[:-1], out=first[1:])
    return np.repeat(starts - first, lengths) + np.arange(total, dtype=np.int64)


def _tag_positions(data: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    """Byte positions covered by ``<tag ...>`` (``<`` + [a-z/!] + no ``<``/``>`` + ``>``, within one text)."""
    angles = np.flatnonzero((data == 60) | (data == 62))         # '<' and '>'
    if len(angles) < 2:
        return np.zeros(0, np.int64)
    is_lt = data[angles] == 60
    ok = is_lt[:-1] & ~is_lt[1:]                                   # a '<' whose next angle is a '>'
    lt, gt = angles[:-1][ok], angles[1:][ok]
    second = data[np.minimum(lt + 1, len(data) - 1)]
    ok = ((second >= 97) & (second <= 122)) | (second == 47) | (second == 33)
    ok &= np.searchsorted(offsets, lt, "right") == np.searchsorted(offsets, gt, "right")
    lt, gt = lt[ok], gt[ok]
    return flat_ranges(lt, gt - lt + 1)


def tokenize(texts: Sequence[str] | pa.Array, strip_html: bool = True) -> Tokens:
    """Normalise and split on whitespace. Returns flat tokens + per-text counts.

    Lowercasing is arrow's ``utf8_lower``; the rest works on the UTF-8 bytes (punctuation and whitespace are
    single ASCII bytes, plus the few multi-byte Unicode spaces), which is several times faster than regex
    kernels and gives exactly ``str.split()`` semantics. ``bytes.translate`` marks every byte (dropped:
    punctuation or space; space) and deletes the dropped ones, one C pass each; numpy then works on the
    positions of the dropped bytes only. A token's length is the number of kept bytes between two
    boundaries (spaces, text starts): a boundary at byte ``p`` with ``d`` dropped bytes before it has
    ``p - d`` kept bytes before it. A run of spaces only adds empty segments, which are not tokens.
    """
    arr = pc.utf8_lower(as_string_array(texts))
    n = len(arr)
    offsets, data = _string_buffers(arr)
    if strip_html:
        tags = _tag_positions(data, offsets)
        if len(tags):
            data = data.copy()
            data[tags] = 32                                         # a tag is spaces
    raw = data.tobytes()
    hits, tails = _unicode_spaces(raw, data)
    if len(hits):              # rare: make them ASCII spaces (a run of spaces only adds empty segments)
        data = data.copy()
        data[hits] = 32
        data[tails] = 32
        raw = data.tobytes()
    chars = raw.translate(None, _DELETE)                            # the bytes of the tokens, in order
    pos_t = np.int32 if len(data) < (1 << 31) - 1 else np.int64     # positions: half the memory traffic
    dropped = np.flatnonzero(np.frombuffer(raw.translate(_DROPPED), np.bool_)).astype(pos_t)
    is_space = np.frombuffer(raw.translate(_SPACES), np.bool_)[dropped]
    space_at = np.flatnonzero(is_space)                             # index of each space among dropped bytes
    spaces = dropped[space_at]
    # boundaries: every space and every text start (a text start first on ties), as kept-byte counts
    row_starts = offsets[:-1].astype(pos_t)
    at = np.searchsorted(spaces, row_starts, "left")
    kept_at = np.insert(spaces - space_at.astype(pos_t), at, row_starts - np.searchsorted(dropped, row_starts, "left"))
    seg_len = np.diff(kept_at, append=np.asarray(len(chars), pos_t))
    nonempty = seg_len > 0
    tok_len = seg_len[nonempty]
    # text r's segments are kept_at[at[r] + r : at[r+1] + r + 1] (each text has >= 1: its start)
    counts = np.add.reduceat(nonempty.view(np.int8), at + np.arange(n), dtype=np.int64) if n else np.zeros(0, np.int64)
    big = len(chars) > (1 << 31) - 1
    tok_off = np.zeros(len(tok_len) + 1, np.int64 if big else np.int32)
    np.cumsum(tok_len, out=tok_off[1:])
    values = pa.Array.from_buffers(pa.large_string() if big else pa.string(), len(tok_len),
                                   [None, pa.py_buffer(tok_off), pa.py_buffer(chars)])
    return Tokens(values=values, counts=counts)


def _unicode_spaces(raw: bytes, data: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Where the multi-byte Unicode spaces of ``str.split()`` are in ``data`` (``raw``: the same bytes):
    (positions of their first bytes, positions of their other bytes). A lead byte is looked for with one
    C scan (``in``) first, so text without it costs nothing more."""
    hits, tails = [], []
    for lead_byte, seqs in _UNICODE_SPACES_BY_LEAD.items():
        if bytes([lead_byte]) not in raw:
            continue
        lead = np.flatnonzero(data[:-1] == lead_byte)
        for seq in seqs:
            hit = lead[lead + len(seq) <= len(data)]
            for k in range(1, len(seq)):
                hit = hit[data[hit + k] == seq[k]]
            if len(hit):
                hits.append(hit)
                tails += [hit + k for k in range(1, len(seq))]
    if not hits:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    return np.concatenate(hits), np.concatenate(tails)


def tokenize_reference(text: str, strip_html: bool = True) -> list[str]:
    """The same rule in plain Python (regex kernels), for tests and documentation only."""
    text = text.lower()
    if strip_html:
        text = re.sub(HTML_TAG_RE, " ", text)
    return re.sub(PUNCT_RE, "", text).split()


def kept_mask(counts: np.ndarray, max_len: int, truncate: str) -> np.ndarray | None:
    """Boolean mask over the flat tokens: which survive truncation to ``max_len`` (None = all).

    ``head`` keeps the first max_len tokens, ``tail`` the last max_len, ``head+tail`` the first
    ``max_len // 3`` and the last ``max_len - max_len // 3`` (the end of a review often carries the
    verdict, so it gets two thirds).
    """
    if truncate not in TRUNCATE_MODES:
        raise ValueError(f"truncate must be one of {TRUNCATE_MODES}, got {truncate!r}")
    counts = np.asarray(counts, np.int64)
    long_rows = np.flatnonzero(counts > max_len)
    if len(long_rows) == 0:
        return None
    starts = np.zeros(len(counts), np.int64)
    np.cumsum(counts[:-1], out=starts[1:])
    head = {"head": max_len, "tail": 0, "head+tail": max_len // 3}[truncate]
    mask = np.ones(int(counts.sum()), bool)
    mask[flat_ranges(starts[long_rows] + head, counts[long_rows] - max_len)] = False
    return mask


def kept_positions(counts: np.ndarray, max_len: int, truncate: str) -> tuple[np.ndarray, np.ndarray]:
    """(flat source positions of the kept tokens, kept count per row), both int64."""
    counts = np.asarray(counts, np.int64)
    mask = kept_mask(counts, max_len, truncate)
    total = int(counts.sum())
    src = np.arange(total, dtype=np.int64) if mask is None else np.flatnonzero(mask)
    return src, np.minimum(counts, max_len)


def pad_rows(flat_ids: np.ndarray, kept: np.ndarray, max_len: int, pad_side: str,
             dtype=np.int32) -> np.ndarray:
    """Place flat per-row ids into an [n, max_len] array padded with 0 on ``pad_side``.

    A boolean mask of the real-token cells, filled in row-major order, is exactly the flat order.
    """
    if pad_side not in PAD_SIDES:
        raise ValueError(f"pad_side must be one of {PAD_SIDES}, got {pad_side!r}")
    kept = np.asarray(kept)
    n = len(kept)
    out = np.zeros((n, max_len), dtype)
    if n == 0 or len(flat_ids) == 0:
        return out
    cols = np.arange(max_len)
    if pad_side == "right":
        mask = cols < kept[:, None]
    else:
        mask = cols >= (max_len - kept)[:, None]
    out[mask] = flat_ids
    return out


def trim_padding(ids: np.ndarray, width: int, pad_side: str) -> np.ndarray:
    """The ``width`` columns of padded rows ``ids`` [N, T] where their tokens are: the first ``width`` of
    right-padded rows, the last ``width`` of left-padded ones (the one place pad-side trimming is written)."""
    return ids[:, :width] if pad_side == "right" else ids[:, ids.shape[1] - width:]
