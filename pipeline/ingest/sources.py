"""Readers for every kind of review source, each a stream of Arrow record batches.

Every reader yields batches with ``SOURCE_SCHEMA`` (the lake's ``REVIEW_SCHEMA`` minus ``source``
and ``ingested_at``, which ingest adds): ``review_id`` (never null), ``text`` (valid UTF-8; may be
empty or null: ingest drops and counts those), ``label`` int8 1/0/null, ``rating`` int8,
``split`` train/test/unsup/null.

Kinds (detected from the path):

=================  ==========================================================================
aclimdb-folder     ``<root>/[aclImdb/]{train,test}/{pos,neg}/<id>_<rating>.txt`` and
                   ``train/unsup/<id>_<rating>.txt``
aclimdb-tarball    the same tree inside ``aclImdb_v1.tar.gz`` (read in tarfile stream mode over the
                   stdlib gzip/bz2/xz reader, which notices a cut-off file; nothing is unpacked)
aclimdb-url        the tarball over http(s), streamed straight off the socket
csv / tsv          pyarrow.csv, streamed by block (``.gz``/``.bz2``/``.zst`` decompressed on the fly)
jsonl              ``.jsonl``/``.ndjson``/``.json`` (JSON lines), pyarrow.json on ~16 MiB line chunks
parquet            pyarrow.parquet, streamed by record batch, only the mapped columns
=================  ==========================================================================

aclImdb review ids follow the ``../shared/data/imdb`` convention: ``{split}_{pos|neg}_{id}`` and
``unsup_{id}`` (split ``unsup``) for ``train/unsup``; the label comes from the folder, the rating
from the file name (``0`` in ``unsup`` means unknown -> null).

Files map columns with ``ColumnMap``; defaults: text ``text``; label ``label`` if present; id
``review_id`` if present, else ``id``, else ``sha1_<sha1 of the text>``; rating ``rating`` if
present; split from the ``split`` column if present (empty cells get ``--split``), else the
``--split`` value, else null.

Invalid UTF-8 is replaced with U+FFFD and the affected rows counted in ``ReadStats.replaced_utf8``.

Where errors point: JSON lines errors name the physical **line** of the file (1 = first line, blank
lines counted), what an editor or ``sed -n 8p`` shows. CSV/TSV errors name the **data row** (1 = the
first row after the header) and the line it starts on (a quoted field may span lines). Parquet errors
name the row (record number, from 1).

Links and special files: a source path given by the user may be a symbolic link (it is resolved), but
it must end at a regular file or a folder: a FIFO, socket or device is refused before it is opened (a
FIFO would block). Inside an aclImdb folder no link is ever followed out of the folder: one that leads
out refuses the whole folder; links inside it are followed. Entries that are not regular files (FIFOs,
sockets, devices, sub-folders, broken links) are skipped, never opened, and reported by name in
``ReadStats.skipped``, as are tarball members that are not regular files (links, devices, FIFOs).
"""

from __future__ import annotations

import bz2
import csv
import gzip
import hashlib
import io
import json
import lzma
import os
import re
import stat
import tarfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO, Iterator

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.json as pajson
import pyarrow.parquet as pq
from tqdm.auto import tqdm

from pipeline.ingest.download import is_url, open_local, open_url
from pipeline.core.errors import InputError
from pipeline.ingest.labels import normalize_labels, plain_array
from pipeline.core.schema import REVIEW_SCHEMA, SPLITS

SOURCE_SCHEMA = pa.schema([REVIEW_SCHEMA.field(n) for n in ("review_id", "text", "label", "rating", "split")])

KINDS = ("aclimdb-folder", "aclimdb-tarball", "aclimdb-url", "csv", "tsv", "jsonl", "parquet")
_TAR_SUFFIXES = (".tar.gz", ".tgz", ".tar", ".tar.bz2", ".tbz2", ".tar.xz", ".txz")
_COMPRESSION_SUFFIXES = (".gz", ".bz2", ".zst", ".xz")
_FILE_KINDS = {".csv": "csv", ".tsv": "tsv", ".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "jsonl",
               ".parquet": "parquet", ".pq": "parquet"}
# aclImdb member/file: optional top folder (aclImdb/), then split/class/<id>_<rating>.txt
_ACL_RE = re.compile(r"^(?:[^/]+/)?(train|test)/(pos|neg|unsup)/(\d+)_(\d+)\.txt$")
_ACL_FILE_RE = re.compile(r"^(\d+)_(\d+)\.txt$")

BATCH_ROWS = 4096            # aclImdb readers: rows per batch
BATCH_BYTES = 32 << 20       # ... or this much text, whichever first
JSON_CHUNK_BYTES = 16 << 20  # JSON lines are parsed in chunks of about this many bytes
MAX_CSV_BLOCK = 256 << 20    # one CSV row (one review) may be at most this big
SKIPPED_NAMES_KEPT = 20      # ReadStats.skipped keeps this many names; skipped_total counts them all


