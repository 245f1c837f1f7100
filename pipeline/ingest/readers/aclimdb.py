"""The IMDb "aclImdb" layout, as a folder or as a tarball (local or streamed off a URL).

Reviews are ``[aclImdb/]{train,test}/{pos,neg}/<id>_<rating>.txt`` and ``train/unsup/<id>_<rating>.txt``.
Review ids follow the ``../shared/data/imdb`` convention: ``{split}_{pos|neg}_{id}`` and ``unsup_{id}``
(split ``unsup``) for ``train/unsup``; the label comes from the folder, the rating from the file name
(``0`` in ``unsup`` means unknown -> null).

Folder: no link is ever followed out of the folder (one that leads out refuses the whole folder; links
inside it are followed: an aclImdb tree is the user's own copy, and the documented layout allows them).
Entries that are not regular files (FIFOs, sockets, devices, sub-folders, broken links) are skipped, never
opened, and reported by name in ``ReadStats.skipped``. Each review file is opened by its resolved path with
``pipeline.core.userfiles.open_user_file(within=<the folder>)``: a link or special file swapped in after
the listing is refused there, never followed or read.

Tarball: read in tarfile stream mode over the stdlib gzip/bz2/xz reader, which notices a cut-off file;
nothing is unpacked (the tarball file itself is opened with ``open_user_file``, see ``readers/__init__``).
Members that are not regular files (links, devices, FIFOs) are skipped and reported.
"""

from __future__ import annotations

import bz2
import gzip
import io
import lzma
import os
import re
import stat
import tarfile
import zlib
from pathlib import Path
from typing import BinaryIO, Iterator

import pyarrow as pa
import pyarrow.compute as pc
from tqdm.auto import tqdm

from pipeline.core.errors import InputError
from pipeline.core.userfiles import UnsafeFile, open_user_file
from pipeline.ingest.columns import SOURCE_SCHEMA, ensure_utf8
from pipeline.ingest.detect import Source, file_kind
from pipeline.ingest.readers.base import ReadStats, bare_message

# aclImdb member/file: optional top folder (aclImdb/), then split/class/<id>_<rating>.txt
_ACL_RE = re.compile(r"^(?:[^/]+/)?(train|test)/(pos|neg|unsup)/(\d+)_(\d+)\.txt$")
_ACL_FILE_RE = re.compile(r"^(\d+)_(\d+)\.txt$")

BATCH_ROWS = 4096            # rows per batch
BATCH_BYTES = 32 << 20       # ... or this much text, whichever first


class _Batcher:
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
             pa.array(self.ratings, pa.int8()), pa.array(self.splits, pa.string()),
             pa.nulls(len(self.ids), pa.string())], schema=SOURCE_SCHEMA)   # aclImdb names no movie: group null
        self.stats.rows_read += batch.num_rows
        self._reset()
        return batch


def _folder_base(root: Path) -> Path:
    for cand in (root / "aclImdb", root):
        if (cand / "train").is_dir() or (cand / "test").is_dir():
            return cand
    raise InputError("not an aclImdb folder: expected train/ or test/ (optionally under aclImdb/) with "
                     "pos/, neg/ or unsup/ folders of <id>_<rating>.txt files", path=str(root))


def _within(path: Path, root: Path) -> Path:
    """``path`` with every link resolved, if that stays inside ``root``; else the refusal names the
    first link on the way (the folder itself, or an entry in it)."""
    real = path.resolve()
    if real == root or real.is_relative_to(root):
        return real
    link = next((q for q in reversed([path, *path.parents]) if q.is_relative_to(root) and q.is_symlink()), path)
    raise InputError(f"symbolic link {link.relative_to(root)} -> {os.readlink(link)} leads out of the folder; "
                     f"links out of an ingested folder are never followed. Nothing was ingested: replace the "
                     f"link with a copy of what it points to", path=str(root))


def _review_files(root: Path, base: Path, stats: ReadStats) -> list[tuple]:
    """(split, class, id, id text, rating text, path to open, name to show) of every review file,
    refusing links out of ``root`` and skipping (with a report) entries that are not regular files."""
    files = []
    for split in ("train", "test"):
        for cls in ("pos", "neg", "unsup"):
            d = base / split / cls
            if not d.is_dir():
                continue
            d_real = _within(d, root)     # the folder with its links (inside) resolved: opened from root below
            for entry in os.scandir(d):
                shown = str(Path(entry.path).relative_to(root))
                real = _within(Path(entry.path), root) if entry.is_symlink() else d_real / entry.name
                try:
                    mode = os.stat(real).st_mode
                except FileNotFoundError:
                    stats.skip(shown, "broken symbolic link")
                    continue
                if not stat.S_ISREG(mode):
                    stats.skip(shown, file_kind(mode))
                elif m := _ACL_FILE_RE.match(entry.name):
                    files.append((split, cls, int(m.group(1)), m.group(1), m.group(2), real, shown))
    return files


