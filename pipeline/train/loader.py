"""Read prepared shards and stream training batches (optionally length-bucketed and trimmed).

Every shard is range-checked as it loads (one vectorised min/max per array, ~10 ms for 22.5k x 400 ids):
shapes and row counts as the manifest says, token ids within the vocabulary, lengths within
``max_len``, labels in {-1, 0, 1}. A bad file is an ``IntegrityError`` naming it, never an IndexError
deep in the model. (The SHA-256 of the bytes is checked by ``pipeline.prepare.job.verify_prep``.)"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
import pyarrow.parquet as pq

from pipeline.core.errors import NotFoundError
from pipeline.prepare.manifest import read_manifest
from pipeline.prepare.text import trim_padding
from pipeline.prepare.shards import ChecksumError, shard_paths, verify_shards


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
    prep_dir = Path(prep_dir)
    manifest = read_manifest(prep_dir)
    if split not in manifest["splits"]:
        raise NotFoundError(f"split {split!r} not in {prep_dir} (have: {', '.join(manifest['splits'])})")
    if verify:
        verify_shards(prep_dir, manifest, split)
    max_len, vocab_size = int(manifest["params"]["max_len"]), int(manifest["vocab_size"])
    ids, lengths, labels, rids = [], [], [], []
    for shard in manifest["splits"][split]["shards"]:
        arrays = _load_shard(prep_dir, shard["stem"], int(shard["rows"]), max_len, vocab_size, mmap)
        for out, array in zip((ids, lengths, labels), arrays[:3]):
            out.append(array)
        rids.extend(arrays[3])
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


def _load_shard(prep_dir: Path, stem: str, rows: int, max_len: int, vocab_size: int, mmap: bool):
    """(ids, lengths, labels, review ids) of one shard, each checked; ``ChecksumError`` names the bad file."""
    paths = shard_paths(prep_dir, stem)
    ids = _read(paths["ids.npy"], lambda p: np.load(p, mmap_mode="r" if mmap else None, allow_pickle=False))
    lengths = _read(paths["lengths.npy"], lambda p: np.load(p, allow_pickle=False))
    labels = _read(paths["labels.npy"], lambda p: np.load(p, allow_pickle=False))
    rids = _read(paths["review_ids.parquet"], lambda p: pq.read_table(p).column("review_id").to_pylist())
    _check(paths["ids.npy"], ids, (rows, max_len), 0, vocab_size - 1, "token ids")
    _check(paths["lengths.npy"], lengths, (rows,), 0, max_len, "lengths")
    _check(paths["labels.npy"], labels, (rows,), -1, 1, "labels")
    if len(rids) != rows:
        raise ChecksumError(f"{paths['review_ids.parquet']} holds {len(rids)} review ids, the manifest says {rows} "
                            "rows; delete the prep dir and re-run prepare")
    return ids, lengths, labels, rids


def _read(path: Path, read):
    try:
        return read(path)
    except Exception as exc:  # noqa: BLE001 - missing, truncated, not npy/parquet: all mean a damaged shard
        raise ChecksumError(f"shard file {path} cannot be read ({type(exc).__name__}: {str(exc)[:160]}); delete the "
                            "prep dir and re-run prepare") from None


def _check(path: Path, array: np.ndarray, shape: tuple, low: int, high: int, what: str) -> None:
    if array.shape != shape or array.dtype.kind not in "iu":
        raise ChecksumError(f"{path} holds {array.dtype} {list(array.shape)}, the manifest says int {list(shape)}; "
                            "delete the prep dir and re-run prepare")
    if array.size and (int(array.min()) < low or int(array.max()) > high):
        raise ChecksumError(f"{path} has {what} outside [{low}, {high}] (min {int(array.min())}, max "
                            f"{int(array.max())}); the shard does not fit its vocabulary/manifest: delete the prep "
                            "dir and re-run prepare")


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


def rank_batch_order(lengths: np.ndarray, batch_size: int, rank: int, world: int, *, shuffle: bool = False,
                     seed: int = 0, bucket: bool = True) -> list[np.ndarray]:
    """The distributed sampler: rank ``rank``'s share of :func:`batch_order` for a run of ``world`` processes.

    Every rank computes the same bucketed, shuffled batch list (same ``seed``), so bucketing is kept whole;
    the list is padded by repeating its first batches until it divides by ``world`` (as torch's
    ``DistributedSampler`` pads rows), then rank r takes batches r, r + world, ... Each rank thus gets an
    equal number of steps (DDP all-reduces the gradients at every step: a rank with fewer would hang the
    others), and the shares are disjoint but for the padding repeats."""
    if not 0 <= rank < world:
        raise ValueError(f"rank {rank} is not in [0, {world})")
    batches = batch_order(lengths, batch_size, shuffle=shuffle, seed=seed, bucket=bucket)
    if not batches:
        return []
    padded = batches + [batches[i % len(batches)] for i in range(-len(batches) % world)]
    return padded[rank::world]


def steps_per_rank(rows: int, batch_size: int, world: int = 1) -> int:
    """Optimizer steps of one epoch on each rank (:func:`rank_batch_order`); ``world=1``: batches per epoch."""
    return math.ceil(math.ceil(rows / batch_size) / world)


def iter_batches(data: SplitData, batch_size: int, *, shuffle: bool = False, seed: int = 0,
                 bucket: bool = True, trim: bool = True, rank: int = 0, world: int = 1) -> Iterator[Batch]:
    """Yield ``Batch``es of torch tensors (ids int64). ``trim`` cuts padding to the batch's longest row:
    right padding keeps the first T columns, left padding the last T. ``world > 1``: only rank ``rank``'s
    share of the batches (:func:`rank_batch_order`)."""
    import torch   # deferred: reading shards (load_split) needs no torch, e.g. in benchmarks/prepare.py

    if world > 1:
        order = rank_batch_order(data.lengths, batch_size, rank, world, shuffle=shuffle, seed=seed, bucket=bucket)
    else:
        order = batch_order(data.lengths, batch_size, shuffle=shuffle, seed=seed, bucket=bucket)
    for idx in order:
        sidx = np.sort(idx) if isinstance(data.ids, np.memmap) and not bucket else idx
        ids = np.asarray(data.ids[sidx])
        lengths = data.lengths[sidx]
        if trim:
            ids = trim_padding(ids, max(int(lengths.max()) if len(lengths) else 1, 1), data.pad_side)
        yield Batch(ids=torch.from_numpy(ids.astype(np.int64)),
                    lengths=torch.from_numpy(lengths.astype(np.int64)),
                    labels=torch.from_numpy(data.labels[sidx].astype(np.float32)),
                    index=np.asarray(sidx))
