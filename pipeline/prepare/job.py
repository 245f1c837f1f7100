"""``prepare``: lake reviews -> normalised tokens -> vocabulary -> padded id tensors in shards.

Three streaming passes, none of which holds the text of the whole dataset:

0. ids, labels, splits (and groups with ``split_by="group"``) only, no text: the stratified seeded
   train/val assignment (``pipeline.prepare.split``: per review, or whole groups); test rows -> ``test``;
   ``unsup`` rows (and unlabelled train rows) -> ``unsup`` only with ``include_unsup``.
1. text, record batch by record batch on a small thread pool (the arrow/numpy kernels release the GIL,
   so both cores work): tokenize (``pipeline.prepare.text``), dictionary-encode each batch's tokens once, count
   the *train* rows' tokens (merged across batches by ``TokenCounter``), and keep only the batch-local
   token indices that survive truncation (spilled to scratch files when they outgrow memory).
2. per batch: map the batch dictionary (a few thousand distinct tokens) onto the vocabulary, gather,
   pad (numpy scatter) and route rows to their split's ``ShardWriter``.

Spill or re-tokenize? Measured on the 25k IMDb train reviews (CPU seconds, one thread): tokenize
0.78 + dictionary-encode 0.34 = 1.1 s would have to be paid again to re-tokenize for pass 2, while
pass 2 from the kept batch-local indices costs ~0.2 s (one vocabulary lookup of the small batch
dictionaries + a gather + padding); the indices cost one int32 per kept token (~22 MB for 25k at
max_len 512), kept in memory up to ``spill_budget`` and memory-mapped from scratch files beyond it.
Reviews with zero tokens after normalisation are dropped and counted in the manifest.

Steps an orchestrator can run as tasks, and ``prepare`` runs in order in this process: ``plan_prepare`` (prep
id or cache hit; pass 0; the lake cut into partitions, ``pipeline.prepare.partitions``), ``tokenize_partition``
per partition (pass 1: train token counts back, tokens spilled), ``finish_prepare`` (the vocabulary from the
merged counts; pass 2). Any number of partitions writes the same bytes: counts are sums and the vocabulary
order is total, pass 2 walks the batches in row order, and shard boundaries depend on row counts only.
Only ``created_at`` and ``timings_s`` in the manifest (and so its digest) differ between any two runs.

The whole prep dir is built under a temp name and renamed into place (``atomic_dir``), so a crash
never leaves a half-written prep. The prep id is content-addressed: if ``manifest.json`` exists for
it, ``prepare`` returns at once (``cached=True``) without reading any text.

Data a model cannot learn from is refused before any shard is written (``InputError``): a train split
with fewer than ``min_class_rows`` rows of either class (one class only, or a toy dataset), or a
validation split without both classes. The check also runs on a cache hit, from the manifest.

The manifest records every shard file's SHA-256 and its own (``manifest_sha256``);
``pipeline.prepare.manifest`` reads and verifies it, ``pipeline.prepare.preprocess`` is the same transform
online (for scoring).
"""

from __future__ import annotations

import datetime as dt
import functools
import hashlib
import json
import os
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as pads

from pipeline.core.config import Warehouse, validate_name
from pipeline.core.errors import InputError, IntegrityError
from pipeline.core.schema import LAKE_SCHEMA
from pipeline.core.storage import atomic_dir, remove_temp, sweep_dead, temp_prefix, write_json_atomic
from pipeline.ingest import lake
from pipeline.prepare.config import PrepareConfig
from pipeline.prepare.manifest import manifest_digest, read_manifest
from pipeline.prepare.partitions import (SKIP, TEST, TRAIN, UNSUP, VAL, Partition, PartitionTokens, Spill,
                                         check_cover, ordered_map, plan_partitions, tokenize_partition, with_assign)
from pipeline.prepare.shards import ShardWriter
from pipeline.prepare.split import grouped_val_mask, stratified_val_mask
from pipeline.prepare.text import pad_rows
from pipeline.prepare.vocab import Lookup, TokenCounter, build_vocab, merged_counts, vocab_bytes, vocab_sha256

