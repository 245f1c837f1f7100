"""CSV / TSV files, streamed by block with pyarrow.csv (``.gz``/``.bz2``/``.zst`` decompressed on the fly).

Every mapped column is read as raw bytes (no type inference: ``"2020-01-01"`` stays text) and then
coerced by :mod:`pipeline.ingest.columns`. Errors name the **data row** (1 = the first row after the
header) and the line it starts on (a quoted field may span lines).
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
from pipeline.ingest.detect import COMPRESSION_SUFFIXES, Source
from pipeline.ingest.readers.base import LocatedError, ReadStats, bare_message, normalize_batch, row_bar

MAX_CSV_BLOCK = 256 << 20    # one CSV row (one review) may be at most this big


def _header(path: str, delimiter: str) -> list[str]:
    with pa.input_stream(path, compression="detect") as fh:
        head = fh.read(1 << 20)
    if not head.strip():
        raise InputError("empty file: no rows", path=path)
    text = head.decode("utf-8", errors="replace").lstrip("\ufeff")
    try:
        return next(csv.reader(io.StringIO(text), delimiter=delimiter))
    except (StopIteration, csv.Error) as exc:
        raise InputError(f"cannot read the CSV header: {exc}", path=path) from None


def _records(path: str, delimiter: str) -> Iterator[tuple[int, int, int]]:
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


def _value_error(exc: InputError, path: str, delimiter: str) -> InputError:
    """A bad value's error, re-pointed at 'data row N at line M'."""
    if exc.row is None:
        return exc
    line = next((line for row, line, _ in _records(path, delimiter) if row == exc.row), None)
    return LocatedError(bare_message(exc), path=path, data_row=exc.row, line=line, column=exc.column)


def _parse_error(msg: str, path: str, delimiter: str, ncols: int, rows_before: int, block: int) -> InputError:
    """pyarrow could not split the text into rows: find the first record with the wrong number of fields
    after the rows already read; else (an unclosed quote, a row bigger than a block) say what is likely."""
    for row, line, nfields in _records(path, delimiter):
        if row > rows_before and nfields != ncols:
            return LocatedError(f"cannot parse CSV: expected {ncols} fields like the header, found {nfields} "
                                f"(a stray delimiter or quote?)", path=path, data_row=row, line=line)
    if "straddl" in msg:
        msg = f"a row is larger than {block >> 20} MiB or a quote is never closed ({msg})"
    return InputError(f"cannot parse CSV after data row {rows_before}: {msg}", path=path)


def _block_size(path: str) -> int:
    """A block must hold a whole row: the file's size (room for big rows when compressed), within limits."""
    size = os.path.getsize(path)
    if path.lower().endswith(COMPRESSION_SUFFIXES):
        size = 64 << 20  # decompressed size unknown
    return int(min(max(size + 1024, 1 << 20), MAX_CSV_BLOCK))


def read_csv(src: Source, cols: ColumnMap, stats: ReadStats, progress: bool = True) -> Iterator[pa.RecordBatch]:
    path = src.location
    delimiter = "\t" if src.kind == "tsv" else ","
    names = _header(path, delimiter)
    roles = resolve_columns(names, cols, path)
    stats.columns = {k: v for k, v in roles.items() if v}
    include = list(dict.fromkeys(v for v in roles.values() if v))
    block = _block_size(path)
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
        raise _parse_error(str(exc), path, delimiter, len(names), 0, block) from None
    with row_bar(path, progress) as bar:
        while True:
            try:
                batch = reader.read_next_batch()
            except StopIteration:
                break
            except pa.ArrowInvalid as exc:
                raise _parse_error(str(exc), path, delimiter, len(names), stats.rows_read, block) from None
            if batch.num_rows:
                raw = {role: (batch.column(name) if name else None) for role, name in roles.items()}
                try:
                    out = normalize_batch(raw, batch.num_rows, roles, cols, stats, path)
                except InputError as exc:
                    raise _value_error(exc, path, delimiter) from None
                bar.update(batch.num_rows)
                yield out
    if stats.rows_read == 0:
        raise InputError("no rows (the file has a header but no data)", path=path)
