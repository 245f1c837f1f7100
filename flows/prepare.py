"""Prefect flow: prepare a lake dataset into tensor shards (logic in :mod:`pipeline.prepare.job`).

Caching, two layers:

* the prep id is content-addressed (dataset part files + parameters + code version), and
  ``pipeline.prepare.job.prepare`` returns at once when ``<wh>/shards/<prep-id>/manifest.json`` exists;
* the task's Prefect cache policy is ``INPUTS + TASK_SOURCE`` (the inputs include the prep id, so
  the dataset fingerprint and every parameter). A cached Prefect result only says where the prep
  *was*: when that directory is gone the flow runs the task with ``refresh_cache=True``, which
  rebuilds it and overwrites the cache record.

Parallel (``workers`` >= 2): three kinds of tasks on the flow's task runner (``ThreadPoolTaskRunner`` by
default; pass another, e.g. Dask's, with ``prepare_flow.with_options(task_runner=...)``): ``plan-prepare``
(split codes, the lake cut into ``workers`` partitions), one ``tokenize-partition`` per partition (train token
counts back, tokens spilled to the warehouse's scratch), ``finish-prepare`` (vocabulary from the merged
counts, encode, shards). The prep is byte for byte the single-task one, so it has the same prep id and
cache. The scratch folder is removed when the flow ends, whatever happened.

Artifacts: ``prepare-<dataset>`` (markdown: lengths, vocabulary, coverage / unk rate, where the
histogram PNG is) and ``prepare-<dataset>-counts`` (table: rows per split and label).
"""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import Optional

from prefect import flow, get_run_logger, task
from prefect.artifacts import (create_markdown_artifact, create_progress_artifact, create_table_artifact,
                               update_progress_artifact)
from prefect.cache_policies import INPUTS, NO_CACHE, TASK_SOURCE

from pipeline.core.config import Warehouse, validate_name
from pipeline.core.errors import InputError
from pipeline.prepare.config import PrepareConfig
from pipeline.prepare.job import (PrepPlan, compute_prep_id, dataset_fingerprint, discard_plan, finish_prepare,
                                  plan_prepare, prepare)
from pipeline.prepare.partitions import Partition, PartitionTokens, tokenize_partition
from pipeline.prepare.manifest import read_manifest
from flows.artifacts import artifact_key
from flows.retries import retry_unless_user_error


@task(name="prepare-shards", task_run_name="prepare-{dataset}", cache_policy=INPUTS + TASK_SOURCE,
      retries=1, retry_delay_seconds=5, retry_condition_fn=retry_unless_user_error)
