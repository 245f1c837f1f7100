"""Label normalisation: whatever spelling a source uses -> int8 1 (positive) / 0 (negative) / null.

Accepted (case-insensitive, surrounding whitespace ignored):

    positive: pos, positive, 1, true     (and integer 1, boolean true, float 1.0)
    negative: neg, negative, 0, false    (and integer 0, boolean false, float 0.0)
    unknown:  null / empty string        -> null

Anything else is an error that names the file, the row (1-based record number, header not
counted) and the column, with the offending value. Everything is vectorised (pyarrow.compute);
Python only runs on the error path, to find the first bad row.
"""

from __future__ import annotations

import pyarrow as pa
import pyarrow.compute as pc

from pipeline.core.errors import InputError

POSITIVE = ("pos", "positive", "1", "true")
NEGATIVE = ("neg", "negative", "0", "false")
_ACCEPTED = ", ".join(POSITIVE + NEGATIVE)
# index_in over this value set; positions < len(POSITIVE) are positive
_VALUE_SET = pa.array(POSITIVE + NEGATIVE, pa.string())
_IS_POS = pa.array([1] * len(POSITIVE) + [0] * len(NEGATIVE), pa.int8())


def _bad(values: pa.Array, bad_mask: pa.Array, *, path, column, row_offset) -> InputError:
    idx = int(pc.index(bad_mask, True).as_py())
    value = values[idx].as_py()
    return InputError(
        f"unknown label value {value!r}; accepted (case-insensitive): {_ACCEPTED}, or empty for unknown",
        path=path, row=row_offset + idx + 1, column=column,
    )


def plain_array(values: pa.Array | pa.ChunkedArray) -> pa.Array:
    """One contiguous, dictionary-decoded array (what the column normalisers work on)."""
    if isinstance(values, pa.ChunkedArray):
        values = values.combine_chunks()
    if pa.types.is_dictionary(values.type):
        values = values.dictionary_decode()
    return values


def normalize_labels(values: pa.Array | pa.ChunkedArray, *, path: str | None = None,
                     column: str | None = None, row_offset: int = 0) -> pa.Array:
    """Map a label column of any common type to int8 1/0/null (see module doc).

    ``row_offset`` is the number of records before this array in the source, so errors can name
    the absolute row.
    """
    values = plain_array(values)
    t = values.type
    if pa.types.is_null(t):
        return pa.nulls(len(values), pa.int8())
    if pa.types.is_boolean(t):
        return pc.cast(values, pa.int8())
    if pa.types.is_floating(t):  # pandas writes missing labels as NaN
        values = pc.if_else(pc.is_nan(values), pa.scalar(None, t), values)
    if pa.types.is_integer(t) or pa.types.is_floating(t):
        ok = pc.or_kleene(pc.equal(values, 0), pc.equal(values, 1))
        bad = pc.fill_null(pc.invert(ok), False)
        if pc.any(bad).as_py():
            raise _bad(values, bad, path=path, column=column, row_offset=row_offset)
        return pc.cast(values, pa.int8())
    if pa.types.is_binary(t) or pa.types.is_large_binary(t) or pa.types.is_large_string(t):
        values = pc.cast(values, pa.string())  # invalid UTF-8 here -> caller has replaced it already
        t = values.type
    if not pa.types.is_string(t):
        raise InputError(f"label column has unsupported type {t}; use strings, integers or booleans",
                         path=path, column=column)
    key = pc.utf8_lower(pc.utf8_trim_whitespace(values))
    empty = pc.equal(pc.utf8_length(key), 0)
    key = pc.if_else(empty, pa.scalar(None, pa.string()), key)
    pos = pc.index_in(key, value_set=_VALUE_SET)
    bad = pc.and_(pc.is_null(pos), pc.is_valid(key))
    if pc.any(bad).as_py():
        raise _bad(values, bad, path=path, column=column, row_offset=row_offset)
    return pc.take(_IS_POS, pos)


def label_name(label: int | None) -> str:
    """1 -> 'pos', 0 -> 'neg', None -> 'unlabelled' (for reports)."""
    return {1: "pos", 0: "neg"}.get(label, "unlabelled")