CODE_VERSION = "prepare-1"          # bump when the output of prepare changes for the same inputs
SPLIT_NAMES = ("train", "val", "test", "unsup")
CLASSES = (0, 1)                    # the labels a training set needs (pipeline.ingest.labels: 0 negative, 1 positive)
TRUNCATE_RULE = {
    "head": "first max_len tokens",
    "tail": "last max_len tokens",
    "head+tail": "first max_len//3 tokens + last (max_len - max_len//3) tokens",
}

Progress = Callable[[str, int, int], None]


@dataclass
class PrepareResult:
    prep_id: str
    prep_dir: Path
    cached: bool
    counts: dict
    manifest: dict = field(default_factory=dict)
    seconds: float = 0.0

    def summary(self) -> dict:
        """Small JSON-able dict (for flows / CLI)."""
        m = self.manifest
        return {"prep_id": self.prep_id, "prep_dir": str(self.prep_dir), "cached": self.cached,
                "counts": self.counts, "label_counts": m.get("label_counts", {}),
                "vocab_size": m.get("vocab_size"), "dropped": m.get("dropped", {}),
                **({"groups": m["groups"]} if "groups" in m else {}),   # split_by="group" only
                "seconds": round(self.seconds, 3)}


# ----------------------------------------------------------------------------------------------- ids
def dataset_fingerprint(wh: Warehouse, dataset: str) -> dict:
    """What identifies the dataset's content cheaply: part-file names, sizes and mtimes."""
    files = lake.dataset_files(wh, dataset)
    parts = []
    for f in files:
        st = os.stat(f)
        parts.append({"name": Path(f).name, "size": st.st_size, "mtime_ns": st.st_mtime_ns})
    return {"dataset": dataset, "files": parts}


def compute_prep_id(dataset: str, fingerprint: dict, cfg: PrepareConfig) -> str:
    payload = json.dumps({"fingerprint": fingerprint, "params": cfg.identity(), "code": CODE_VERSION},
                         sort_keys=True).encode()
    return f"{dataset[:40]}-{hashlib.sha256(payload).hexdigest()[:12]}"


# ------------------------------------------------------------------------------------------ helpers
def _plot(prep_dir: Path, lengths: np.ndarray, max_len: int) -> None:
    from pipeline.core.plots import length_histogram     # deferred: matplotlib, only when a prep is built

    length_histogram(lengths, prep_dir / "length_hist.png", max_len)


def _percentiles(x: np.ndarray) -> dict:
    if len(x) == 0:
        return {}
    q = np.percentile(x, [50, 90, 95, 99])
    return {"min": int(x.min()), "p50": float(q[0]), "p90": float(q[1]), "p95": float(q[2]),
            "p99": float(q[3]), "max": int(x.max()), "mean": round(float(x.mean()), 2)}


def _label_counts(labels: np.ndarray) -> dict:
    vals, cnt = np.unique(labels, return_counts=True)
    return {str(int(v)): int(c) for v, c in zip(vals, cnt)}


@dataclass
class _Run:
    """What every step of one ``prepare`` call needs: the dataset, its config, the thread count, the progress
    callback, and the seconds each step took (for the manifest's ``timings_s``)."""
    dataset: str
    cfg: PrepareConfig
    workers: int
    report: Progress
    timings: dict[str, float] = field(default_factory=dict)

    def timed(self, name: str, step: Callable, *args):
        t = time.perf_counter()
        out = step(*args)
        self.timings[name] = time.perf_counter() - t
        return out


@dataclass
class _Rows:
    """Pass 0: every input row's id, label (-1 unknown) and destination split code (``SKIP``: nowhere)."""
    review_ids: pa.Array
    labels: np.ndarray
    assign: np.ndarray
    dropped: dict
    groups: dict | None = None    # split_by="group" only: the manifest's ``groups`` (see ``_group_stats``)

    @property
    def n(self) -> int:
        return len(self.labels)

    def split_labels(self, codes: np.ndarray) -> dict[str, dict]:
        """Label counts of the train and val rows under the split codes ``codes``."""
        return {name: _label_counts(self.labels[codes == code]) for code, name in ((TRAIN, "train"), (VAL, "val"))}


