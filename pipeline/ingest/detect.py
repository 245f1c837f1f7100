"""What kind of review source a path or URL is (``detect``), checked before anything is opened.

Kinds:

=================  ==========================================================================
aclimdb-folder     ``<root>/[aclImdb/]{train,test}/{pos,neg}/<id>_<rating>.txt`` and
                   ``train/unsup/<id>_<rating>.txt``
aclimdb-tarball    the same tree inside ``aclImdb_v1.tar.gz`` (``.tar``, ``.tgz``, bz2 and xz too)
aclimdb-url        the tarball over http(s), streamed straight off the socket
csv / tsv          ``.csv`` / ``.tsv``, optionally ``.gz``/``.bz2``/``.zst``/``.xz`` compressed
jsonl              ``.jsonl``/``.ndjson``/``.json`` (JSON lines)
parquet            ``.parquet``/``.pq``
=================  ==========================================================================

A source path the user typed may be a symbolic link the user made: it is resolved once, here, and must end
at a regular file or a folder (a FIFO, socket or device is refused before it is opened: a FIFO would block).
A file found *inside* a folder or the inbox is detected with ``within=<that folder>``: nothing is resolved,
and a link, or anything but a regular file, is refused (:mod:`pipeline.core.userfiles`). Either way the
readers open ``Source.location`` with :func:`pipeline.core.userfiles.open_user_file` (no link followed,
regular files only) and hand pyarrow the open file, never the path (:func:`open_stream`).

:func:`sample_strings` reads the first rows of a CSV/TSV/JSON lines/Parquet file (the inbox uses them to
find the text column when nobody said which one it is: ``pipeline.ingest.columns.guess_text_column``).
"""

from __future__ import annotations

import io
import json
import os
import stat
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from pipeline.core.errors import InputError
from pipeline.core.userfiles import check_user_file, file_kind, open_user_file
from pipeline.ingest.download import is_url

KINDS = ("aclimdb-folder", "aclimdb-tarball", "aclimdb-url", "csv", "tsv", "jsonl", "parquet")
TAR_SUFFIXES = (".tar.gz", ".tgz", ".tar", ".tar.bz2", ".tbz2", ".tar.xz", ".txz")
COMPRESSION_SUFFIXES = (".gz", ".bz2", ".zst", ".xz")
SAMPLE_ROWS = 1000          # rows :func:`sample_strings` reads
FILE_KINDS = {".csv": "csv", ".tsv": "tsv", ".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "jsonl",
              ".parquet": "parquet", ".pq": "parquet"}


@dataclass(frozen=True)
class Source:
    given: str       # what the user typed
    kind: str        # one of KINDS
    location: str    # resolved local path or the URL: goes into the lake's `source` column
    within: str | None = None   # the folder a file was found in: opened from there, no link followed


def compression(path: str) -> str | None:
    """The codec pyarrow's ``compression="detect"`` picks from a path's suffix (it cannot see a file object's
    name, so :func:`open_stream` asks here)."""
    return next((codec for suf, codec in ((".bz2", "bz2"), (".gz", "gzip"), (".lz4", "lz4"), (".zst", "zstd"))
                 if path.endswith(suf)), None)


def open_stream(path: str, within: str | None = None) -> pa.NativeFile:
    """A pyarrow input stream over the user's file ``path``, opened safely (``open_user_file``) and
    decompressed by suffix as pyarrow would; closing it closes the file."""
    return pa.input_stream(open_user_file(path, within=within), compression=compression(path))


def _kind_by_suffix(name: str) -> str | None:
    """The file kind a (lower-case) name's suffix says, looking through a compression suffix."""
    for suf in COMPRESSION_SUFFIXES:
        if name.endswith(suf):
            name = name[: -len(suf)]
            break
    return FILE_KINDS.get(Path(name).suffix)


def _detect_url(url: str) -> Source:
    path = url.split("?", 1)[0].split("#", 1)[0].lower()
    other = _kind_by_suffix(path)
    if other and not path.endswith(TAR_SUFFIXES):
        raise InputError(f"URLs are read as aclImdb tarballs only; download this {other} file first "
                         f"and ingest the local copy", path=url)
    return Source(url, "aclimdb-url", url)


def _kind_of_file(name: str, where: str) -> str:
    """The kind a file's (lower-case) name says; an ``InputError`` for a name reviewflow does not read."""
    kind = "aclimdb-tarball" if name.endswith(TAR_SUFFIXES) else _kind_by_suffix(name)
    if kind is None:
        raise InputError("unrecognised source type; expected an aclImdb folder, an aclImdb .tar.gz "
                         "(path or http(s) URL), or a .csv/.tsv, .jsonl/.ndjson/.json or .parquet file",
                         path=where)
    return kind


