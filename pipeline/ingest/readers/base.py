"""What every reader shares: the counters it fills in (``ReadStats``), the error that points at a line
(``LocatedError``), its progress bar, and the step from a raw batch to ``SOURCE_SCHEMA`` rows."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa
from tqdm.auto import tqdm

from pipeline.core.errors import InputError
from pipeline.ingest.columns import ColumnMap, normalize_columns

SKIPPED_NAMES_KEPT = 20      # ReadStats.skipped keeps this many names; skipped_total counts them all


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


class LocatedError(InputError):
    """An ``InputError`` that says *which kind* of place it names: a physical ``line`` of the file, or a
    ``data_row`` (header not counted) with the ``line`` it starts on when known."""

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


def bare_message(exc: InputError) -> str:
    """``exc``'s message without the ``(file ..., row ..., column ...)`` suffix ``InputError`` adds."""
    text = str(exc)
    return text.rsplit(" (file ", 1)[0] if exc.path is not None else text


def row_bar(path: str, progress: bool, total: int | None = None) -> tqdm:
    """The rows-read progress bar of a file reader (hidden when ``progress`` is off)."""
    return tqdm(total=total, desc=Path(path).name, unit=" rows", disable=not progress, leave=False)


def normalize_batch(raw: dict[str, pa.Array | None], n: int, roles: dict, cols: ColumnMap, stats: ReadStats,
                    path: str) -> pa.RecordBatch:
    """``n`` rows of raw mapped columns -> SOURCE_SCHEMA rows; counts them (and repaired UTF-8) in ``stats``.
    Row numbers in errors continue from the rows already read."""
    out, repaired = normalize_columns(raw, n, roles, cols, path=path, row_offset=stats.rows_read)
    stats.replaced_utf8 += repaired
    stats.rows_read += n
    return out