def prepare_task(dataset: str, warehouse: str, params: dict, prep_id: str, prep_dir: str) -> dict:
    """Tokenize, build the vocabulary, split, pad and write shards (or reuse the prep with this id)."""
    logger = get_run_logger()
    wh = Warehouse.from_env(warehouse)
    cfg = PrepareConfig(**params)
    progress_id = create_progress_artifact(progress=0.0, key=artifact_key("prepare", dataset, "progress"),
                                           description=f"prepare {dataset}: tokenize + encode")
    last = [-1]

    def progress(stage: str, done: int, total: int) -> None:
        pct = (50.0 if stage == "encode" else 0.0) + 50.0 * done / max(total, 1)
        if int(pct // 10) > last[0]:
            last[0] = int(pct // 10)
            update_progress_artifact(progress_id, progress=pct)
            logger.info("%s: %d / %d rows", stage, done, total)

    res = prepare(wh, dataset, cfg, progress=progress)
    update_progress_artifact(progress_id, progress=100.0)
    if res.prep_id != prep_id:          # the dataset changed between fingerprint and prepare
        logger.warning("dataset %r changed while preparing; prep id %s (expected %s)", dataset, res.prep_id, prep_id)
    if res.cached:
        logger.info("prep %s already exists: reused without reading any text", res.prep_id)
    else:
        logger.info("prepared %s in %.2f s: %s (timings %s)", res.prep_id, res.seconds, res.counts,
                    res.manifest.get("timings_s"))
    return res.summary()


@task(name="plan-prepare", task_run_name="plan-{dataset}", cache_policy=NO_CACHE, persist_result=False,
      retries=1, retry_delay_seconds=5, retry_condition_fn=retry_unless_user_error)
def plan_task(dataset: str, warehouse: str, params: dict, partitions: int) -> PrepPlan:
    """Split codes of every row (no text read) and the lake cut into partitions; the cached prep if it exists."""
    plan = plan_prepare(Warehouse.from_env(warehouse), dataset, PrepareConfig(**params), partitions)
    if plan.cached is None:
        get_run_logger().info("%d rows in %d partition(s): %s", plan.rows.n, len(plan.partitions),
                              [p.rows for p in plan.partitions])
    return plan


@task(name="tokenize-partition", task_run_name="tokenize-{dataset}-{part.index}", cache_policy=NO_CACHE,
      persist_result=False, retries=1, retry_delay_seconds=5, retry_condition_fn=retry_unless_user_error)
def tokenize_task(dataset: str, part: Partition, params: dict, scratch: str) -> PartitionTokens:
    """Tokenize one partition: its train token counts back, its tokens spilled to ``scratch``."""
    res = tokenize_partition(part, PrepareConfig(**params), scratch, dataset=dataset, workers=1)
    get_run_logger().info("partition %d: %d rows, %d train tokens in %.2f s", part.index, part.rows,
                          res.train_tokens, res.seconds)
    return res


@task(name="finish-prepare", task_run_name="finish-{plan.dataset}", cache_policy=NO_CACHE, persist_result=False)
def finish_task(plan: PrepPlan, results: list[PartitionTokens]) -> dict:
    """Vocabulary from the merged counts, then encode and write the shards (one writer, atomic prep dir)."""
    res = finish_prepare(plan, results)
    get_run_logger().info("prepared %s in %.2f s: %s (timings %s)", res.prep_id, res.seconds, res.counts,
                          res.manifest.get("timings_s"))
    return res.summary()


def prepare_partitioned(dataset: str, warehouse: str, params: dict, workers: int) -> dict:
    """The parallel path (see the module docstring), on the current flow's task runner."""
    plan = plan_task(dataset, warehouse, params, workers)
    if plan.cached is not None:
        get_run_logger().info("prep %s already exists: reused without reading any text", plan.prep_id)
        return plan.cached.summary()
    try:
        futures = [tokenize_task.submit(dataset, part, params, str(plan.scratch)) for part in plan.partitions]
        return finish_task(plan, [f.result() for f in futures])
    finally:
        discard_plan(plan)


def _ascii_hist(manifest: dict) -> str:
    t = manifest.get("lengths", {}).get("tokens", {})
    if not t:
        return "(no rows)"
    rows = []
    for name in ("min", "p50", "p90", "p95", "p99", "max"):
        rows.append(f"| {name} | {t[name]:,.0f} |")
    return "\n".join(["| percentile | tokens per review |", "|---|---:|", *rows])


def _group_lines(manifest: dict) -> list[str]:
    """The grouped split's outcome (``split_by="group"`` preps only)."""
    g = manifest.get("groups")
    if not g:
        return []
    return [f"- validation by group: {g['train_groups']:,} groups in train, {g['val_groups']:,} in val (none in "
            f"both); rows without a group, split per review: train {g['train_rows_without_group']:,}, val "
            f"{g['val_rows_without_group']:,}"]


def report_markdown(summary: dict, manifest: dict) -> str:
    p = manifest["params"]
    lines = [f"# prepare `{manifest['dataset']}` -> `{manifest['prep_id']}`", "",
             f"{'reused (cache hit)' if summary['cached'] else 'built'}; prep dir `{summary['prep_dir']}`", "",
             f"- parameters: max_len {p['max_len']}, truncate {p['truncate']} ({manifest['truncate_rule']}), "
             f"pad {p['pad_side']}, min_freq {p['min_freq']}, max_vocab {p['max_vocab'] or 'no cap'}, "
             f"val_fraction {p['val_fraction']}, seed {p['seed']}, strip_html {p['strip_html']}, "
             f"include_unsup {p['include_unsup']}, split_by {p.get('split_by', 'review')}",
             *_group_lines(manifest),
             f"- vocabulary: {manifest['vocab_size']:,} ids (sha256 `{manifest['vocab_sha256'][:12]}`) from "
             f"{manifest['train_distinct_tokens']:,} distinct train tokens; covers "
             f"{(manifest['train_vocab_coverage'] or 0):.2%} of train token occurrences",
             "- unk rate (kept tokens mapped to `<unk>`): " + ", ".join(
                 f"{k} {v:.3%}" for k, v in manifest["unk_rate"].items() if v is not None),
             f"- truncated to max_len: {manifest['lengths'].get('truncated_fraction', 0):.1%} of reviews",
             f"- dropped: {manifest['dropped']}", "",
             "## Review length (tokens, before truncation)", "", _ascii_hist(manifest), "",
             f"Histogram PNG: `{Path(summary['prep_dir']) / 'length_hist.png'}`", "",
             "## Rows per split and label", "", "| split | rows | label 0 | label 1 | unknown |", "|---|---:|---:|---:|---:|"]
    for split, n in manifest["counts"].items():
        lc = manifest["label_counts"][split]
        lines.append(f"| {split} | {n:,} | {lc.get('0', 0):,} | {lc.get('1', 0):,} | {lc.get('-1', 0):,} |")
    return "\n".join(lines)


@flow(name="prepare", flow_run_name="prepare-{dataset}", log_prints=False)
def prepare_flow(dataset: str, warehouse: Optional[str] = None, max_len: int = PrepareConfig.max_len,
                 min_freq: int = PrepareConfig.min_freq, max_vocab: int = PrepareConfig.max_vocab,
                 val_fraction: float = PrepareConfig.val_fraction, seed: int = PrepareConfig.seed,
                 truncate: str = PrepareConfig.truncate, pad_side: str = PrepareConfig.pad_side,
                 strip_html: bool = PrepareConfig.strip_html, include_unsup: bool = PrepareConfig.include_unsup,
                 min_class_rows: int = PrepareConfig.min_class_rows, split_by: str = PrepareConfig.split_by,
                 workers: Optional[int] = None) -> dict:
    """Prepare lake dataset ``dataset`` into tensor shards under ``<warehouse>/shards/<prep-id>/``.
    Every option's default (and meaning) is :class:`pipeline.prepare.config.PrepareConfig`'s.
    ``workers`` >= 2: tokenize that many lake partitions as parallel tasks (same bytes as one task).

    Refuses (``InputError``, before any shard is written) a train split with fewer than ``min_class_rows``
    rows of either class, or a validation split without both classes.
    Returns ``{prep_id, prep_dir, cached, counts, label_counts, vocab_size, dropped, seconds}``.
    """
    logger = get_run_logger()
    validate_name(dataset, "dataset name")
    if workers is not None and workers < 1:
        raise InputError(f"workers must be at least 1, got {workers}")
    cfg = PrepareConfig(max_len=max_len, min_freq=min_freq, max_vocab=max_vocab, val_fraction=val_fraction,
                        seed=seed, truncate=truncate, pad_side=pad_side, strip_html=strip_html,
                        include_unsup=include_unsup, min_class_rows=min_class_rows,
                        split_by=split_by)   # checks every option
    wh = Warehouse.from_env(warehouse).ensure()
    prep_id = compute_prep_id(dataset, dataset_fingerprint(wh, dataset), cfg)
    prep_dir = wh.prep_dir(prep_id)
    logger.info("dataset %r, params %s -> prep id %s", dataset, asdict(cfg), prep_id)
    if workers is not None and workers >= 2:
        summary = prepare_partitioned(dataset, str(wh.root), asdict(cfg), workers)
    else:
        run = prepare_task
        if not (prep_dir / "manifest.json").exists():
            run = prepare_task.with_options(refresh_cache=True)     # never trust a cached result for a missing dir
        summary = run(dataset, str(wh.root), asdict(cfg), prep_id, str(prep_dir))
    manifest = read_manifest(summary["prep_dir"])
    create_markdown_artifact(key=artifact_key("prepare", dataset), markdown=report_markdown(summary, manifest),
                             description=f"prepare {dataset}: lengths, vocabulary, coverage")
    table = [{"split": s, "label": lab, "rows": n}
             for s, lc in manifest["label_counts"].items() for lab, n in sorted(lc.items())]
    create_table_artifact(key=artifact_key("prepare", dataset, "counts"), table=table,
                          description=f"prepare {dataset}: rows per split and label ({prep_id})")
    lengths = manifest["lengths"].get("tokens", {})
    logger.info("prep %s: %s; vocab %s; length p50 %s p95 %s; unk %s", prep_id, manifest["counts"],
                manifest["vocab_size"], lengths.get("p50"), lengths.get("p95"), manifest["unk_rate"])
    return summary


__all__ = ["prepare_flow", "prepare_task", "prepare_partitioned", "report_markdown"]
