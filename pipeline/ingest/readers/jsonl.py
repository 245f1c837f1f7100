"""JSON lines (``.jsonl``/``.ndjson``/``.json``), parsed by pyarrow.json on chunks of about 16 MiB of lines.

A chunk pyarrow refuses (mixed types in one key, bad syntax) is parsed again line by line with the
``json`` module, which finds the bad line or builds the columns by hand. Errors name the physical
**line** of the file (1 = first line, blank lines counted): what an editor or ``sed -n 8p`` shows.
The file is opened with ``detect.open_stream`` (``pipeline.core.userfiles``: no link followed, regular files
only).
"""

from __future__ import annotations

import io
import json
from typing import Iterator

import pyarrow as pa
import pyarrow.json as pajson

from pipeline.core.errors import InputError
from pipeline.ingest.columns import ColumnMap, resolve_columns
from pipeline.ingest.detect import Source, open_stream
from pipeline.ingest.readers.base import LocatedError, ReadStats, bare_message, normalize_batch, row_bar

JSON_CHUNK_BYTES = 16 << 20  # JSON lines are parsed in chunks of about this many bytes


def _repair_utf8(lines: list[bytes], stats: ReadStats) -> list[bytes]:
    """``lines`` with invalid UTF-8 replaced by U+FFFD, each repaired line counted in ``stats``."""
    fixed = []
    for ln in lines:
        try:
            ln.decode("utf-8")
        except UnicodeDecodeError:
            ln = ln.decode("utf-8", errors="replace").encode("utf-8")
            stats.replaced_utf8 += 1
        fixed.append(ln)
    return fixed


def _refuse_json_array(chunk: bytes, path: str) -> None:
    if chunk.lstrip(b"\xef\xbb\xbf \t\r\n").startswith(b"["):
        raise InputError("this file holds a JSON array; reviewflow reads JSON lines (one object per "
                         "line). Convert it with: jq -c '.[]' in.json > out.jsonl", path=path)


def _line_chunks(path: str, within: str | None, stats: ReadStats) -> Iterator[tuple[list[bytes], list[int]]]:
    """Non-blank lines in ~JSON_CHUNK_BYTES groups, invalid UTF-8 already replaced (and counted), with
    the physical line number (from 1, blank lines counted) of each."""
    with open_stream(path, within) as fh:
        rest = b""
        first = True
        lines_before = 0  # physical lines in the chunks already yielded
        while True:
            block = fh.read(JSON_CHUNK_BYTES)
            data = rest + block
            cut = data.rfind(b"\n") + 1 if block else len(data)
            if block and cut == 0:  # one line longer than a chunk: keep reading
                rest = data
                continue
            chunk, rest = data[:cut], data[cut:]
            if first:
                _refuse_json_array(chunk, path)
                chunk = chunk.lstrip(b"\xef\xbb\xbf")
                first = False
            numbered = [(n, ln) for n, ln in enumerate(chunk.split(b"\n"), lines_before + 1) if ln.strip()]
            lines_before += chunk.count(b"\n")
            lines = [ln for _, ln in numbered]
            try:
                chunk.decode("utf-8")
            except UnicodeDecodeError:
                lines = _repair_utf8(lines, stats)
            if lines:
                yield lines, [n for n, _ in numbered]
            if not block:
                break


def _as_text_cell(v, *, path: str, line: int, column: str) -> str | None:
    """One JSON value as the string pyarrow would have read (numbers and booleans spelled out)."""
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, float) and v.is_integer():
        return str(int(v))
    if isinstance(v, (int, float)):
        return str(v)
    if v is not None and not isinstance(v, str):
        raise LocatedError(f"expected a string or number, found {type(v).__name__}", path=path, line=line,
                           column=column)
    return v