# ------------------------------------------------------------------------------------------ prepare
def prepare(wh: Warehouse, dataset: str, cfg: PrepareConfig = PrepareConfig(), progress: Progress | None = None,
            *, batch_rows: int = 4096, shard_rows: int = 50_000, workers: int | None = None,
            spill_budget: int = 128 << 20, partitions: int = 1) -> PrepareResult:
    """Prepare ``dataset`` into ``<wh>/shards/<prep_id>/`` (or return the cached prep), in this process.

    The three steps an orchestrator runs as tasks (``plan_prepare``, ``tokenize_partition`` per partition,
    ``finish_prepare``), one after the other; ``workers`` threads inside each pass. Any ``partitions`` gives
    the same bytes (the parallel path's guarantee, tested against this one)."""
    plan = plan_prepare(wh, dataset, cfg, partitions)
    if plan.cached is not None:
        return plan.cached
    workers = workers or min(2, os.cpu_count() or 1)
    report = progress or (lambda stage, done, total: None)
    done = [0]

    def tick(rows: int) -> None:
        done[0] += rows
        report("tokenize", done[0], plan.rows.n)

    try:
        t, results = time.perf_counter(), []
        for part in plan.partitions:       # the in-memory budget is shared by all partitions' spills
            left = max(0, spill_budget - sum(r.spill.used for r in results))
            results.append(tokenize_partition(part, cfg, plan.scratch, dataset=dataset, batch_rows=batch_rows,
                                              workers=workers, spill_budget=left, report=tick))
        return finish_prepare(plan, results, progress, shard_rows=shard_rows, workers=workers,
                              tokenize_s=time.perf_counter() - t)
    finally:
        discard_plan(plan)


@dataclass
class PrepPlan:
    """Step 1 of a prepare (:func:`plan_prepare`): the prep id and, unless the prep exists already
    (``cached``), every row's split code and the lake partitions to tokenize, with a scratch folder for
    their spilled tokens. A tokenize task needs only its ``Partition`` (small: files, row groups, split codes);
    the plan itself, with every row's id, goes to the finish step."""
    wh: Warehouse
    dataset: str
    cfg: PrepareConfig
    prep_id: str
    prep_dir: Path
    fingerprint: dict
    t_start: float                               # wall clock (time.time): the steps may run in other processes
    cached: PrepareResult | None = None
    rows: _Rows | None = None
    partitions: list[Partition] = field(default_factory=list)
    scratch: Path | None = None
    timings: dict[str, float] = field(default_factory=dict)
    planned_at: float = 0.0


def plan_prepare(wh: Warehouse, dataset: str, cfg: PrepareConfig, partitions: int = 1) -> PrepPlan:
    """Fingerprint the dataset; return the cached prep if it exists; else pass 0 (split codes, class checks,
    no text) and the cut of the lake into at most ``partitions`` partitions. Call :func:`discard_plan` when
    done (it removes the scratch folder)."""
    t_start = time.time()
    validate_name(dataset, "dataset name")
    fingerprint = dataset_fingerprint(wh, dataset)
    prep_id = compute_prep_id(dataset, fingerprint, cfg)
    plan = PrepPlan(wh, dataset, cfg, prep_id, wh.prep_dir(prep_id), fingerprint, t_start)
    if (plan.prep_dir / "manifest.json").exists():
        plan.cached = _cached(prep_id, plan.prep_dir, t_start, dataset, cfg)
        return plan
    wh.ensure()
    run = _Run(dataset, cfg, 1, lambda stage, done, total: None)
    # every pass reads exactly the fingerprinted part files (a concurrent ingest adds a file we ignore)
    files = [str(wh.dataset_dir(dataset) / f["name"]) for f in fingerprint["files"]]
    try:
        plan.rows = run.timed("assign", _assign_rows,
                              pads.dataset(files, schema=LAKE_SCHEMA, format="parquet"), run)
        parts = plan_partitions(files, partitions)
    except pa.ArrowInvalid as exc:     # a part file that is not Parquet (any more): arrow's message names it
        raise IntegrityError(f"lake dataset {dataset!r} cannot be read: {exc} Re-ingest the dataset "
                             "(`reviewflow ingest`)") from None
    if sum(p.rows for p in parts) != plan.rows.n:
        raise InputError(f"dataset {dataset!r} changed while being prepared")
    plan.partitions = with_assign(parts, plan.rows.assign)
    sweep_dead(wh.tmp, wh.shards)     # what killed prepares left behind
    plan.scratch = Path(tempfile.mkdtemp(prefix=temp_prefix(f"prepare-{prep_id}", wh.tmp), dir=wh.tmp))
    plan.timings, plan.planned_at = run.timings, time.time()
    return plan


