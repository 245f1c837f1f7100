"""A file's columns -> the lake's: which column plays which role, and every value coerced and checked.

Every reader yields batches with ``SOURCE_SCHEMA`` (the lake's ``LAKE_SCHEMA`` minus ``source`` and
``ingested_at``, which ingest adds): ``review_id`` (never null), ``text`` (valid UTF-8; may be empty or
null: ingest drops and counts those), ``label`` int8 1/0/null, ``rating`` int8, ``split``
train/test/unsup/null, ``group_id`` (what the review is about; null when unknown).

Files map columns with ``ColumnMap``; defaults: text ``text``; label ``label`` if present; id
``review_id`` if present, else ``id``, else ``sha1_<sha1 of the text>``; rating ``rating`` if present;
split from the ``split`` column if present (empty cells get ``--split``), else the ``--split`` value,
else null; group from ``--group-col``, else ``group_id`` if present, else null (strings or whole
numbers, kept as text: ``tt0111161``, ``42``; blank cells are null).

When nobody says which column holds the text (the inbox), :func:`guess_text_column` picks it: the first
column named (any case) ``text``, ``review``, ``comment``, ``body`` or ``content``, in that order; else the
one *long* string column: over a sample of the first rows (``pipeline.ingest.detect.SAMPLE_ROWS``), its
median value is at least ``LONG_TEXT_CHARS`` (40) characters and at least half of its values contain a
space (prose, not ids, hashes or URLs). None or several long columns: no guess, the caller asks the user.

Invalid UTF-8 is replaced with U+FFFD (``ensure_utf8``) and the affected rows counted. Errors name the
row as a record number from 1 (``row_offset`` + position in the batch); readers re-point them at lines.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import pyarrow as pa
import pyarrow.compute as pc

from pipeline.core.errors import InputError
from pipeline.core.schema import LAKE_SCHEMA, SPLITS
from pipeline.ingest.labels import normalize_labels, plain_array

SOURCE_SCHEMA = pa.schema([LAKE_SCHEMA.field(n) for n in ("review_id", "text", "label", "rating", "split",
                                                          "group_id")])


@dataclass(frozen=True)
class ColumnMap:
    """How a file's columns map onto the lake's (``None`` = the defaults in the module doc)."""

    text_col: str | None = None
    label_col: str | None = None
    id_col: str | None = None
    rating_col: str | None = None
    split_col: str | None = None
    split: str | None = None  # constant split for rows without one
    group_col: str | None = None  # what each review is about (a movie, a product): the lake's group_id

    def __post_init__(self):
        if self.split is not None and self.split not in SPLITS:
            raise InputError(f"--split must be one of {', '.join(SPLITS)}, not {self.split!r}")


def _is_text_like(t: pa.DataType) -> bool:
    """String or binary, small or large: what may hold (possibly broken) UTF-8 text."""
    return pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_binary(t) or pa.types.is_large_binary(t)


def ensure_utf8(arr: pa.Array | pa.ChunkedArray) -> tuple[pa.Array, pa.Array | None]:
    """``arr`` as a valid UTF-8 string array, plus a boolean mask of rows that needed U+FFFD
    replacement (``None`` when none did). Vectorised validation; Python only for bad batches."""
    arr = plain_array(arr)
    t = arr.type
    if pa.types.is_string(t) or pa.types.is_large_string(t):
        try:
            arr.validate(full=True)
            return (arr if pa.types.is_string(t) else pc.cast(arr, pa.string())), None
        except pa.ArrowInvalid:
            arr = arr.view(pa.binary() if pa.types.is_string(t) else pa.large_binary())
    elif not _is_text_like(t):
        raise TypeError(t)
    try:
        return pc.cast(arr, pa.string()), None
    except pa.ArrowInvalid:
        pass
    out, mask = [], []
    for v in arr.to_pylist():
        if v is None:
            out.append(None)
            mask.append(False)
            continue
        try:
            out.append(v.decode("utf-8"))
            mask.append(False)
        except UnicodeDecodeError:
            out.append(v.decode("utf-8", errors="replace"))
            mask.append(True)
    return pa.array(out, pa.string()), pa.array(mask, pa.bool_())


def content_ids(texts: pa.Array) -> pa.Array:
    """Stable review ids from content: ``sha1_<hex sha1 of the UTF-8 text>``."""
    return pa.array([None if t is None else "sha1_" + hashlib.sha1(t.encode("utf-8")).hexdigest()
                     for t in texts.to_pylist()], pa.string())


def _first(mask: pa.Array) -> int:
    return int(pc.index(mask, True).as_py())


def _blank_as_null(s: pa.Array) -> pa.Array:
    """Trimmed strings, with empty ones turned into nulls."""
    s = pc.utf8_trim_whitespace(s)
    return pc.if_else(pc.equal(pc.utf8_length(s), 0), pa.scalar(None, pa.string()), s)


def _as_text(arr: pa.Array, *, path, column) -> tuple[pa.Array, pa.Array | None]:
    arr = plain_array(arr)
    if pa.types.is_null(arr.type):
        return pa.nulls(len(arr), pa.string()), None
    if not _is_text_like(arr.type):
        raise InputError(f"text column must hold strings, found {arr.type}", path=path, column=column)
    return ensure_utf8(arr)


def _as_ids(arr: pa.Array, *, path, column, row_offset) -> tuple[pa.Array, pa.Array | None]:
    arr = plain_array(arr)
    t = arr.type
    mask = None
    if pa.types.is_integer(t) or pa.types.is_null(t):
        ids = pc.cast(arr, pa.string())
    elif _is_text_like(t):
        ids, mask = ensure_utf8(arr)
    else:
        raise InputError(f"id column must hold strings or integers, found {t}", path=path, column=column)
    bad = pc.fill_null(pc.equal(pc.utf8_length(pc.utf8_trim_whitespace(ids)), 0), True)
    if pc.any(bad).as_py():
        raise InputError("empty review id (every row needs one; omit --id-col to use a content hash)",
                         path=path, row=row_offset + _first(bad) + 1, column=column)
    return ids, mask


def _rating_numbers(arr: pa.Array, *, path, column, row_offset) -> pa.Array:
    """A text rating column as float64 (blank -> null); the first non-number is an error naming its row."""
    s = _blank_as_null(ensure_utf8(arr)[0])
    try:
        return pc.cast(s, pa.float64())
    except pa.ArrowInvalid:
        for i, v in enumerate(s.to_pylist()):
            try:
                None if v is None else float(v)
            except ValueError:
                raise InputError(f"rating {v!r} is not a number", path=path, row=row_offset + i + 1,
                                 column=column) from None
        raise


def _as_rating(arr: pa.Array, *, path, column, row_offset) -> pa.Array:
    arr = plain_array(arr)
    if pa.types.is_null(arr.type):
        return pa.nulls(len(arr), pa.int8())
    if _is_text_like(arr.type):
        arr = _rating_numbers(arr, path=path, column=column, row_offset=row_offset)
    t = arr.type
    if pa.types.is_floating(t):
        arr = pc.if_else(pc.is_nan(arr), pa.scalar(None, t), arr)
    if not (pa.types.is_integer(t) or pa.types.is_floating(t)):
        raise InputError(f"rating column must hold numbers, found {t}", path=path, column=column)
    ok = pc.and_(pc.and_(pc.greater_equal(arr, -128), pc.less_equal(arr, 127)),
                 pc.equal(pc.floor(arr) if pa.types.is_floating(t) else arr, arr))
    bad = pc.fill_null(pc.invert(ok), False)
    if pc.any(bad).as_py():
        i = _first(bad)
        raise InputError(f"rating {arr[i].as_py()!r} is not a whole number between -128 and 127",
                         path=path, row=row_offset + i + 1, column=column)
    return pc.cast(arr, pa.int8())


def _as_split(arr: pa.Array | None, default: str | None, n: int, *, path, column, row_offset) -> pa.Array:
    if arr is None:
        return pa.array([default] * n, pa.string()) if default else pa.nulls(n, pa.string())
    if pa.types.is_null(arr.type):
        s = pa.nulls(n, pa.string())
    else:
        if not (_is_text_like(arr.type) or pa.types.is_dictionary(arr.type)):
            raise InputError(f"split column must hold strings, found {arr.type}", path=path, column=column)
        s = pc.utf8_lower(_blank_as_null(ensure_utf8(arr)[0]))
    if default:
        s = pc.fill_null(s, default)
    bad = pc.and_(pc.is_valid(s), pc.invert(pc.fill_null(pc.is_in(s, value_set=pa.array(SPLITS)), False)))
    if pc.any(bad).as_py():
        i = _first(bad)
        raise InputError(f"unknown split {s[i].as_py()!r}; expected one of {', '.join(SPLITS)} or empty",
                         path=path, row=row_offset + i + 1, column=column)
    return s


def _whole_numbers_as_text(arr: pa.Array, *, path, column, row_offset) -> pa.Array:
    """A float group column (what pandas writes for integer ids with gaps) as text: NaN -> null,
    ``42.0`` -> ``"42"``; a fractional value is an error naming its row."""
    arr = pc.if_else(pc.is_nan(arr), pa.scalar(None, arr.type), arr)
    exact = pc.and_(pc.less_equal(pc.abs(arr), 2.0**53), pc.equal(pc.floor(arr), arr))   # inf fails both
    bad = pc.fill_null(pc.invert(exact), False)
    if pc.any(bad).as_py():
        i = _first(bad)
        raise InputError(f"group {arr[i].as_py()!r} is not a whole number (group ids are text or integers)",
                         path=path, row=row_offset + i + 1, column=column)
    return pc.cast(pc.cast(arr, pa.int64()), pa.string())


def _as_group(arr: pa.Array, *, path, column, row_offset) -> pa.Array:
    """The group column as trimmed text, blank -> null. Strings, integers and whole floats are accepted."""
    arr = plain_array(arr)
    t = arr.type
    if pa.types.is_null(t):
        return pa.nulls(len(arr), pa.string())
    if pa.types.is_integer(t):
        return pc.cast(arr, pa.string())
    if pa.types.is_floating(t):
        return _whole_numbers_as_text(arr, path=path, column=column, row_offset=row_offset)
    if not _is_text_like(t):
        raise InputError(f"group column must hold strings or integers, found {t}", path=path, column=column)
    return _blank_as_null(ensure_utf8(arr)[0])


TEXT_NAMES = ("text", "review", "comment", "body", "content")   # tried in this order, any case
LONG_TEXT_CHARS = 40


@dataclass(frozen=True)
class TextGuess:
    """What :func:`guess_text_column` found: the column (None: no guess), why, and the long columns seen."""

    column: str | None
    why: str
    long_columns: tuple[str, ...] = ()


def _median_length(values: list[str]) -> tuple[float, float]:
    """(median length in characters, share of values with a space) of the non-blank ``values``."""
    vals = sorted(len(v) for v in values if v.strip())
    if not vals:
        return 0.0, 0.0
    mid = len(vals) // 2
    median = vals[mid] if len(vals) % 2 else (vals[mid - 1] + vals[mid]) / 2
    return float(median), sum(" " in v.strip() for v in values if v.strip()) / len(vals)


def guess_text_column(names: list[str], strings: dict[str, list[str]], exclude: set[str] = frozenset()) -> TextGuess:
    """The text column by name, else the one long string column (module doc). ``strings``: sampled string
    values per column; ``exclude``: columns that play another role (the id, the label)."""
    lowered = {}
    for n in names:
        lowered.setdefault(n.strip().lower(), n)
    for want in TEXT_NAMES:
        if want in lowered and lowered[want] not in exclude:
            return TextGuess(lowered[want], f"auto: common name {want!r}")
    long, why = [], {}
    for n in names:
        median, spaced = _median_length(strings.get(n, []))
        if n not in exclude and median >= LONG_TEXT_CHARS and spaced >= 0.5:
            long.append(n)
            why[n] = (f"auto: the one long string column (median {median:g} characters over "
                      f"{len(strings[n])} sampled values)")
    if len(long) == 1:
        return TextGuess(long[0], why[long[0]], (long[0],))
    found = "no column" if not long else f"{len(long)} columns ({', '.join(map(repr, long))})"
    return TextGuess(None, f"none is named {', '.join(TEXT_NAMES)}, and {found} hold long text (median "
                           f">= {LONG_TEXT_CHARS} characters, mostly with spaces)", tuple(long))


def resolve_columns(names: list[str], cols: ColumnMap, path: str) -> dict[str, str | None]:
    """role -> column name in the file (None = not present / use the default)."""
    listing = ", ".join(repr(n) for n in names) or "(none)"

    def need(name, flag):
        if name not in names:
            raise InputError(f"column {name!r} not found; the file has columns: {listing} (choose with {flag})",
                             path=path, column=name)
        return name

    def chosen_or_default(name, flag, *defaults):
        return need(name, flag) if name else next((d for d in defaults if d in names), None)

    return {"text": need(cols.text_col or "text", "--text-col"),
            "label": chosen_or_default(cols.label_col, "--label-col", "label"),
            "id": chosen_or_default(cols.id_col, "--id-col", "review_id", "id"),
            "rating": chosen_or_default(cols.rating_col, "--rating-col", "rating"),
            "split": chosen_or_default(cols.split_col, "--split-col", "split"),
            "group": chosen_or_default(cols.group_col, "--group-col", "group_id")}


def normalize_columns(raw: dict[str, pa.Array | None], n: int, roles: dict[str, str | None], cols: ColumnMap,
                      *, path: str, row_offset: int) -> tuple[pa.RecordBatch, int]:
    """Raw mapped columns of one batch -> a ``SOURCE_SCHEMA`` batch (validating every value), and how many
    of its rows had invalid UTF-8 replaced in the text or the id."""
    text, tmask = _as_text(raw["text"], path=path, column=roles["text"])
    if raw.get("id") is not None:
        ids, imask = _as_ids(raw["id"], path=path, column=roles["id"], row_offset=row_offset)
    else:
        ids, imask = content_ids(text), None
        ids = pc.fill_null(ids, "sha1_none")  # null text: dropped by ingest anyway
    masks = [m for m in (tmask, imask) if m is not None]
    repaired = 0
    if masks:
        m = masks[0] if len(masks) == 1 else pc.or_(masks[0], masks[1])
        repaired = int(pc.sum(m).as_py() or 0)
    if raw.get("label") is not None:
        lab = raw["label"]
        if pa.types.is_binary(lab.type) or pa.types.is_large_binary(lab.type):
            lab, _ = ensure_utf8(lab)
        label = normalize_labels(lab, path=path, column=roles["label"], row_offset=row_offset)
    else:
        label = pa.nulls(n, pa.int8())
    rating = (_as_rating(raw["rating"], path=path, column=roles["rating"], row_offset=row_offset)
              if raw.get("rating") is not None else pa.nulls(n, pa.int8()))
    split = _as_split(raw.get("split"), cols.split, n, path=path, column=roles["split"], row_offset=row_offset)
    group = (_as_group(raw["group"], path=path, column=roles["group"], row_offset=row_offset)
             if raw.get("group") is not None else pa.nulls(n, pa.string()))
    return pa.RecordBatch.from_arrays([ids, text, label, rating, split, group], schema=SOURCE_SCHEMA), repaired