def _read_regular(path: Path, root: Path) -> bytes | str:
    """The bytes of ``path`` (every link on the way already resolved, inside ``root``) if it is still a regular
    file reached from ``root`` without a link; else what it turned into since it was listed. Opened with
    ``open_user_file``: no link followed (one swapped in meanwhile is refused), a FIFO cannot hang us."""
    try:
        with open_user_file(path, within=root) as fh:
            return fh.readall()
    except UnsafeFile as exc:
        return exc.what


def read_aclimdb_folder(src: Source, stats: ReadStats, progress: bool = True) -> Iterator[pa.RecordBatch]:
    root = Path(src.location)
    base = _folder_base(root)
    files = _review_files(root, base, stats)
    if not files:
        raise InputError("no aclImdb reviews found (expected train|test/pos|neg|unsup/<id>_<rating>.txt)",
                         path=str(base))
    files.sort(key=lambda f: (f[0], f[1], f[2]))
    batcher = _Batcher(stats)
    for split, cls, _, num, rating, real, shown in tqdm(files, desc=base.name, unit=" files", disable=not progress,
                                                        leave=False):
        try:
            data = _read_regular(real, root)
        except InputError as exc:
            raise InputError(f"cannot read review file {shown}: {bare_message(exc)}", path=str(root)) from None
        except OSError as exc:
            raise InputError(f"cannot read review file {shown}: {exc.strerror}", path=str(root)) from None
        if isinstance(data, str):
            stats.skip(shown, f"changed into a {data} while being read")
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


def _check_member_name(member: tarfile.TarInfo, where: str) -> None:
    """Refuse the whole tarball for a member (or a link target) with an absolute path or a ``..``."""
    is_link = member.issym() or member.islnk()
    if _unsafe_name(member.name) or (is_link and _unsafe_name(member.linkname)):
        target = f" -> {member.linkname}" if is_link else ""
        raise InputError(f"unsafe tarball member {member.name!r}{target}: absolute paths and '..' are "
                         f"not allowed; nothing was ingested", path=where)


def _tar_reviews(fileobj: BinaryIO, where: str, stats: ReadStats) -> Iterator[tuple[re.Match, bytes]]:
    """(name match, bytes) of each review member, in tarball order; raises EOFError and friends on a
    tarball that ends early (see ``read_aclimdb_tar``)."""
    stream = _TailKeeper(_decompressed(fileobj))
    with tarfile.open(fileobj=stream, mode="r|") as tf:
        for member in tf:
            _check_member_name(member, where)
            if not member.isfile():
                if not member.isdir():
                    stats.skip(member.name, _member_kind(member))
                continue
            if m := _ACL_RE.match(member.name):
                fh = tf.extractfile(member)
                data = fh.read() if fh is not None else b""
                if len(data) != member.size:
                    raise EOFError(f"member {member.name!r} cut short")
                yield m, data
    stream.drain()
    if len(stream.tail) < 1024 or stream.tail.strip(b"\x00"):
        raise EOFError("no end-of-archive marker: the tarball is truncated")


def read_aclimdb_tar(fileobj: BinaryIO, where: str, stats: ReadStats) -> Iterator[pa.RecordBatch]:
    """Stream an aclImdb tarball (gzip, bz2, xz or plain) from ``fileobj``; ``where`` names it in errors.

    Members with an absolute path or a ``..`` component (or links pointing at one) reject the whole
    tarball. Members that are not regular files or folders (links, devices, FIFOs) are never
    extracted, and are reported by name in ``stats.skipped``. Other regular files (README,
    imdb.vocab, *.feat, urls_*.txt) are not reviews and are passed over. A tarball that ends
    early (cut-off compressed stream, or no end-of-archive blocks) is an error, even when the cut
    falls between two members.
    """
    batcher = _Batcher(stats)
    found = 0
    try:
        for m, data in _tar_reviews(fileobj, where, stats):
            found += 1
            if (b := batcher.add(m.group(1), m.group(2), m.group(3), m.group(4), data,
                                 f"{where}:{m.group(0)}")) is not None:
                yield b
    except (tarfile.TarError, EOFError, zlib.error, lzma.LZMAError, OSError) as exc:
        raise InputError(f"not a valid, complete tar archive ({type(exc).__name__}: {exc})", path=where) from None
    if not found:
        raise InputError("no aclImdb reviews in this tarball (expected [aclImdb/]train|test/pos|neg|unsup/"
                         "<id>_<rating>.txt members)", path=where)
    if (b := batcher.flush()) is not None:
        yield b