class LocatedError(InputError):
    """An ``InputError`` that says *which kind* of place it names: a physical ``line`` of the file, or a
    ``data_row`` (header not counted) with the ``line`` it starts on when known (see module doc)."""

    def __init__(self, message: str, *, path: str, line: int | None = None, data_row: int | None = None,
                 column: str | None = None):
        super().__init__(message, path=path, row=data_row, column=column)
        self.line = line
        if data_row is not None:
            place = f"data row {data_row}" + (f" at line {line}" if line is not None else "")
        else:
            place = f"line {line}"
        where = [f"file {path}", place] + ([f"column {column!r}"] if column is not None else [])
        self.args = (f"{message} ({', '.join(where)})",)


def _bare_message(exc: InputError) -> str:
    """``exc``'s message without the ``(file ..., row ..., column ...)`` suffix ``InputError`` adds."""
    text = str(exc)
    return text.rsplit(" (file ", 1)[0] if exc.path is not None else text


@dataclass(frozen=True)
class ColumnMap:
    """How a file's columns map onto the lake's (``None`` = the defaults in the module doc)."""

    text_col: str | None = None
    label_col: str | None = None
    id_col: str | None = None
    rating_col: str | None = None
    split_col: str | None = None
    split: str | None = None  # constant split for rows without one

    def __post_init__(self):
        if self.split is not None and self.split not in SPLITS:
            raise InputError(f"--split must be one of {', '.join(SPLITS)}, not {self.split!r}")


@dataclass
class ReadStats:
    """Counters a reader fills in while it streams."""

    rows_read: int = 0
    replaced_utf8: int = 0
    columns: dict = field(default_factory=dict)  # role -> source column used (files only)
    skipped: list[str] = field(default_factory=list)  # first SKIPPED_NAMES_KEPT "name (why)" entries
    skipped_total: int = 0                             # every folder entry / tar member skipped

    def skip(self, name: str, why: str) -> None:
        """Record an entry that was not read (a FIFO, device, link...), so the report can name it."""
        self.skipped_total += 1
        if len(self.skipped) < SKIPPED_NAMES_KEPT:
            self.skipped.append(f"{name} ({why})")


@dataclass(frozen=True)
class Source:
    given: str       # what the user typed
    kind: str        # one of KINDS
    location: str    # resolved local path or the URL: goes into the lake's `source` column


# ----------------------------------------------------------------------------------- detection

def _file_kind(mode: int) -> str:
    """'FIFO', 'socket', 'character device'... for an ``st_mode``, to name what was refused or skipped."""
    kinds = ((stat.S_ISFIFO, "FIFO (named pipe)"), (stat.S_ISSOCK, "socket"), (stat.S_ISCHR, "character device"),
             (stat.S_ISBLK, "block device"), (stat.S_ISDIR, "folder"), (stat.S_ISLNK, "symbolic link"),
             (stat.S_ISREG, "regular file"))
    return next((name for test, name in kinds if test(mode)), "special file")


def _strip_compression(name: str) -> str:
    for suf in _COMPRESSION_SUFFIXES:
        if name.endswith(suf):
            return name[: -len(suf)]
    return name


def detect(source: str | os.PathLike) -> Source:
    """Work out what ``source`` is from its path / URL (see module doc). Checks it exists."""
    given = str(source)
    if is_url(given):
        path = given.split("?", 1)[0].split("#", 1)[0].lower()
        other = _FILE_KINDS.get(Path(_strip_compression(path)).suffix)
        if other and not path.endswith(_TAR_SUFFIXES):
            raise InputError(f"URLs are read as aclImdb tarballs only; download this {other} file first "
                             f"and ingest the local copy", path=given)
        return Source(given, "aclimdb-url", given)
    p = Path(given).expanduser()
    if not p.exists():
        raise InputError("no such file or folder" + (" (a broken symbolic link)" if p.is_symlink() else ""),
                         path=given)
    p = p.resolve()
    mode = p.stat().st_mode
    if not (stat.S_ISREG(mode) or stat.S_ISDIR(mode)):
        raise InputError(f"not a regular file or folder but a {_file_kind(mode)}; reviewflow reads files and "
                         f"folders only: save the data to a file first", path=str(p))
    if p.is_dir():
        return Source(given, "aclimdb-folder", str(p))
    name = p.name.lower()
    if name.endswith(_TAR_SUFFIXES):
        kind = "aclimdb-tarball"
    else:
        kind = _FILE_KINDS.get(Path(_strip_compression(name)).suffix)
        if kind is None:
            raise InputError("unrecognised source type; expected an aclImdb folder, an aclImdb .tar.gz "
                             "(path or http(s) URL), or a .csv/.tsv, .jsonl/.ndjson/.json or .parquet file",
                             path=str(p))
    if p.stat().st_size == 0:
        raise InputError("empty file: no rows", path=str(p))
    return Source(given, kind, str(p))


# ------------------------------------------------------------------------------ column helpers

