"""Train flow: prepare (subflow) -> pretrain-word-vectors (task, cached; presets with ``pretrained``) ->
train_model (task, tagged gpu) -> register_model (task: register, promote).

    reviewflow train --dataset imdb --preset default
    python -c "from flows.train import train_flow; train_flow('imdb', 'baseline')"

The steps and their rules are :mod:`pipeline.train.job`'s (``--no-prefect`` runs the same job); this flow
wraps them in tasks. Training runs inside a Prefect task with a timeout; the loop also gets the same time
budget (``max_seconds``) so it stops itself cleanly and still registers its best checkpoint. Only paths pass
through Prefect. The flow holds the run directory from training to registration, so a second flow of the
same configuration fails at once with ``TemporaryFailure`` instead of sharing its files.

``nproc > 1``: the task starts ``torchrun`` (DistributedDataParallel on that many processes,
:mod:`pipeline.train.ddp_main`) and streams the ranks' lines to the run logger; it is the same task, so the
``gpu`` tag's concurrency limit holds the whole group, and the word vectors are built before it, once.
"""

from __future__ import annotations

from prefect import flow, get_run_logger, task
from prefect.artifacts import (create_markdown_artifact, create_progress_artifact, create_table_artifact,
                               update_progress_artifact)

from flows.artifacts import artifact_key
from flows.prepare import prepare_flow
from flows.pretrain import run_pretrain
from flows.retries import retry_unless_user_error
from pipeline.core.config import Warehouse, validate_name
from pipeline import registry
from pipeline.train import job
from pipeline.train.presets import resolve_preset
from pipeline.train.rundir import discard_run_dir, run_lock
from pipeline.train.selftrain import check_self_training

GRACE_SECONDS = 600        # the task timeout = the loop's own budget + this (evaluation, checkpointing)
DEFAULT_TIMEOUT = 6 * 3600


def task_timeout(max_seconds: float | None) -> float:
    """The train task's timeout: the loop's own budget plus a grace period, or six hours without one."""
    return max_seconds + GRACE_SECONDS if max_seconds else DEFAULT_TIMEOUT


@task(name="train-model", task_run_name="train-{dataset}-{preset}", tags=["gpu"])
def train_model(prep_dir: str, out_dir: str, dataset: str, preset: str, overrides: dict,
                device: str = "auto", vectors: str | None = None, nproc: int = 1) -> str:
    """Train on the shards in ``prep_dir`` (``pipeline.train.job.run_training``: in this process, or on
    ``nproc`` torchrun processes, failing with their error); returns the run directory."""
    logger = get_run_logger()
    spec = resolve_preset(preset, overrides)
    progress_id = create_progress_artifact(progress=0.0, key=artifact_key("train", dataset, preset, "progress"),
                                           description=f"training {preset} on {dataset}: epochs done")

    def on_epoch(rec: dict) -> None:
        logger.info(f"epoch {rec['epoch']}/{rec['epochs']}: train loss {rec['train_loss']:.4f} | val loss "
                    f"{rec['val_loss']:.4f} acc {rec['val_accuracy']:.4f}"
                    + (f" (encoder {rec['val_accuracy_encoder']:.4f}, n-grams {rec['val_accuracy_ngram']:.4f})"
                       if "val_accuracy_ngram" in rec else "") + f" | {rec['seconds']:.1f}s "
                    f"{rec['tokens_per_s']:.0f} tok/s")
        update_progress_artifact(progress_id, progress=100.0 * rec["epoch"] / rec["epochs"])

    res = job.run_training(prep_dir, spec, out_dir, device=device, nproc=nproc, vectors=vectors, progress=False,
                           on_epoch=on_epoch, log=logger.info)     # the flow holds the run dir
    update_progress_artifact(progress_id, progress=100.0)
    logger.info(f"training stopped ({res.stopped}) after {len(res.history)} epochs, {res.seconds:.0f}s on "
                f"{res.device}: val accuracy {res.metrics['val_accuracy']:.4f}")
    return str(res.out_dir)


@task(name="register-model", task_run_name="register-{dataset}-{preset}", retries=2, retry_delay_seconds=2,
      retry_condition_fn=retry_unless_user_error)
def register_model(warehouse: str, out_dir: str, dataset: str, preset: str, prepare: dict) -> str:
    """Publish the run as a version (once: a retry reuses it) and promote it if it wins; artifacts."""
    logger = get_run_logger()
    wh = Warehouse.from_env(warehouse)
    version = job.register_and_promote(wh, out_dir, preset=preset, dataset=dataset, prepare=prepare)
    mv = registry.get(wh, version)
    rows = [{k: (round(v, 4) if isinstance(v, float) else v) for k, v in r.items()} for r in mv.metrics["history"]]
    create_table_artifact(key=artifact_key("metrics", dataset, preset), table=rows,
                          description=f"per-epoch metrics of {version}")
    create_markdown_artifact(key=artifact_key("model-card", dataset, preset),
                             markdown=(mv.path / "MODEL_CARD.md").read_text(), description=f"model card {version}")
    logger.info(f"registered {version} (val accuracy {mv.val_accuracy:.4f}); champion is {registry.champion(wh)}")
    discard_run_dir(out_dir)                     # registered: the resumable run state is no longer needed
    return version


@flow(name="reviewflow-train", flow_run_name="train-{dataset}-{preset}")
def train_flow(dataset: str, preset: str = "default", warehouse: str | None = None,
               overrides: dict | None = None, retrain: bool = False, device: str = "auto", nproc: int = 1) -> dict:
    """Prepare ``dataset`` with the preset's prepare parameters, train, register (promote if better).
    ``nproc > 1``: train with DistributedDataParallel on that many processes (gloo on CPU, a GPU each on CUDA).

    Without ``retrain``, a registered model of the same preset and configuration on the same shards (and
    no overrides) is reused instead of training again (:func:`pipeline.train.job.reusable_version`).
    """
    logger = get_run_logger()
    validate_name(dataset, "dataset name")
    overrides, spec = job.plan(preset, overrides, device, nproc)    # every option checked before any data is read
    wh = Warehouse.from_env(warehouse).ensure()
    check_self_training(wh, spec.train, spec.prepare)      # a teacher that is not a version fails before the prep
    prep = prepare_flow(dataset=dataset, warehouse=str(wh.root), **spec.prepare)
    prep_id, prep_dir = prep["prep_id"], prep["prep_dir"]
    reused = job.reusable_version(wh, preset, overrides, spec, prep_id, prep_dir, retrain)
    if reused is not None:
        logger.info(f"{reused.version} already trains {preset!r} on {prep_id}; skipping (use retrain=True)")
        return job.summary(wh, reused.version, prep_id, skipped=True)
    vectors = (run_pretrain(prep, str(wh.root), job.pretrain_config(spec), dataset)
               if spec.train.pretrained else None)
    timeout = task_timeout(spec.train.max_seconds)
    out = job.run_dir_for(wh, dataset, preset, prep_id, overrides)
    logger.info(f"training {preset!r} on {prep_id} (budget {spec.train.max_seconds or 'none'} s, "
                f"task timeout {timeout:.0f} s)")
    with run_lock(out):
        job.start_run(out)
        out_dir = train_model.with_options(timeout_seconds=timeout)(prep_dir, str(out), dataset, preset,
                                                                     overrides, device, vectors, nproc)
        version = register_model(str(wh.root), out_dir, dataset, preset, spec.prepare)
    return job.summary(wh, version, prep_id)
