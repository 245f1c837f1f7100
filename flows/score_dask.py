"""Prefect flow: score a DuckDB table in id-range partitions on a Dask cluster (Prefect's ``DaskTaskRunner``).

Thin orchestration over :mod:`pipeline.score.partitioned`. This flow (the committer) first submits one
``load-model`` task per worker, so the workers import torch and load the model while it takes the table's claim,
plans the candidates' id ranges and snapshots the database file into the scratch space; then it submits one
``score-part`` task per partition (the worker reads its id range from the read-only snapshot and writes a scored
part), stages each scored part as it finishes (verified, nothing written yet, updating a progress artifact), and
folds them all into the table in one transaction at the end. Every worker process loads the model once (by exact
version: the committer resolves "champion" once, so one model scores every row).

* ``workers=N``: a ``distributed.LocalCluster`` of N processes, one thread each, started for the run;
* ``dask_address="tcp://host:8786"`` (or ``REVIEWFLOW_DASK_ADDRESS``): an existing cluster. Its workers must
  run the same reviewflow and see the warehouse's models and the scratch URI (an object store such as
  ``s3://bucket/prefix``, or a shared volume mounted at the same path), and share this process's
  ``PREFECT_API_URL`` (else each worker starts a temporary Prefect server of its own: the parts still score
  and merge, but their task runs are recorded where nobody looks; the run logs a warning).

A worker that dies mid-part: Dask runs the part again on another worker (its ``allowed-failures``); a part
whose scoring fails for a reason of ours (a broken model) fails the run at once.
"""

from __future__ import annotations

import functools
import os
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE
from prefect.futures import as_completed
from prefect.runtime import flow_run

from pipeline.core.config import Warehouse
from pipeline.core.duck import DEFAULT_LOCK_TIMEOUT
from pipeline.core.errors import InputError
from pipeline.core.outputs import guard_output_dir
from pipeline.score.partitioned import (DEFAULT_ROWS_PER_PART, PartResult, PartSpec, preflight, score_part,
                                        score_table_partitioned)
from flows.artifacts import rows_progress
from flows.retries import retry_unless_user_error

#: what a LocalCluster's worker processes inherit from this one (Prefect's API and home, reviewflow settings)
_INHERITED = ("PREFECT_API_URL", "PREFECT_API_KEY", "PREFECT_HOME", "PREFECT_SERVER_ANALYTICS_ENABLED",
              "PREFECT_LOGGING_LEVEL", "AWS_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY",
              "AWS_DEFAULT_REGION", "AWS_SESSION_TOKEN", "REVIEWFLOW_CACHE")