def ensure_utf8(arr: pa.Array | pa.ChunkedArray) -> tuple[pa.Array, pa.Array | None]:
    """``arr`` as a valid UTF-8 string array, plus a boolean mask of rows that needed U+FFFD
    replacement (``None`` when none did). Vectorised validation; Python only for bad batches."""
    if isinstance(arr, pa.ChunkedArray):
        arr = arr.combine_chunks()
    if pa.types.is_dictionary(arr.type):
        arr = arr.dictionary_decode()
    t = arr.type
    if pa.types.is_string(t) or pa.types.is_large_string(t):
        try:
            arr.validate(full=True)
            return (arr if pa.types.is_string(t) else pc.cast(arr, pa.string())), None
        except pa.ArrowInvalid:
            arr = arr.view(pa.binary() if pa.types.is_string(t) else pa.large_binary())
    elif not (pa.types.is_binary(arr.type) or pa.types.is_large_binary(arr.type)):
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


def _as_text(arr: pa.Array, *, path, column, row_offset) -> tuple[pa.Array, pa.Array | None]:
    t = arr.type
    if isinstance(arr, pa.ChunkedArray):
        arr = arr.combine_chunks()
    if pa.types.is_null(t):
        return pa.nulls(len(arr), pa.string()), None
    if pa.types.is_dictionary(t):
        arr = arr.dictionary_decode()
        t = arr.type
    if not (pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_binary(t)
            or pa.types.is_large_binary(t)):
        raise InputError(f"text column must hold strings, found {t}", path=path, column=column)
    return ensure_utf8(arr)


def _as_ids(arr: pa.Array, *, path, column, row_offset) -> tuple[pa.Array, pa.Array | None]:
    t = arr.type
    if pa.types.is_dictionary(t):
        arr = arr.dictionary_decode()
        t = arr.type
    mask = None
    if pa.types.is_integer(t):
        ids = pc.cast(arr, pa.string())
    elif pa.types.is_null(t):
        ids = pc.cast(arr, pa.string())
    elif pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_binary(t) or pa.types.is_large_binary(t):
        ids, mask = ensure_utf8(arr)
    else:
        raise InputError(f"id column must hold strings or integers, found {t}", path=path, column=column)
    bad = pc.fill_null(pc.equal(pc.utf8_length(pc.utf8_trim_whitespace(ids)), 0), True)
    if pc.any(bad).as_py():
        i = _first(bad)
        raise InputError("empty review id (every row needs one; omit --id-col to use a content hash)",
                         path=path, row=row_offset + i + 1, column=column)
    return ids, mask


def _as_rating(arr: pa.Array, *, path, column, row_offset) -> pa.Array:
    arr = plain_array(arr)
    t = arr.type
    if pa.types.is_null(t):
        return pa.nulls(len(arr), pa.int8())
    if pa.types.is_binary(t) or pa.types.is_large_binary(t) or pa.types.is_string(t) or pa.types.is_large_string(t):
        s, _ = ensure_utf8(arr)
        s = pc.utf8_trim_whitespace(s)
        arr = pc.if_else(pc.equal(pc.utf8_length(s), 0), pa.scalar(None, pa.string()), s)
        try:
            arr = pc.cast(arr, pa.float64())
        except pa.ArrowInvalid:
            for i, v in enumerate(arr.to_pylist()):
                try:
                    None if v is None else float(v)
                except ValueError:
                    raise InputError(f"rating {v!r} is not a number", path=path, row=row_offset + i + 1,
                                     column=column) from None
            raise
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
        if not (pa.types.is_string(arr.type) or pa.types.is_large_string(arr.type)
                or pa.types.is_binary(arr.type) or pa.types.is_large_binary(arr.type)
                or pa.types.is_dictionary(arr.type)):
            raise InputError(f"split column must hold strings, found {arr.type}", path=path, column=column)
        s, _ = ensure_utf8(arr)
        s = pc.utf8_lower(pc.utf8_trim_whitespace(s))
        s = pc.if_else(pc.equal(pc.utf8_length(s), 0), pa.scalar(None, pa.string()), s)
    if default:
        s = pc.fill_null(s, default)
    bad = pc.and_(pc.is_valid(s), pc.invert(pc.fill_null(pc.is_in(s, value_set=pa.array(SPLITS)), False)))
    if pc.any(bad).as_py():
        i = _first(bad)
        raise InputError(f"unknown split {s[i].as_py()!r}; expected one of {', '.join(SPLITS)} or empty",
                         path=path, row=row_offset + i + 1, column=column)
    return s


def resolve_columns(names: list[str], cols: ColumnMap, path: str) -> dict[str, str | None]:
    """role -> column name in the file (None = not present / use the default)."""
    listing = ", ".join(repr(n) for n in names) or "(none)"

    def need(name, flag):
        if name not in names:
            raise InputError(f"column {name!r} not found; the file has columns: {listing} (choose with {flag})",
                             path=path, column=name)
        return name

    text = need(cols.text_col or "text", "--text-col")
    label = need(cols.label_col, "--label-col") if cols.label_col else ("label" if "label" in names else None)
    if cols.id_col:
        rid = need(cols.id_col, "--id-col")
    else:
        rid = "review_id" if "review_id" in names else ("id" if "id" in names else None)
    rating = need(cols.rating_col, "--rating-col") if cols.rating_col else ("rating" if "rating" in names else None)
    split = need(cols.split_col, "--split-col") if cols.split_col else ("split" if "split" in names else None)
    return {"text": text, "label": label, "id": rid, "rating": rating, "split": split}