def _parse_by_hand(lines: list[bytes], line_numbers: list[int], wanted: list[str], *,
                   path: str) -> dict[str, pa.Array]:
    """Slow path for a chunk pyarrow.json refuses (mixed types, bad syntax): find the bad line or
    build the columns by hand."""
    cols: dict[str, list] = {c: [] for c in wanted}
    for ln, line in zip(lines, line_numbers):
        try:
            obj = json.loads(ln)
        except json.JSONDecodeError as exc:
            raise LocatedError(f"invalid JSON: {exc.msg.lower()} at character {exc.pos + 1} of the line",
                               path=path, line=line) from None
        if not isinstance(obj, dict):
            raise LocatedError(f"each line must be a JSON object, found {type(obj).__name__}", path=path,
                               line=line)
        for c in wanted:
            cols[c].append(_as_text_cell(obj.get(c), path=path, line=line, column=c))
    return {c: pa.array(v, pa.string()) for c, v in cols.items()}


def _keys(lines: list[bytes], limit: int = 1000) -> list[str]:
    """The keys of the first ``limit`` lines' objects, in order of appearance (bad lines passed over)."""
    keys: dict[str, None] = {}
    for ln in lines[:limit]:
        try:
            obj = json.loads(ln)
        except json.JSONDecodeError:
            continue
        if isinstance(obj, dict):
            keys.update(dict.fromkeys(obj))
    return list(keys)


def _parse_chunk(lines: list[bytes], line_numbers: list[int], text_schema: pa.Schema, roles: dict | None, *,
                 path: str) -> tuple[dict[str, pa.Array], list[str]]:
    """One chunk's columns (name -> array) and the column names the lines really have."""
    data = b"\n".join(lines) + b"\n"
    try:
        table = pajson.read_json(io.BytesIO(data), read_options=pajson.ReadOptions(block_size=len(data) + 1),
                                 parse_options=pajson.ParseOptions(newlines_in_values=False,
                                                                   explicit_schema=text_schema))
    except pa.ArrowInvalid:
        table = None
    if table is None or table.num_rows != len(lines):
        wanted = _keys(lines) if roles is None else [v for v in roles.values() if v]
        columns = _parse_by_hand(lines, line_numbers, wanted, path=path)
        return columns, list(columns)
    columns = {c: table.column(c).combine_chunks() for c in table.column_names}
    names = table.column_names
    text = text_schema.names[0]
    if roles is None and columns[text].null_count == len(lines):
        # explicit_schema adds the text column even when no line has it: check the real keys
        keys = _keys(lines)
        names = [c for c in names if c in keys or c != text]
    return columns, names


def _mapped(columns: dict[str, pa.Array], roles: dict, n: int, path: str) -> dict[str, pa.Array | None]:
    """role -> the chunk's array for it (all nulls when no line of the chunk has the key)."""
    raw = {}
    for role, name in roles.items():
        if name is None:
            raw[role] = None
        elif name in columns:
            arr = columns[name]
            if pa.types.is_struct(arr.type) or pa.types.is_list(arr.type):
                raise InputError(f"expected a string or number, found {arr.type}", path=path, column=name)
            raw[role] = arr
        else:
            raw[role] = pa.nulls(n, pa.string())
    return raw


def read_jsonl(src: Source, cols: ColumnMap, stats: ReadStats, progress: bool = True) -> Iterator[pa.RecordBatch]:
    path = src.location
    roles = None
    # text is always a string (never let inference turn "2020-01-01" into a timestamp)
    text_schema = pa.schema([(cols.text_col or "text", pa.string())])
    with row_bar(path, progress) as bar:
        for lines, line_numbers in _line_chunks(path, src.within, stats):
            columns, names = _parse_chunk(lines, line_numbers, text_schema, roles, path=path)
            if roles is None:
                roles = resolve_columns(names, cols, path)
                stats.columns = {k: v for k, v in roles.items() if v}
            rows_before = stats.rows_read
            try:
                out = normalize_batch(_mapped(columns, roles, len(lines), path), len(lines), roles, cols, stats,
                                      path)
            except InputError as exc:
                if exc.row is None:
                    raise
                raise LocatedError(bare_message(exc), path=path, line=line_numbers[exc.row - rows_before - 1],
                                   column=exc.column) from None
            bar.update(len(lines))
            yield out
    if stats.rows_read == 0:
        raise InputError("no rows (the file holds no JSON lines)", path=path)