def discard_plan(plan: PrepPlan) -> None:
    """Remove the plan's scratch folder (the partitions' spilled tokens); safe to call twice."""
    if plan.scratch is not None:
        remove_temp(plan.scratch)       # and our owner lock's hold on the scratch's folder


def finish_prepare(plan: PrepPlan, results: list[PartitionTokens], progress: Progress | None = None, *,
                   shard_rows: int = 50_000, workers: int | None = None,
                   tokenize_s: float | None = None) -> PrepareResult:
    """The last step: merge the partitions' train counts into the vocabulary, then encode every row (pass 2,
    in row order) into the prep dir, built under a temp name and renamed into place. ``tokenize_s``: how long
    the tokenize step took (default: the wall time since the plan was made)."""
    if plan.cached is not None:
        return plan.cached
    cfg = plan.cfg
    run = _Run(plan.dataset, cfg, workers or min(2, os.cpu_count() or 1),
               progress or (lambda stage, done, total: None), dict(plan.timings))
    run.timings["tokenize_count"] = tokenize_s if tokenize_s is not None else time.time() - plan.planned_at
    results = check_cover(results, plan.rows.n)
    tokens = _Tokens(np.concatenate([r.ntok for r in results]) if results else np.zeros(0, np.int64),
                     [s for r in results for s in r.starts])
    vocab = run.timed("vocab", lambda: _Vocabulary.build(merged_counts(r.counts for r in results), cfg))
    spill = Spill.joined(r.spill for r in results)
    route = _route(plan.rows, tokens, run)
    try:
        with atomic_dir(plan.prep_dir) as tmp:
            written = _write_prep(tmp, plan.rows, tokens, route, vocab, spill, shard_rows, run)
            manifest = _manifest(plan.prep_id, plan.fingerprint, plan.rows, tokens, route, vocab, written, run)
            write_json_atomic(tmp / "manifest.json", manifest)
    except OSError:
        if not (plan.prep_dir / "manifest.json").exists():
            raise
        # another prepare published this prep id first
        return _cached(plan.prep_id, plan.prep_dir, plan.t_start, plan.dataset, cfg)
    return PrepareResult(plan.prep_id, plan.prep_dir, False, manifest["counts"], manifest,
                         time.time() - plan.t_start)


def _val_mask(review_ids: pa.Array, meta: pa.Table, pool_idx: np.ndarray, labels: np.ndarray,
              cfg: PrepareConfig) -> np.ndarray:
    """Validation flags of the labelled train rows ``pool_idx``: per review, or whole groups."""
    ids = review_ids.take(pa.array(pool_idx))
    if cfg.split_by == "group":
        groups = meta.column("group_id").combine_chunks().take(pa.array(pool_idx))
        return grouped_val_mask(ids, labels, groups, cfg.val_fraction, cfg.seed)
    return stratified_val_mask(ids, labels, cfg.val_fraction, cfg.seed)