def normalize_columns(raw: dict[str, pa.Array | None], n: int, roles: dict[str, str | None], cols: ColumnMap,
                      stats: ReadStats, *, path: str, row_offset: int) -> pa.RecordBatch:
    """Raw mapped columns of one batch -> a ``SOURCE_SCHEMA`` batch (validating every value)."""
    text, tmask = _as_text(raw["text"], path=path, column=roles["text"], row_offset=row_offset)
    if raw.get("id") is not None:
        ids, imask = _as_ids(raw["id"], path=path, column=roles["id"], row_offset=row_offset)
    else:
        ids, imask = content_ids(text), None
        ids = pc.fill_null(ids, "sha1_none")  # null text: dropped by ingest anyway
    masks = [m for m in (tmask, imask) if m is not None]
    if masks:
        m = masks[0] if len(masks) == 1 else pc.or_(masks[0], masks[1])
        stats.replaced_utf8 += int(pc.sum(m).as_py() or 0)
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
    return pa.RecordBatch.from_arrays([ids, text, label, rating, split], schema=SOURCE_SCHEMA)


# --------------------------------------------------------------------------------------- files

def _csv_header(path: str, delimiter: str) -> list[str]:
    with pa.input_stream(path, compression="detect") as fh:
        head = fh.read(1 << 20)
    if not head.strip():
        raise InputError("empty file: no rows", path=path)
    text = head.decode("utf-8", errors="replace").lstrip("\ufeff")
    try:
        return next(csv.reader(io.StringIO(text), delimiter=delimiter))
    except (StopIteration, csv.Error) as exc:
        raise InputError(f"cannot read the CSV header: {exc}", path=path) from None


def _csv_records(path: str, delimiter: str) -> Iterator[tuple[int, int, int]]:
    """(data row, line it starts on, number of fields) of each record after the header.

    Error path only (Python speed): Python's csv module, like pyarrow's reader here, lets a quoted
    field span lines and skips empty lines, so its counts match the rows pyarrow numbered."""
    csv.field_size_limit(MAX_CSV_BLOCK)
    with pa.input_stream(path, compression="detect") as raw, \
            io.TextIOWrapper(raw, encoding="utf-8", errors="replace", newline="") as fh:
        reader = csv.reader(fh, delimiter=delimiter)
        data_row, start = -1, 1  # the header is record 0
        try:
            for record in reader:
                if record:
                    data_row += 1
                    if data_row:
                        yield data_row, start, len(record)
                start = reader.line_num + 1
        except csv.Error:
            return


def _csv_line_of(path: str, delimiter: str, data_row: int) -> int | None:
    return next((line for row, line, _ in _csv_records(path, delimiter) if row == data_row), None)


def _csv_value_error(exc: InputError, path: str, delimiter: str) -> InputError:
    """A bad value's error, re-pointed at 'data row N at line M' (see module doc)."""
    if exc.row is None:
        return exc
    return LocatedError(_bare_message(exc), path=path, data_row=exc.row,
                        line=_csv_line_of(path, delimiter, exc.row), column=exc.column)


def _csv_parse_error(msg: str, path: str, delimiter: str, ncols: int, rows_before: int, block: int) -> InputError:
    """pyarrow could not split the text into rows: find the first record with the wrong number of fields
    after the rows already read; else (an unclosed quote, a row bigger than a block) say what is likely."""
    for row, line, nfields in _csv_records(path, delimiter):
        if row > rows_before and nfields != ncols:
            return LocatedError(f"cannot parse CSV: expected {ncols} fields like the header, found {nfields} "
                                f"(a stray delimiter or quote?)", path=path, data_row=row, line=line)
    if "straddl" in msg:
        msg = f"a row is larger than {block >> 20} MiB or a quote is never closed ({msg})"
    return InputError(f"cannot parse CSV after data row {rows_before}: {msg}", path=path)