def _detect_within(given: str, within: str | os.PathLike) -> Source:
    """A file found inside folder ``within``: never resolved, refused unless a regular file (no link)."""
    st = check_user_file(given, within=within)
    kind = _kind_of_file(Path(given).name.lower(), given)
    if st.st_size == 0:
        raise InputError("empty file: no rows", path=given)
    return Source(given, kind, os.path.abspath(given), os.path.abspath(within))


def detect(source: str | os.PathLike, *, within: str | os.PathLike | None = None) -> Source:
    """Work out what ``source`` is from its path / URL (see module doc). Checks it exists. ``within``: the
    folder it was found in (a folder of review files, the inbox): then links are refused, not resolved."""
    given = str(source)
    if within is not None:
        return _detect_within(given, within)
    if is_url(given):
        return _detect_url(given)
    p = Path(given).expanduser()
    if not p.exists():
        raise InputError("no such file or folder" + (" (a broken symbolic link)" if p.is_symlink() else ""),
                         path=given)
    p = p.resolve()    # the one place a link is followed: the path the user typed (module doc)
    mode = p.stat().st_mode
    if not (stat.S_ISREG(mode) or stat.S_ISDIR(mode)):
        raise InputError(f"not a regular file or folder but a {file_kind(mode)}; reviewflow reads files and "
                         f"folders only: save the data to a file first", path=str(p))
    if p.is_dir():
        return Source(given, "aclimdb-folder", str(p))
    kind = _kind_of_file(p.name.lower(), str(p))
    if p.stat().st_size == 0:
        raise InputError("empty file: no rows", path=str(p))
    return Source(given, kind, str(p))


def _string_columns(batch: pa.RecordBatch | pa.Table) -> dict[str, list[str]]:
    return {name: [v for v in col.to_pylist() if isinstance(v, str) and v.strip()]
            for name, col in zip(batch.schema.names, batch.columns)
            if pa.types.is_string(col.type) or pa.types.is_large_string(col.type)}


def _sample_csv(src: Source, delimiter: str, rows: int) -> tuple[list[str], dict[str, list[str]]]:
    fh = open_user_file(src.location, within=src.within)
    block = int(min(max(os.fstat(fh.fileno()).st_size + 1024, 1 << 20), 16 << 20))
    with pa.input_stream(fh, compression=compression(src.location)) as stream:
        reader = pacsv.open_csv(stream, read_options=pacsv.ReadOptions(block_size=block),
                                parse_options=pacsv.ParseOptions(delimiter=delimiter, newlines_in_values=True))
        try:
            batch = reader.read_next_batch().slice(0, rows)
        except StopIteration:
            return list(reader.schema.names), {}
    return list(batch.schema.names), _string_columns(batch)


def _sample_jsonl(src: Source, rows: int) -> tuple[list[str], dict[str, list[str]]]:
    names: dict[str, None] = {}
    strings: dict[str, list[str]] = {}
    with io.TextIOWrapper(open_stream(src.location, src.within), encoding="utf-8", errors="replace") as f:
        for line in f:
            if not line.strip():
                continue
            record = json.loads(line)
            if not isinstance(record, dict):
                continue
            for k, v in record.items():
                names.setdefault(k)
                if isinstance(v, str) and v.strip():
                    strings.setdefault(k, []).append(v)
            rows -= 1
            if rows <= 0:
                break
    return list(names), strings


def sample_strings(source: Source, rows: int = SAMPLE_ROWS) -> tuple[list[str], dict[str, list[str]]] | None:
    """(the column names, {column: its non-blank strings among the first ``rows`` rows}) of a CSV/TSV/JSON
    lines/Parquet source; None when the file cannot be read that far (the ingest that follows reports why,
    naming the row)."""
    try:
        if source.kind in ("csv", "tsv"):
            return _sample_csv(source, "\t" if source.kind == "tsv" else ",", rows)
        if source.kind == "jsonl":
            return _sample_jsonl(source, rows)
        if source.kind == "parquet":
            with open_user_file(source.location, within=source.within) as fh:
                pf = pq.ParquetFile(fh)
                batch = next(pf.iter_batches(batch_size=rows), None)
                return list(pf.schema_arrow.names), (_string_columns(batch) if batch is not None else {})
    except InputError:                                  # not a safe regular file (any more): never read
        raise
    except (pa.ArrowException, ValueError, OSError):   # json.JSONDecodeError is a ValueError
        return None
    return None