def _group_stats(groups: pa.ChunkedArray, assign: np.ndarray) -> dict:
    """How the grouped split came out: distinct groups in train and val (never one in both) and the train/val
    rows without a group (split per review)."""
    groups = groups.combine_chunks()
    out = {}
    for code, name in ((TRAIN, "train"), (VAL, "val")):
        side = groups.filter(pa.array(assign == code))
        out[f"{name}_groups"] = int(pc.count_distinct(side).as_py())
        out[f"{name}_rows_without_group"] = int(side.null_count)
    return out


def _assign_rows(source: pads.Dataset, run: _Run) -> _Rows:
    """Pass 0, from ids/labels/splits (and groups) only, no text: the stratified seeded train/val assignment,
    test rows -> test, unsup and unlabelled train rows -> unsup (with ``include_unsup``) or nowhere. Refuses
    a dataset a model cannot learn from before any text is read (empty reviews only lower the counts)."""
    cfg = run.cfg
    by_group = cfg.split_by == "group"
    meta = source.to_table(columns=["review_id", "label", "split"] + (["group_id"] if by_group else []))
    review_ids = meta.column("review_id").combine_chunks()
    labels = pc.fill_null(meta.column("label"), -1).to_numpy().astype(np.int8)
    split = pc.fill_null(meta.column("split"), "")
    is_test = pc.equal(split, "test").to_numpy(zero_copy_only=False)
    is_unsup = pc.equal(split, "unsup").to_numpy(zero_copy_only=False)
    other = ~is_test & ~is_unsup
    pool = other & (labels >= 0)
    assign = np.full(meta.num_rows, SKIP, np.int8)
    assign[is_test] = TEST
    if cfg.include_unsup:
        assign[is_unsup | (other & (labels < 0))] = UNSUP
    pool_idx = np.flatnonzero(pool)
    val = _val_mask(review_ids, meta, pool_idx, labels[pool_idx], cfg)
    assign[pool_idx] = np.where(val, VAL, TRAIN).astype(np.int8)
    dropped = {"unsup_excluded": int(0 if cfg.include_unsup else is_unsup.sum()),
               "unlabelled_excluded": int(0 if cfg.include_unsup else (other & (labels < 0)).sum())}
    rows = _Rows(review_ids, labels, assign, dropped,
                 _group_stats(meta.column("group_id"), assign) if by_group else None)
    check_class_counts(run.dataset, rows.split_labels(assign), cfg)
    return rows


@dataclass
class _Tokens:
    """Pass 1, all partitions: tokens per row before truncation, and the first row of every batch."""
    ntok: np.ndarray
    starts: list[int]


@dataclass
class _Vocabulary:
    """The vocabulary built from the train counts, its lookup, and how much of the train text it covers."""
    vocab: list[str]
    lookup: Lookup
    train_tokens: int
    covered: int
    distinct: int

    @classmethod
    def build(cls, counter: TokenCounter, cfg: PrepareConfig) -> "_Vocabulary":
        counts_table = counter.table()
        vocab = build_vocab(counts_table, cfg.min_freq, cfg.max_vocab or None)
        in_vocab = pc.is_in(counts_table["token"], value_set=pa.array(vocab[2:], pa.large_string()))
        covered = int(pc.sum(pc.if_else(in_vocab, counts_table["count"], 0)).as_py() or 0)
        return cls(vocab, Lookup(vocab), counter.total, covered, counts_table.num_rows)


def _route(rows: _Rows, tokens: _Tokens, run: _Run) -> np.ndarray:
    """Final split code per row: reviews with zero tokens after normalisation go nowhere (and are counted);
    the class check runs again on what is left."""
    empty = tokens.ntok == 0
    rows.dropped["empty_after_normalisation"] = int((empty & (rows.assign != SKIP)).sum())
    route = np.where(empty, SKIP, rows.assign).astype(np.int8)
    check_class_counts(run.dataset, rows.split_labels(route), run.cfg)
    return route