def read_csv(src: Source, cols: ColumnMap, stats: ReadStats, progress: bool = True) -> Iterator[pa.RecordBatch]:
    path = src.location
    delimiter = "\t" if src.kind == "tsv" else ","
    names = _csv_header(path, delimiter)
    roles = resolve_columns(names, cols, path)
    stats.columns = {k: v for k, v in roles.items() if v}
    include = list(dict.fromkeys(v for v in roles.values() if v))
    size = os.path.getsize(path)
    if path.lower().endswith(_COMPRESSION_SUFFIXES):
        size = 64 << 20  # decompressed size unknown: room for big rows (a block must hold a whole row)
    block = int(min(max(size + 1024, 1 << 20), MAX_CSV_BLOCK))
    try:
        reader = pacsv.open_csv(
            pa.input_stream(path, compression="detect"),
            read_options=pacsv.ReadOptions(block_size=block),
            parse_options=pacsv.ParseOptions(delimiter=delimiter, newlines_in_values=True),
            convert_options=pacsv.ConvertOptions(include_columns=include,
                                                 column_types={c: pa.binary() for c in include},
                                                 strings_can_be_null=False),
        )
    except pa.ArrowInvalid as exc:
        raise _csv_parse_error(str(exc), path, delimiter, len(names), 0, block) from None
    with tqdm(desc=Path(path).name, unit=" rows", disable=not progress, leave=False) as bar:
        while True:
            try:
                batch = reader.read_next_batch()
            except StopIteration:
                break
            except pa.ArrowInvalid as exc:
                raise _csv_parse_error(str(exc), path, delimiter, len(names), stats.rows_read, block) from None
            if batch.num_rows:
                try:
                    out = _normalize_batch(batch, roles, cols, stats, path, bar)
                except InputError as exc:
                    raise _csv_value_error(exc, path, delimiter) from None
                yield out
    if stats.rows_read == 0:
        raise InputError("no rows (the file has a header but no data)", path=path)


def _normalize_batch(batch: pa.RecordBatch, roles: dict, cols: ColumnMap, stats: ReadStats, path: str,
                     bar) -> pa.RecordBatch:
    """One non-empty source batch -> SOURCE_SCHEMA rows; advances the row count and the progress bar."""
    n = batch.num_rows
    raw = {role: (batch.column(name) if name else None) for role, name in roles.items()}
    out = normalize_columns(raw, n, roles, cols, stats, path=path, row_offset=stats.rows_read)
    stats.rows_read += n
    bar.update(n)
    return out


def read_parquet(src: Source, cols: ColumnMap, stats: ReadStats, progress: bool = True,
                 batch_size: int = 8192) -> Iterator[pa.RecordBatch]:
    path = src.location
    try:
        pf = pq.ParquetFile(path)
    except (pa.ArrowInvalid, OSError) as exc:
        raise InputError(f"not a readable Parquet file: {exc}", path=path) from None
    names = pf.schema_arrow.names
    roles = resolve_columns(names, cols, path)
    stats.columns = {k: v for k, v in roles.items() if v}
    include = list(dict.fromkeys(v for v in roles.values() if v))
    if pf.metadata.num_rows == 0:
        raise InputError("no rows (the Parquet file is empty)", path=path)
    with tqdm(total=pf.metadata.num_rows, desc=Path(path).name, unit=" rows", disable=not progress,
              leave=False) as bar:
        try:
            for batch in pf.iter_batches(batch_size=batch_size, columns=include):
                if batch.num_rows:
                    yield _normalize_batch(batch, roles, cols, stats, path, bar)
        except (pa.ArrowInvalid, OSError) as exc:
            raise InputError(f"cannot read Parquet near row {stats.rows_read + 1}: {exc}", path=path) from None


def _json_line_chunks(path: str, stats: ReadStats) -> Iterator[tuple[list[bytes], list[int]]]:
    """Non-blank lines in ~JSON_CHUNK_BYTES groups, invalid UTF-8 already replaced (and counted), with
    the physical line number (from 1, blank lines counted) of each."""
    with pa.input_stream(path, compression="detect") as fh:
        rest = b""
        first = True
        lines_before = 0  # physical lines in the chunks already yielded
        while True:
            block = fh.read(JSON_CHUNK_BYTES)
            data = rest + block
            if not block:
                cut = len(data)
            else:
                cut = data.rfind(b"\n") + 1
                if cut == 0:  # one line longer than a chunk: keep reading
                    rest = data
                    continue
            chunk, rest = data[:cut], data[cut:]
            if first:
                stripped = chunk.lstrip(b"\xef\xbb\xbf \t\r\n")
                if stripped.startswith(b"["):
                    raise InputError("this file holds a JSON array; reviewflow reads JSON lines (one object per "
                                     "line). Convert it with: jq -c '.[]' in.json > out.jsonl", path=path)
                chunk = chunk.lstrip(b"\xef\xbb\xbf")
                first = False
            numbered = [(n, ln) for n, ln in enumerate(chunk.split(b"\n"), lines_before + 1) if ln.strip()]
            lines_before += chunk.count(b"\n")
            lines = [ln for _, ln in numbered]
            try:
                chunk.decode("utf-8")
            except UnicodeDecodeError:
                fixed = []
                for ln in lines:
                    try:
                        ln.decode("utf-8")
                    except UnicodeDecodeError:
                        ln = ln.decode("utf-8", errors="replace").encode("utf-8")
                        stats.replaced_utf8 += 1
                    fixed.append(ln)
                lines = fixed
            if lines:
                yield lines, [n for n, _ in numbered]
            if not block:
                break