@functools.lru_cache(maxsize=2)
def worker_predictor(warehouse: str, version: str, batch_size: int | None, device: str, store: str | None = None,
                     max_error: float | None = None):
    """The model, loaded once per worker process (and per version): later parts on the worker reuse it.

    ``store``: the warehouse's object-store URL when it lives on one (``s3://...``). A worker on another
    machine has no copy of the committer's mirror (``warehouse``), so it pulls ``models/<version>`` alone into
    its own mirror (``$REVIEWFLOW_CACHE``, else ~/.cache/reviewflow) and loads it from there."""
    from pipeline.serve.predictor import load_predictor      # deferred: torch, only on the workers

    if store:
        from pipeline.core import objectstore

        cache = os.environ.get("REVIEWFLOW_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "reviewflow")
        mirror = objectstore.mirror_dir(store, cache)
        objectstore.pull(store, mirror, [f"models/{version}"])
        warehouse = str(mirror)
    sized = {} if batch_size is None else {"batch_size": batch_size}      # None: the predictor's own default
    return load_predictor(Warehouse.from_env(warehouse), version, device=device, max_error=max_error, **sized)


@task(name="load-model", retries=0, cache_policy=NO_CACHE, task_run_name="load-model-{slot}")
def load_model_task(slot: int, warehouse: str, version: str, batch_size: int | None, device: str, store: str | None = None,
                    max_error: float | None = None) -> str:
    """Load the model on a worker ahead of its parts (overlapping the committer's claim, plan and snapshot)."""
    import socket

    worker_predictor(warehouse, version, batch_size, device, store, max_error)
    return f"{socket.gethostname()}:{os.getpid()}"


@task(name="score-part", retries=1, retry_delay_seconds=2, retry_condition_fn=retry_unless_user_error,
      cache_policy=NO_CACHE, task_run_name="part-{part.index}")
def score_part_task(part: PartSpec, warehouse: str, threshold: float, batch_size: int | None, device: str,
                    store: str | None = None) -> PartResult:
    predictor = worker_predictor(warehouse, part.version, batch_size, device, store, part.max_error)
    return score_part(part, predictor, threshold)


def dask_runner(workers: int | None, address: str | None):
    """Prefect's Dask task runner: on the cluster at ``address``, else on a LocalCluster of ``workers``
    processes with one thread each (torch in each uses one core: OMP_NUM_THREADS=1 is Dask's default)."""
    try:
        from prefect_dask import DaskTaskRunner      # deferred: dask loads only for a distributed run
    except ImportError:
        raise InputError("scoring on Dask needs prefect-dask and distributed: pip install 'reviewflow[dask]'") from None

    if address:
        return DaskTaskRunner(address=address)
    _no_malloc_trim()
    env = {k: os.environ[k] for k in _INHERITED if os.environ.get(k)}
    env["PREFECT_API_URL"] = _api_url() or env.get("PREFECT_API_URL", "")
    return DaskTaskRunner(cluster_class="distributed.LocalCluster",
                          cluster_kwargs={"n_workers": int(workers or 1), "threads_per_worker": 1, "processes": True,
                                          "dashboard_address": None, "env": {k: v for k, v in env.items() if v}})


def _no_malloc_trim() -> None:
    """Spawn the LocalCluster's workers without Dask's default ``MALLOC_TRIM_THRESHOLD_=65536``.

    Setting it turns off glibc's dynamic mmap threshold, so every tensor over 128 KiB is a fresh ``mmap`` and
    ``munmap`` with its page faults: the ``default`` model scored 1,800 rows/s on one thread without it and about
    1,050 with it (a Dask worker: ~900). The workers' memory stays flat either way (one part at a time). A
    ``dask worker`` started by hand takes the same setting from its environment:
    ``DASK_DISTRIBUTED__NANNY__PRE_SPAWN_ENVIRON__MALLOC_TRIM_THRESHOLD_=None``."""
    import dask

    dask.config.set({"distributed.nanny.pre-spawn-environ.MALLOC_TRIM_THRESHOLD_": None})


def _api_url() -> str | None:
    """The Prefect API this process talks to (also a temporary local server's), for the worker processes."""
    from prefect.context import FlowRunContext

    ctx = FlowRunContext.get()
    client = getattr(ctx, "client", None) if ctx else None
    url = getattr(client, "api_url", None)
    return str(url).rstrip("/") if url else None


def cluster_workers(address: str) -> int | None:
    """How many workers the cluster at ``address`` has now (None when it cannot say)."""
    try:
        from distributed import Client

        with Client(address, timeout=10) as client:
            return len(client.scheduler_info().get("workers", {}))
    except Exception:        # noqa: BLE001 - only for the audit row
        return None


@flow(name="score-distributed", log_prints=True)
def distributed_score_flow(table: str, db: str, version: str, warehouse: str, scratch: str, workers: int | None = None,
                           dask_address: str | None = None, id_col: str = "review_id", text_col: str = "text",
                           rescore: bool = False, threshold: float = 0.5, batch_size: int | None = None,
                           rows_per_part: int = DEFAULT_ROWS_PER_PART, lock_timeout: float = DEFAULT_LOCK_TIMEOUT,
                           blob_as_utf8: bool = False, device: str = "cpu", store: str | None = None,
                           max_error: float | None = None) -> dict:
    """Score ``table`` of ``db`` with model ``version`` in partitions on this flow's Dask task runner. ``store``:
    the warehouse's object-store URL, when it is on one (workers then pull the model from it). ``max_error``:
    every part is scored with that ``--max-error`` (it travels in the part's spec)."""
    logger = get_run_logger()
    _, progress = rows_progress(table, f"Rows of {table} scored with {version} on Dask", logger, verb="scored")

    def map_parts(parts: list[PartSpec]):
        logger.info("%d partition(s) of up to %d rows planned; snapshot in %s", len(parts), rows_per_part, scratch)
        futures = [score_part_task.submit(p, warehouse, threshold, batch_size, device, store) for p in parts]
        for future in as_completed(futures):
            result = future.result()
            logger.info("part %d scored by %s in %.1f s%s", result.index, result.worker, result.seconds,
                        " (reused)" if result.reused else "")
            yield result

    n_workers = workers if not dask_address else cluster_workers(dask_address)
    # the workers load the model while the committer claims, counts, plans and snapshots (a failure here shows
    # again, and is reported, on the parts)
    warm = [load_model_task.submit(i, warehouse, version, batch_size, device, store, max_error)
            for i in range(max(int(n_workers or 1), 1))]
    rep = score_table_partitioned(db, table, version, map_parts, scratch=scratch, id_col=id_col, text_col=text_col,
                                  rescore=rescore, threshold=threshold, rows_per_part=rows_per_part,
                                  lock_timeout=lock_timeout, on_wait=logger.info, progress=progress,
                                  blob_as_utf8=blob_as_utf8, run_id=_parent_run_id(), engine="dask",
                                  workers=n_workers, max_error=max_error)
    for future in warm:
        future.wait()
    return rep.to_dict()


def _parent_run_id() -> str | None:
    """The audit row is keyed on the flow run the user started (the ``score`` flow, this flow's parent)."""
    parent = flow_run.get_parent_flow_run_id()
    return str(parent) if parent else flow_run.get_id()


def run_distributed(*, table: str, db: str, model: str, warehouse: str, workers: int | None, dask_address: str | None,
                    scratch: str | None, **options: Any) -> dict:
    """Resolve the model version once, then run :func:`distributed_score_flow` on a Dask task runner. -> its report,
    or None when the table has no row to score (no cluster is started: the caller runs the one-process path, which
    records the run without loading the model)."""
    from pipeline import registry

    wh = Warehouse.from_env(warehouse)
    scratch = scratch or str(wh.root / "scratch")
    if "://" not in scratch or scratch.startswith("file://"):   # a user-named folder: never a managed one
        guard_output_dir(scratch.removeprefix("file://"), wh, allow="scratch")
    mv = registry.get(wh, model)
    version = mv.version
    if options.get("max_error") is not None:       # an error rate the version did not record fails before a cluster
        from pipeline.model.abstain import margin_for

        margin_for(mv.config, options["max_error"], version)
    if not preflight(db, table, version=version, **{k: options[k] for k in (
            "id_col", "text_col", "threshold", "rows_per_part", "blob_as_utf8", "lock_timeout", "rescore")
            if k in options}):
        get_run_logger().info("nothing to score in %s for %s: no cluster started", table, version)
        return None
    if dask_address and not os.environ.get("PREFECT_API_URL"):
        get_run_logger().warning(
            "scoring on the cluster at %s without PREFECT_API_URL: each worker records its part task runs in a "
            "temporary Prefect server of its own, which nobody sees; give this process and the workers the same "
            "PREFECT_API_URL (compose does) to watch the parts in the UI", dask_address)
    runner = dask_runner(workers, dask_address)
    return distributed_score_flow.with_options(task_runner=runner)(
        table=table, db=db, version=version, warehouse=str(wh.root), scratch=scratch,
        workers=workers, dask_address=dask_address, **options)