def _remapped_batches(spill: Spill, starts: list[int], n: int, lookup: Lookup, group: int = 16):
    """(first row, end row, batch dictionary -> vocabulary ids, kept batch-local indices) per batch.
    One vocabulary lookup per group of batch dictionaries (the vocab hash is built once per group, not per
    batch; memory holds one group)."""
    bounds = starts + [n]
    for g in range(0, len(starts), group):
        got = [spill.get(i) for i in range(g, min(g + group, len(starts)))]
        dicts = [d for d, _ in got]
        ids = lookup.ids(pa.concat_arrays(dicts)) if dicts else np.zeros(0, np.int32)
        for k, part in enumerate(np.split(ids, np.cumsum([len(d) for d in dicts])[:-1])):
            yield bounds[g + k], bounds[g + k + 1], part, got[k][1]


def _encode_batch(cfg: PrepareConfig, kept_all: np.ndarray, lo: int, hi: int, remap: np.ndarray,
                  local: np.ndarray):
    """Pass 2 for one batch: vocabulary ids, padded rows, and ``<unk>`` tokens per row."""
    kept = kept_all[lo:hi]
    flat = remap[local]
    ids = pad_rows(flat, kept, cfg.max_len, cfg.pad_side)
    unk_at = np.flatnonzero(flat == 1)
    row_unk = np.zeros(hi - lo, np.int64)
    if len(unk_at):
        ends = np.cumsum(kept)
        row_unk = np.bincount(np.searchsorted(ends, unk_at, "right"), minlength=hi - lo)
    return lo, hi, ids, row_unk


def _write_prep(tmp: Path, rows: _Rows, tokens: _Tokens, route: np.ndarray, vocab: _Vocabulary,
                spill: Spill, shard_rows: int, run: _Run) -> dict:
    """Pass 2 into the temp prep dir: shards per split, ``vocab.txt`` and the length histogram (drawn on
    a thread while pass 2 runs). -> the manifest's ``splits``."""
    cfg, t = run.cfg, time.perf_counter()
    kept_all = np.minimum(tokens.ntok, cfg.max_len)
    writers = {code: ShardWriter(tmp, name, cfg.max_len, int((route == code).sum()), shard_rows)
               for code, name in enumerate(SPLIT_NAMES)}
    plotter = ThreadPoolExecutor(1, thread_name_prefix="prepare-plot")
    plot = plotter.submit(_plot, tmp, tokens.ntok[route != SKIP], cfg.max_len)   # overlaps pass 2
    plotter.shutdown(wait=False)
    unk = np.zeros(len(SPLIT_NAMES), np.int64)
    toks = np.zeros(len(SPLIT_NAMES), np.int64)
    batches = _remapped_batches(spill, tokens.starts, rows.n, vocab.lookup)
    done = 0
    for lo, hi, ids, row_unk in ordered_map(functools.partial(_encode_batch, cfg, kept_all), batches, run.workers):
        r = route[lo:hi]
        for code, w in writers.items():
            m = r == code
            if m.all():                              # the common case: no copies
                k = kept_all[lo:hi]
                w.add(ids, k.astype(np.int32), rows.labels[lo:hi], rows.review_ids.slice(lo, hi - lo))
            elif m.any():
                k = kept_all[lo:hi][m]
                w.add(ids[m], k.astype(np.int32), rows.labels[lo:hi][m],
                      rows.review_ids.slice(lo, hi - lo).filter(pa.array(m)))
            else:
                continue
            unk[code] += int(row_unk[m].sum())
            toks[code] += int(k.sum())
        done += hi - lo
        run.report("encode", done, rows.n)
    splits = {}
    for code, name in enumerate(SPLIT_NAMES):
        in_split = route == code
        splits[name] = {"rows": int(in_split.sum()), "labels": _label_counts(rows.labels[in_split]),
                        "tokens": int(toks[code]), "unk_tokens": int(unk[code]),
                        "unk_rate": round(float(unk[code] / toks[code]), 6) if toks[code] else None,
                        "shards": writers[code].close()}
    run.timings["encode_write"] = time.perf_counter() - t
    run.timed("plot_wait", _finish, tmp, vocab.vocab, plot)
    return splits