def _json_python(lines: list[bytes], line_numbers: list[int], roles_wanted: list[str], *,
                 path: str) -> dict[str, pa.Array]:
    """Slow path for a chunk pyarrow.json refuses (mixed types, bad syntax): find the bad line or
    build the columns by hand."""
    cols: dict[str, list] = {c: [] for c in roles_wanted}
    for ln, line in zip(lines, line_numbers):
        try:
            obj = json.loads(ln)
        except json.JSONDecodeError as exc:
            raise LocatedError(f"invalid JSON: {exc.msg.lower()} at character {exc.pos + 1} of the line",
                               path=path, line=line) from None
        if not isinstance(obj, dict):
            raise LocatedError(f"each line must be a JSON object, found {type(obj).__name__}", path=path,
                               line=line)
        for c in roles_wanted:
            v = obj.get(c)
            if isinstance(v, bool):
                v = "true" if v else "false"
            elif isinstance(v, float) and v.is_integer():
                v = str(int(v))
            elif isinstance(v, (int, float)):
                v = str(v)
            elif v is not None and not isinstance(v, str):
                raise LocatedError(f"expected a string or number, found {type(v).__name__}", path=path,
                                   line=line, column=c)
            cols[c].append(v)
    return {c: pa.array(v, pa.string()) for c, v in cols.items()}


def _json_keys(lines: list[bytes], limit: int = 1000) -> list[str]:
    keys: dict[str, None] = {}
    for ln in lines[:limit]:
        try:
            obj = json.loads(ln)
        except json.JSONDecodeError:
            continue
        if isinstance(obj, dict):
            keys.update(dict.fromkeys(obj))
    return list(keys)


def read_jsonl(src: Source, cols: ColumnMap, stats: ReadStats, progress: bool = True) -> Iterator[pa.RecordBatch]:
    path = src.location
    roles = None
    # text is always a string (never let inference turn "2020-01-01" into a timestamp)
    text_schema = pa.schema([(cols.text_col or "text", pa.string())])
    with tqdm(desc=Path(path).name, unit=" rows", disable=not progress, leave=False) as bar:
        for lines, line_numbers in _json_line_chunks(path, stats):
            data = b"\n".join(lines) + b"\n"
            try:
                table = pajson.read_json(io.BytesIO(data),
                                         read_options=pajson.ReadOptions(block_size=len(data) + 1),
                                         parse_options=pajson.ParseOptions(newlines_in_values=False,
                                                                           explicit_schema=text_schema))
                names = table.column_names
                columns = {c: table.column(c).combine_chunks() for c in names}
            except pa.ArrowInvalid:
                table = None
            if table is None or table.num_rows != len(lines):
                wanted = _json_keys(lines) if roles is None else [v for v in roles.values() if v]
                columns = _json_python(lines, line_numbers, wanted, path=path)
                names = list(columns)
            elif roles is None and columns[text_schema.names[0]].null_count == len(lines):
                # explicit_schema adds the text column even when no line has it: check the real keys
                keys = _json_keys(lines)
                names = [c for c in names if c in keys or c != text_schema.names[0]]
            if roles is None:
                roles = resolve_columns(names, cols, path)
                stats.columns = {k: v for k, v in roles.items() if v}
            n = len(lines)
            raw = {}
            for role, name in roles.items():
                if name is None:
                    raw[role] = None
                elif name in columns:
                    arr = columns[name]
                    if pa.types.is_struct(arr.type) or pa.types.is_list(arr.type):
                        raise InputError(f"expected a string or number, found {arr.type}", path=path, column=name)
                    raw[role] = arr
                else:  # key absent from every line of this chunk
                    raw[role] = pa.nulls(n, pa.string())
            try:
                out = normalize_columns(raw, n, roles, cols, stats, path=path, row_offset=stats.rows_read)
            except InputError as exc:
                if exc.row is None:
                    raise
                raise LocatedError(_bare_message(exc), path=path, line=line_numbers[exc.row - stats.rows_read - 1],
                                   column=exc.column) from None
            yield out
            stats.rows_read += n
            bar.update(n)
    if stats.rows_read == 0:
        raise InputError("no rows (the file holds no JSON lines)", path=path)


# ------------------------------------------------------------------------------------- aclImdb

class _AclBatcher:
    """Collects aclImdb reviews and emits SOURCE_SCHEMA batches."""

    def __init__(self, stats: ReadStats):
        self.stats = stats
        self._reset()

    def _reset(self):
        self.ids, self.raw, self.labels, self.ratings, self.splits = [], [], [], [], []
        self.nbytes = 0

    def add(self, split: str, cls: str, num: str, rating: str, data: bytes, where: str) -> pa.RecordBatch | None:
        r = int(rating)
        if cls == "unsup":
            self.ids.append(f"unsup_{int(num)}")
            self.labels.append(None)
            self.splits.append("unsup")
            self.ratings.append(r or None)
        else:
            self.ids.append(f"{split}_{cls}_{int(num)}")
            self.labels.append(1 if cls == "pos" else 0)
            self.splits.append(split)
            self.ratings.append(r)
        if r > 127:
            raise InputError(f"rating {r} in the file name is out of range", path=where)
        self.raw.append(data)
        self.nbytes += len(data)
        if len(self.raw) >= BATCH_ROWS or self.nbytes >= BATCH_BYTES:
            return self.flush()
        return None

    def flush(self) -> pa.RecordBatch | None:
        if not self.raw:
            return None
        text, mask = ensure_utf8(pa.array(self.raw, pa.binary()))
        if mask is not None:
            self.stats.replaced_utf8 += int(pc.sum(mask).as_py() or 0)
        batch = pa.RecordBatch.from_arrays(
            [pa.array(self.ids, pa.string()), text, pa.array(self.labels, pa.int8()),
             pa.array(self.ratings, pa.int8()), pa.array(self.splits, pa.string())], schema=SOURCE_SCHEMA)
        self.stats.rows_read += batch.num_rows
        self._reset()
        return batch


