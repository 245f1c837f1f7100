"""Read prepared shards and stream training batches (optionally length-bucketed and trimmed)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
import pyarrow.parquet as pq

from pipeline.errors import NotFoundError
from pipeline.shards import shard_paths, verify_shards


@dataclass
class SplitData:
    ids: np.ndarray          # int32 [N, max_len] (memory-mapped when the split is one shard)
    lengths: np.ndarray      # int32 [N]
    labels: np.ndarray       # int8 [N], -1 = unknown
    review_ids: list[str]
    pad_side: str

    def __len__(self) -> int:
        return len(self.lengths)

    @property
    def max_len(self) -> int:
        return int(self.ids.shape[1])


def load_split(prep_dir: str | Path, split: str, *, verify: bool = False, mmap: bool = True) -> SplitData:
    """Load one split (train/val/test/unsup). ``verify=True`` checks every file's sha256 first."""
    from pipeline.prepare import read_manifest

    prep_dir = Path(prep_dir)
    manifest = read_manifest(prep_dir)
    if split not in manifest["splits"]:
        raise NotFoundError(f"split {split!r} not in {prep_dir} (have: {', '.join(manifest['splits'])})")
    if verify:
        verify_shards(prep_dir, manifest, split)
    max_len = int(manifest["params"]["max_len"])
    ids, lengths, labels, rids = [], [], [], []
    for shard in manifest["splits"][split]["shards"]:
        p = shard_paths(prep_dir, shard["stem"])
        ids.append(np.load(p["ids.npy"], mmap_mode="r" if mmap else None))
        lengths.append(np.load(p["lengths.npy"]))
        labels.append(np.load(p["labels.npy"]))
        rids.extend(pq.read_table(p["review_ids.parquet"]).column("review_id").to_pylist())
    if not ids:
        ids_arr = np.zeros((0, max_len), np.int32)
    elif len(ids) == 1:
        ids_arr = ids[0]
    else:
        ids_arr = np.concatenate(ids)
    return SplitData(
        ids=ids_arr,
        lengths=np.concatenate(lengths) if lengths else np.zeros(0, np.int32),
        labels=np.concatenate(labels) if labels else np.zeros(0, np.int8),
        review_ids=rids,
        pad_side=manifest["params"]["pad_side"],
    )


@dataclass
class Batch:
    ids: "torch.Tensor"            # [B, T] int64  # noqa: F821
    lengths: "torch.Tensor"        # [B] int64     # noqa: F821
    labels: "torch.Tensor"         # [B] float32 (-1.0 = unknown)  # noqa: F821
    index: np.ndarray              # row numbers in the split


def batch_order(lengths: np.ndarray, batch_size: int, *, shuffle: bool = False, seed: int = 0,
                bucket: bool = True, window_batches: int = 50) -> list[np.ndarray]:
    """Row indices of each batch. Bucketing sorts by length within windows of ``window_batches``
    batches (so batches hold similar lengths and padding is small), then the batch order is shuffled."""
    if batch_size < 1:
        raise ValueError("batch_size must be >= 1")
    n = len(lengths)
    rng = np.random.default_rng(seed)
    order = rng.permutation(n) if shuffle else np.arange(n)
    if bucket:
        w = batch_size * window_batches
        parts = []
        for s in range(0, n, w):
            win = order[s:s + w]
            parts.append(win[np.argsort(lengths[win], kind="stable")])
        order = np.concatenate(parts) if parts else order
    batches = [order[s:s + batch_size] for s in range(0, n, batch_size)]
    if shuffle and bucket:
        batches = [batches[i] for i in rng.permutation(len(batches))]
    return batches


def iter_batches(data: SplitData, batch_size: int, *, shuffle: bool = False, seed: int = 0,
                 bucket: bool = True, trim: bool = True) -> Iterator[Batch]:
    """Yield ``Batch``es of torch tensors (ids int64). ``trim`` cuts padding to the batch's longest row:
    right padding keeps the first T columns, left padding the last T."""
    import torch

    for idx in batch_order(data.lengths, batch_size, shuffle=shuffle, seed=seed, bucket=bucket):
        sidx = np.sort(idx) if isinstance(data.ids, np.memmap) and not bucket else idx
        ids = np.asarray(data.ids[sidx])
        lengths = data.lengths[sidx]
        if trim:
            t = max(int(lengths.max()) if len(lengths) else 1, 1)
            ids = ids[:, :t] if data.pad_side == "right" else ids[:, ids.shape[1] - t:]
        yield Batch(ids=torch.from_numpy(ids.astype(np.int64)),
                    lengths=torch.from_numpy(lengths.astype(np.int64)),
                    labels=torch.from_numpy(data.labels[sidx].astype(np.float32)),
                    index=np.asarray(sidx))