def _finish(tmp: Path, vocab: list[str], plot) -> None:
    """Write ``vocab.txt`` and wait for the length histogram."""
    (tmp / "vocab.txt").write_bytes(vocab_bytes(vocab))
    plot.result()


def _manifest(prep_id: str, fingerprint: dict, rows: _Rows, tokens: _Tokens, route: np.ndarray,
              vocab: _Vocabulary, splits: dict, run: _Run) -> dict:
    """``manifest.json``: parameters, counts, lengths, vocabulary, shard checksums, and its own digest."""
    cfg = run.cfg
    written = route != SKIP
    ntok, kept_all = tokens.ntok[written], np.minimum(tokens.ntok, cfg.max_len)[written]
    manifest = {
        "prep_id": prep_id,
        "dataset": run.dataset,
        "code_version": CODE_VERSION,
        "created_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "params": cfg.identity(),
        "truncate_rule": TRUNCATE_RULE[cfg.truncate],
        "dataset_fingerprint": fingerprint,
        "vocab_size": len(vocab.vocab),
        "vocab_sha256": vocab_sha256(vocab.vocab),
        "vocab_file": "vocab.txt",
        "train_tokens": int(vocab.train_tokens),
        "train_distinct_tokens": int(vocab.distinct),
        "train_vocab_coverage": round(vocab.covered / vocab.train_tokens, 6) if vocab.train_tokens else None,
        "counts": {k: v["rows"] for k, v in splits.items()},
        "label_counts": {k: v["labels"] for k, v in splits.items()},
        "splits": splits,
        "dropped": rows.dropped,
        **({"groups": rows.groups} if rows.groups is not None else {}),
        "input_rows": int(rows.n),
        "lengths": {"tokens": _percentiles(ntok), "kept": _percentiles(kept_all),
                    "truncated_fraction": round(float((ntok > cfg.max_len).mean()), 6) if written.any() else 0.0},
        "unk_rate": {k: v["unk_rate"] for k, v in splits.items()},
        "timings_s": {k: round(v, 4) for k, v in run.timings.items()},
    }
    manifest["manifest_sha256"] = manifest_digest(manifest)
    return manifest


def _cached(prep_id: str, prep_dir: Path, t_start: float, dataset: str, cfg: PrepareConfig) -> PrepareResult:
    manifest = read_manifest(prep_dir)
    check_class_counts(dataset, {name: manifest["label_counts"].get(name, {}) for name in ("train", "val")}, cfg)
    return PrepareResult(prep_id, prep_dir, True, manifest["counts"], manifest, time.time() - t_start)


def check_class_counts(dataset: str, label_counts: dict[str, dict], cfg: PrepareConfig) -> None:
    """Refuse data a model cannot learn from (``InputError``): fewer than ``cfg.min_class_rows`` train rows
    of a class, or (when there is a validation split) a validation split without both classes.
    ``label_counts``: ``{"train": {"0": n, "1": n}, "val": {...}}`` as in the manifest."""
    train = {c: int(label_counts["train"].get(str(c), 0)) for c in CLASSES}
    if min(train.values()) < cfg.min_class_rows:
        raise InputError(
            f"dataset {dataset!r} cannot be trained on: its train split has {_counts_text(train)} rows per class, "
            f"and each class needs at least {cfg.min_class_rows} (min_class_rows); add labelled reviews of the "
            "missing class, or lower the minimum with --min-class-rows (train: --set min_class_rows=N)")
    val = {c: int(label_counts["val"].get(str(c), 0)) for c in CLASSES}
    if cfg.val_fraction > 0 and min(val.values()) == 0:
        raise InputError(
            f"dataset {dataset!r}: its validation split has {_counts_text(val)} rows per class and needs both "
            f"classes to pick and judge a model; raise --val-fraction (now {cfg.val_fraction}) or add reviews")


def _counts_text(counts: dict[int, int]) -> str:
    return ", ".join(f"class {c}: {n}" for c, n in counts.items())