def _acl_base(root: Path) -> Path:
    for cand in (root / "aclImdb", root):
        if (cand / "train").is_dir() or (cand / "test").is_dir():
            return cand
    raise InputError("not an aclImdb folder: expected train/ or test/ (optionally under aclImdb/) with "
                     "pos/, neg/ or unsup/ folders of <id>_<rating>.txt files", path=str(root))


def _refuse_link(link: Path, root: Path) -> InputError:
    return InputError(f"symbolic link {link.relative_to(root)} -> {os.readlink(link)} leads out of the folder; "
                      f"links out of an ingested folder are never followed. Nothing was ingested: replace the "
                      f"link with a copy of what it points to", path=str(root))


def _within(path: Path, root: Path) -> Path:
    """``path`` with every link resolved, if that stays inside ``root``; else the refusal names the
    first link on the way (the folder itself, or an entry in it)."""
    real = path.resolve()
    if real == root or real.is_relative_to(root):
        return real
    link = next((q for q in reversed([path, *path.parents]) if q.is_relative_to(root) and q.is_symlink()), path)
    raise _refuse_link(link, root)


def _acl_review_files(root: Path, base: Path, stats: ReadStats) -> list[tuple]:
    """(split, class, id, id text, rating text, path to open, name to show) of every review file,
    refusing links out of ``root`` and skipping (with a report) entries that are not regular files."""
    files = []
    for split in ("train", "test"):
        for cls in ("pos", "neg", "unsup"):
            d = base / split / cls
            if not d.is_dir():
                continue
            _within(d, root)
            for entry in os.scandir(d):
                shown = str(Path(entry.path).relative_to(root))
                real = _within(Path(entry.path), root) if entry.is_symlink() else Path(entry.path)  # d: checked
                try:
                    mode = os.stat(real).st_mode
                except FileNotFoundError:
                    stats.skip(shown, "broken symbolic link")
                    continue
                if not stat.S_ISREG(mode):
                    stats.skip(shown, _file_kind(mode))
                elif m := _ACL_FILE_RE.match(entry.name):
                    files.append((split, cls, int(m.group(1)), m.group(1), m.group(2), real, shown))
    return files


