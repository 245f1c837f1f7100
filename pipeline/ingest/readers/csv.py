"""CSV / TSV files, streamed by block with pyarrow.csv (``.gz``/``.bz2``/``.zst`` decompressed on the fly).

Every mapped column is read as raw bytes (no type inference: ``"2020-01-01"`` stays text) and then
coerced by :mod:`pipeline.ingest.columns`. Errors name the **data row** (1 = the first row after the
header) and the line it starts on (a quoted field may span lines).

The file is opened with ``pipeline.core.userfiles.open_user_file`` (through ``detect.open_stream``): no link
followed, regular files only, and pyarrow reads the open file, never the path.
"""

from __future__ import annotations

import csv
import io
import os
from typing import Iterator

import pyarrow as pa
import pyarrow.csv as pacsv

from pipeline.core.errors import InputError
from pipeline.ingest.columns import ColumnMap, resolve_columns
from pipeline.core.userfiles import open_user_file
from pipeline.ingest.detect import COMPRESSION_SUFFIXES, Source, compression, open_stream
from pipeline.ingest.readers.base import LocatedError, ReadStats, bare_message, normalize_batch, row_bar

MAX_CSV_BLOCK = 256 << 20    # one CSV row (one review) may be at most this big


def _header(path: str, delimiter: str, within: str | None) -> list[str]:
    with open_stream(path, within) as fh:
        head = fh.read(1 << 20)
    if not head.strip():
        raise InputError("empty file: no rows", path=path)
    text = head.decode("utf-8", errors="replace").lstrip("\ufeff")
    try:
        return next(csv.reader(io.StringIO(text), delimiter=delimiter))
    except (StopIteration, csv.Error) as exc:
        raise InputError(f"cannot read the CSV header: {exc}", path=path) from None


def _records(path: str, delimiter: str, within: str | None) -> Iterator[tuple[int, int, int]]:
    """(data row, line it starts on, number of fields) of each record after the header.

    Error path only (Python speed): Python's csv module, like pyarrow's reader here, lets a quoted
    field span lines and skips empty lines, so its counts match the rows pyarrow numbered."""
    csv.field_size_limit(MAX_CSV_BLOCK)
    with open_stream(path, within) as raw, \
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


def _value_error(exc: InputError, path: str, delimiter: str, within: str | None) -> InputError:
    """A bad value's error, re-pointed at 'data row N at line M'."""
    if exc.row is None:
        return exc
    line = next((line for row, line, _ in _records(path, delimiter, within) if row == exc.row), None)
    return LocatedError(bare_message(exc), path=path, data_row=exc.row, line=line, column=exc.column)


def _parse_error(msg: str, path: str, delimiter: str, within: str | None, ncols: int, rows_before: int,
                 block: int) -> InputError:
    """pyarrow could not split the text into rows: find the first record with the wrong number of fields
    after the rows already read; else (an unclosed quote, a row bigger than a block) say what is likely."""
    for row, line, nfields in _records(path, delimiter, within):
        if row > rows_before and nfields != ncols:
            return LocatedError(f"cannot parse CSV: expected {ncols} fields like the header, found {nfields} "
                                f"(a stray delimiter or quote?)", path=path, data_row=row, line=line)
    if "straddl" in msg:
        msg = f"a row is larger than {block >> 20} MiB or a quote is never closed ({msg})"
    return InputError(f"cannot parse CSV after data row {rows_before}: {msg}", path=path)


def _block_size(path: str, size: int) -> int:
    """A block must hold a whole row: the file's size (room for big rows when compressed), within limits."""
    if path.lower().endswith(COMPRESSION_SUFFIXES):
        size = 64 << 20  # decompressed size unknown
    return int(min(max(size + 1024, 1 << 20), MAX_CSV_BLOCK))


def read_csv(src: Source, cols: ColumnMap, stats: ReadStats, progress: bool = True) -> Iterator[pa.RecordBatch]:
    path, within = src.location, src.within
    delimiter = "\t" if src.kind == "tsv" else ","
    names = _header(path, delimiter, within)
    roles = resolve_columns(names, cols, path)
    stats.columns = {k: v for k, v in roles.items() if v}
    include = list(dict.fromkeys(v for v in roles.values() if v))
    fh = open_user_file(path, within=within)
    block = _block_size(path, os.fstat(fh.fileno()).st_size)
    located = dict(path=path, delimiter=delimiter, within=within, ncols=len(names), block=block)
    with pa.input_stream(fh, compression=compression(path)) as stream:
        try:
            reader = pacsv.open_csv(
                stream,
                read_options=pacsv.ReadOptions(block_size=block),
                parse_options=pacsv.ParseOptions(delimiter=delimiter, newlines_in_values=True),
                convert_options=pacsv.ConvertOptions(include_columns=include,
                                                     column_types={c: pa.binary() for c in include},
                                                     strings_can_be_null=False),
            )
        except pa.ArrowInvalid as exc:
            raise _parse_error(str(exc), rows_before=0, **located) from None
        yield from _batches(reader, roles, cols, stats, progress, located)
    if stats.rows_read == 0:
        raise InputError("no rows (the file has a header but no data)", path=path)


def _batches(reader, roles: dict, cols: ColumnMap, stats: ReadStats, progress: bool,
             located: dict) -> Iterator[pa.RecordBatch]:
    """``reader``'s batches as SOURCE_SCHEMA rows; a parse or value error re-pointed at its row and line."""
    path = located["path"]
    with row_bar(path, progress) as bar:
        while True:
            try:
                batch = reader.read_next_batch()
            except StopIteration:
                break
            except pa.ArrowInvalid as exc:
                raise _parse_error(str(exc), rows_before=stats.rows_read, **located) from None
            if batch.num_rows:
                raw = {role: (batch.column(name) if name else None) for role, name in roles.items()}
                try:
                    out = normalize_batch(raw, batch.num_rows, roles, cols, stats, path)
                except InputError as exc:
                    raise _value_error(exc, path, located["delimiter"], located["within"]) from None
                bar.update(batch.num_rows)
                yield out
