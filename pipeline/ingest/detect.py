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

A source path given by the user may be a symbolic link (it is resolved), but it must end at a regular
file or a folder: a FIFO, socket or device is refused here, before it is opened (a FIFO would block).
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass
from pathlib import Path

from pipeline.core.errors import InputError
from pipeline.ingest.download import is_url

KINDS = ("aclimdb-folder", "aclimdb-tarball", "aclimdb-url", "csv", "tsv", "jsonl", "parquet")
TAR_SUFFIXES = (".tar.gz", ".tgz", ".tar", ".tar.bz2", ".tbz2", ".tar.xz", ".txz")
COMPRESSION_SUFFIXES = (".gz", ".bz2", ".zst", ".xz")
FILE_KINDS = {".csv": "csv", ".tsv": "tsv", ".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "jsonl",
              ".parquet": "parquet", ".pq": "parquet"}


@dataclass(frozen=True)
class Source:
    given: str       # what the user typed
    kind: str        # one of KINDS
    location: str    # resolved local path or the URL: goes into the lake's `source` column


def file_kind(mode: int) -> str:
    """'FIFO', 'socket', 'character device'... for an ``st_mode``, to name what was refused or skipped."""
    kinds = ((stat.S_ISFIFO, "FIFO (named pipe)"), (stat.S_ISSOCK, "socket"), (stat.S_ISCHR, "character device"),
             (stat.S_ISBLK, "block device"), (stat.S_ISDIR, "folder"), (stat.S_ISLNK, "symbolic link"),
             (stat.S_ISREG, "regular file"))
    return next((name for test, name in kinds if test(mode)), "special file")


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


def detect(source: str | os.PathLike) -> Source:
    """Work out what ``source`` is from its path / URL (see module doc). Checks it exists."""
    given = str(source)
    if is_url(given):
        return _detect_url(given)
    p = Path(given).expanduser()
    if not p.exists():
        raise InputError("no such file or folder" + (" (a broken symbolic link)" if p.is_symlink() else ""),
                         path=given)
    p = p.resolve()
    mode = p.stat().st_mode
    if not (stat.S_ISREG(mode) or stat.S_ISDIR(mode)):
        raise InputError(f"not a regular file or folder but a {file_kind(mode)}; reviewflow reads files and "
                         f"folders only: save the data to a file first", path=str(p))
    if p.is_dir():
        return Source(given, "aclimdb-folder", str(p))
    name = p.name.lower()
    kind = "aclimdb-tarball" if name.endswith(TAR_SUFFIXES) else _kind_by_suffix(name)
    if kind is None:
        raise InputError("unrecognised source type; expected an aclImdb folder, an aclImdb .tar.gz "
                         "(path or http(s) URL), or a .csv/.tsv, .jsonl/.ndjson/.json or .parquet file",
                         path=str(p))
    if p.stat().st_size == 0:
        raise InputError("empty file: no rows", path=str(p))
    return Source(given, kind, str(p))
