"""Tensor shards on disk: ``<split>/shard-NNNNN.{ids,lengths,labels}.npy`` + ``.review_ids.parquet``.

``.npy`` (no pickle) so they can be memory-mapped; every file's sha256 goes into the manifest and
``verify_shards`` checks them.
"""

from __future__ import annotations

import hashlib
import io
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.core.errors import IntegrityError
from pipeline.core.storage import sha256_file

SHARD_FILES = ("ids.npy", "lengths.npy", "labels.npy", "review_ids.parquet")


class ChecksumError(IntegrityError):
    """A shard file does not match the checksum recorded in the manifest."""


def shard_stem(split: str, index: int) -> str:
    return f"{split}/shard-{index:05d}"


class ShardWriter:
    """Writes the ``total`` rows of one split as shards of ``shard_rows`` rows, streaming.

    Shard sizes are known up front, so each ``ids`` file gets its final ``.npy`` header at once and
    rows are appended as they come (hashed on the way: the big file is never read back), with no
    buffering or concatenation of the id matrix.
    """

    def __init__(self, root: Path, split: str, max_len: int, total: int, shard_rows: int = 50_000):
        if shard_rows < 1:
            raise ValueError("shard_rows must be >= 1")
        self.root, self.split, self.max_len = Path(root), split, max_len
        self.total, self.shard_rows = int(total), int(shard_rows)
        self.shards: list[dict] = []
        self.rows = 0
        self._fh = None
        self._size = self._fill = 0
        self._hash = None
        self._small: list[tuple] = []

    def _open(self) -> None:
        self._size = min(self.shard_rows, self.total - self.rows)
        base = self.root / shard_stem(self.split, len(self.shards))
        base.parent.mkdir(parents=True, exist_ok=True)
        self._fh = open(f"{base}.ids.npy", "wb")
        header = io.BytesIO()
        np.lib.format.write_array_header_1_0(
            header, {"descr": np.dtype(np.int32).str, "fortran_order": False, "shape": (self._size, self.max_len)})
        self._hash = hashlib.sha256(header.getvalue())
        self._fh.write(header.getvalue())
        self._fill = 0

    def add(self, ids: np.ndarray, lengths: np.ndarray, labels: np.ndarray, review_ids: pa.Array) -> None:
        n, pos = len(lengths), 0
        if self.rows + self._fill + n > self.total:
            raise ValueError(f"{self.split}: more rows than announced ({self.total})")
        if ids.shape[1:] != (self.max_len,):
            raise ValueError(f"ids must be [n, {self.max_len}], got {ids.shape}")
        while pos < n:
            if self._fh is None:
                self._open()
            take = min(n - pos, self._size - self._fill)
            block = memoryview(np.ascontiguousarray(ids[pos:pos + take], np.int32)).cast("B")
            self._fh.write(block)
            self._hash.update(block)
            self._small.append((lengths[pos:pos + take], labels[pos:pos + take], review_ids.slice(pos, take)))
            self._fill += take
            pos += take
            if self._fill == self._size:
                self._finish()

    def _finish(self) -> None:
        base = self.root / shard_stem(self.split, len(self.shards))
        self._fh.close()
        self._fh = None
        lengths = np.concatenate([s[0] for s in self._small]).astype(np.int32)
        labels = np.concatenate([s[1] for s in self._small]).astype(np.int8)
        rids = pa.concat_arrays([s[2] for s in self._small])
        self._small = []
        np.save(f"{base}.lengths.npy", lengths)
        np.save(f"{base}.labels.npy", labels)
        pq.write_table(pa.table({"review_id": rids}), f"{base}.review_ids.parquet", compression="zstd")
        files = {"ids.npy": {"sha256": self._hash.hexdigest()}}
        files.update({suffix: {"sha256": sha256_file(f"{base}.{suffix}")} for suffix in SHARD_FILES[1:]})
        self.shards.append({"stem": shard_stem(self.split, len(self.shards)), "rows": self._size, "files": files})
        self.rows += self._size
        self._fill = 0

    def close(self) -> list[dict]:
        if self._fh is not None or self.rows != self.total:
            raise ValueError(f"{self.split}: wrote {self.rows + self._fill} of {self.total} rows")
        return self.shards


def shard_paths(prep_dir: Path, stem: str) -> dict[str, Path]:
    return {suffix: Path(prep_dir) / f"{stem}.{suffix}" for suffix in SHARD_FILES}


def verify_shards(prep_dir: str | Path, manifest: dict, split: str | None = None) -> int:
    """Recompute every shard file's sha256; raise ChecksumError naming the first bad file."""
    checked = 0
    for name, info in manifest["splits"].items():
        if split is not None and name != split:
            continue
        for shard in info["shards"]:
            for suffix, path in shard_paths(Path(prep_dir), shard["stem"]).items():
                want = shard["files"][suffix]["sha256"]
                if not path.exists():
                    raise ChecksumError(f"shard file missing: {path} (prep dir is incomplete; re-run prepare)")
                got = sha256_file(path)
                if got != want:
                    raise ChecksumError(f"checksum mismatch for {path}: manifest {want[:12]}..., file {got[:12]}... "
                                        "(the shard was modified or corrupted; delete the prep dir and re-run prepare)")
                checked += 1
    return checked