def _read_regular(path: Path) -> bytes | None:
    """The bytes of ``path`` if it is (still) a regular file; ``None`` if it turned into something else
    since it was listed. Opened non-blocking and without following a link, so a FIFO cannot hang us."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW)
    with os.fdopen(fd, "rb") as fh:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return None
        return fh.read()


def read_aclimdb_folder(src: Source, stats: ReadStats, progress: bool = True) -> Iterator[pa.RecordBatch]:
    root = Path(src.location)
    base = _acl_base(root)
    files = _acl_review_files(root, base, stats)
    if not files:
        raise InputError("no aclImdb reviews found (expected train|test/pos|neg|unsup/<id>_<rating>.txt)",
                         path=str(base))
    files.sort(key=lambda f: (f[0], f[1], f[2]))
    batcher = _AclBatcher(stats)
    for split, cls, _, num, rating, real, shown in tqdm(files, desc=base.name, unit=" files", disable=not progress,
                                                        leave=False):
        try:
            data = _read_regular(real)
        except OSError as exc:
            raise InputError(f"cannot read review file {shown}: {exc.strerror}", path=str(root)) from None
        if data is None:
            stats.skip(shown, "changed into a special file while being read")
            continue
        if (b := batcher.add(split, cls, num, rating, data, str(real))) is not None:
            yield b
    if (b := batcher.flush()) is not None:
        yield b


def _unsafe_name(name: str) -> bool:
    n = name.replace("\\", "/")
    return n.startswith("/") or bool(re.match(r"^[A-Za-z]:", n)) or ".." in n.split("/")


class _Prefixed(io.RawIOBase):
    """``head`` bytes (already read to sniff the format) followed by the rest of ``raw``."""

    def __init__(self, head: bytes, raw: BinaryIO):
        self._head, self._raw = head, raw

    def readable(self) -> bool:
        return True

    def readinto(self, b) -> int:
        if self._head:
            n = min(len(b), len(self._head))
            b[:n], self._head = self._head[:n], self._head[n:]
            return n
        data = self._raw.read(len(b))
        b[: len(data)] = data
        return len(data)


class _TailKeeper(io.RawIOBase):
    """Passes reads through and remembers the last 1 KiB (a complete tar ends in two zero blocks)."""

    def __init__(self, raw: BinaryIO):
        self._raw, self.tail = raw, b""

    def readable(self) -> bool:
        return True

    def readinto(self, b) -> int:
        data = self._raw.read(len(b))
        b[: len(data)] = data
        if data:
            self.tail = (self.tail + data)[-1024:]
        return len(data)

    def drain(self) -> None:
        while self.read(1 << 20):
            pass


def _decompressed(fileobj: BinaryIO) -> BinaryIO:
    """gzip / bz2 / xz / plain by magic bytes. The stdlib readers raise EOFError on a truncated
    stream (tarfile's own stream mode silently stops at a member boundary)."""
    head = fileobj.read(6)
    raw = io.BufferedReader(_Prefixed(head, fileobj), buffer_size=1 << 20)
    if head.startswith(b"\x1f\x8b"):
        return gzip.GzipFile(fileobj=raw, mode="rb")
    if head.startswith(b"BZh"):
        return bz2.BZ2File(raw, mode="rb")
    if head.startswith(b"\xfd7zXZ\x00"):
        return lzma.LZMAFile(raw, mode="rb")
    return raw


def _member_kind(member: tarfile.TarInfo) -> str:
    if member.issym() or member.islnk():
        return f"{'symbolic' if member.issym() else 'hard'} link to {member.linkname}"
    kinds = ((member.ischr, "character device"), (member.isblk, "block device"), (member.isfifo, "FIFO"))
    return next((name for test, name in kinds if test()), "special member")


def read_aclimdb_tar(fileobj: BinaryIO, where: str, stats: ReadStats) -> Iterator[pa.RecordBatch]:
    """Stream an aclImdb tarball (gzip, bz2, xz or plain) from ``fileobj``; ``where`` names it in errors.

    Members with an absolute path or a ``..`` component (or links pointing at one) reject the whole
    tarball. Members that are not regular files or folders (links, devices, FIFOs) are never
    extracted, and are reported by name in ``stats.skipped``. Other regular files (README,
    imdb.vocab, *.feat, urls_*.txt) are not reviews and are passed over. A tarball that ends
    early (cut-off compressed stream, or no end-of-archive blocks) is an error, even when the cut
    falls between two members.
    """
    batcher = _AclBatcher(stats)
    found = 0
    try:
        stream = _TailKeeper(_decompressed(fileobj))
        with tarfile.open(fileobj=stream, mode="r|") as tf:
            for member in tf:
                if _unsafe_name(member.name) or ((member.issym() or member.islnk()) and _unsafe_name(member.linkname)):
                    target = f" -> {member.linkname}" if member.issym() or member.islnk() else ""
                    raise InputError(f"unsafe tarball member {member.name!r}{target}: absolute paths and '..' are "
                                     f"not allowed; nothing was ingested", path=where)
                if not member.isfile():
                    if not member.isdir():
                        stats.skip(member.name, _member_kind(member))
                    continue
                m = _ACL_RE.match(member.name)
                if not m:
                    continue
                fh = tf.extractfile(member)
                data = fh.read() if fh is not None else b""
                if len(data) != member.size:
                    raise EOFError(f"member {member.name!r} cut short")
                found += 1
                if (b := batcher.add(m.group(1), m.group(2), m.group(3), m.group(4), data,
                                     f"{where}:{member.name}")) is not None:
                    yield b
        stream.drain()
        if len(stream.tail) < 1024 or stream.tail.strip(b"\x00"):
            raise EOFError("no end-of-archive marker: the tarball is truncated")
    except (tarfile.TarError, EOFError, zlib.error, lzma.LZMAError, OSError) as exc:
        raise InputError(f"not a valid, complete tar archive ({type(exc).__name__}: {exc})", path=where) from None
    if not found:
        raise InputError("no aclImdb reviews in this tarball (expected [aclImdb/]train|test/pos|neg|unsup/"
                         "<id>_<rating>.txt members)", path=where)
    if (b := batcher.flush()) is not None:
        yield b


# ---------------------------------------------------------------------------------- dispatcher

def read_source(src: Source, cols: ColumnMap | None = None, stats: ReadStats | None = None, *,
                progress: bool = True) -> Iterator[pa.RecordBatch]:
    """Stream ``src`` as SOURCE_SCHEMA record batches (see module doc). Raises ``InputError``."""
    cols = cols or ColumnMap()
    stats = stats if stats is not None else ReadStats()
    if src.kind in ("csv", "tsv"):
        yield from read_csv(src, cols, stats, progress)
    elif src.kind == "jsonl":
        yield from read_jsonl(src, cols, stats, progress)
    elif src.kind == "parquet":
        yield from read_parquet(src, cols, stats, progress)
    elif src.kind == "aclimdb-folder":
        yield from read_aclimdb_folder(src, stats, progress)
    elif src.kind == "aclimdb-tarball":
        with open_local(src.location, progress=progress) as fh:
            yield from read_aclimdb_tar(fh, src.location, stats)
    elif src.kind == "aclimdb-url":
        with open_url(src.location, progress=progress) as fh:
            yield from read_aclimdb_tar(fh, src.location, stats)
    else:  # pragma: no cover - detect() only returns KINDS
        raise ValueError(src.kind)
