"""Train flow: prepare (subflow) -> train_model (task, tagged gpu) -> register_model (task).

    reviewflow train --dataset imdb --preset default
    python -c "from flows.train import train_flow; train_flow('imdb', 'baseline')"

Training runs inside a Prefect task with a timeout; the loop also gets the same time budget
(``max_seconds``) so it stops itself cleanly and still registers its best checkpoint. Only paths pass
through Prefect. The run directory is derived from dataset/preset/prep/overrides, so re-running after
a crash resumes from the last completed epoch. Options and the device are checked before prepare; the
flow holds the run directory (``pipeline.train.loop.run_lock``) from training to registration, so a second
flow of the same configuration fails at once with ``TemporaryFailure`` instead of sharing its files.
"""

from __future__ import annotations

from dataclasses import asdict

from prefect import flow, get_run_logger, task
from prefect.artifacts import (create_markdown_artifact, create_progress_artifact, create_table_artifact,
                               update_progress_artifact)

from flows.prepare import prepare_flow
from pipeline.train import registry
from pipeline.core.config import Warehouse, validate_name
from pipeline.train.presets import resolve_preset
from pipeline.train.loop import (discard_run_dir, mark_registered, model_config_for, pick_device, registered_version,
                            run_dir_for, run_lock)
from flows.artifacts import artifact_key
from flows.retries import retry_unless_user_error

GRACE_SECONDS = 600        # the task timeout = the loop's own budget + this (evaluation, checkpointing)
DEFAULT_TIMEOUT = 6 * 3600


@task(name="train-model", task_run_name="train-{dataset}-{preset}", tags=["gpu"])
def train_model(prep_dir: str, out_dir: str, dataset: str, preset: str, overrides: dict,
                device: str = "auto") -> str:
    """Run ``pipeline.train.loop.train`` on the shards in ``prep_dir``; returns the run directory."""
    from pipeline.train.loop import train

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

    res = train(prep_dir, spec.train, out_dir, device=device, progress=False, model=spec.model, on_epoch=on_epoch,
                lock=False)   # the flow holds the run dir
    update_progress_artifact(progress_id, progress=100.0)
    logger.info(f"training stopped ({res.stopped}) after {len(res.history)} epochs, {res.seconds:.0f}s on "
                f"{res.device}: val accuracy {res.metrics['val_accuracy']:.4f}")
    return str(res.out_dir)


@task(name="register-model", task_run_name="register-{dataset}-{preset}", retries=2, retry_delay_seconds=2,
      retry_condition_fn=retry_unless_user_error)
def register_model(warehouse: str, out_dir: str, dataset: str, preset: str, prepare: dict) -> dict:
    logger = get_run_logger()
    wh = Warehouse.from_env(warehouse)
    version = registered_version(out_dir)            # a retry after the version was published reuses it
    if version is None:
        version = registry.register(wh, out_dir, preset=preset, dataset=dataset, prepare=prepare)
        mark_registered(out_dir, version)
    mv = registry.get(wh, version)
    champ = registry.champion(wh)
    rows = [{k: (round(v, 4) if isinstance(v, float) else v) for k, v in r.items()} for r in mv.metrics["history"]]
    create_table_artifact(key=artifact_key("metrics", dataset, preset), table=rows,
                          description=f"per-epoch metrics of {version}")
    create_markdown_artifact(key=artifact_key("model-card", dataset, preset),
                             markdown=(mv.path / "MODEL_CARD.md").read_text(), description=f"model card {version}")
    logger.info(f"registered {version} (val accuracy {mv.val_accuracy:.4f}); champion is {champ}")
    discard_run_dir(out_dir)                     # registered: the resumable run state is no longer needed
    return {"version": version, "val_accuracy": mv.val_accuracy, "promoted": champ == version,
            "champion": champ, "path": str(mv.path)}


def _without_budget(train_cfg: dict) -> dict:
    """Training settings that change the model (the time budget and thread count do not)."""
    return {k: v for k, v in train_cfg.items() if k not in ("max_seconds", "threads")}


@flow(name="reviewflow-train", flow_run_name="train-{dataset}-{preset}")
def train_flow(dataset: str, preset: str = "default", warehouse: str | None = None,
               overrides: dict | None = None, retrain: bool = False, device: str = "auto") -> dict:
    """Prepare ``dataset`` with the preset's prepare parameters, train, register (promote if better).

    Without ``retrain``, a registered model of the same preset and configuration on the same shards (and
    no overrides) is reused instead of training again.
    """
    logger = get_run_logger()
    validate_name(dataset, "dataset name")
    overrides = {k: v for k, v in (overrides or {}).items() if v is not None}
    spec = resolve_preset(preset, overrides)        # every option checked before any data is read
    pick_device(device)
    wh = Warehouse.from_env(warehouse).ensure()
    prep = prepare_flow(dataset=dataset, warehouse=str(wh.root), **spec.prepare)
    prep_id, prep_dir = prep["prep_id"], prep["prep_dir"]
    if not retrain and not overrides:
        for mv in reversed(registry.list_versions(wh)):
            same = (mv.prep_id == prep_id and mv.config.get("preset") == preset
                    and mv.config.get("model") == model_config_for(prep_dir, spec.model).to_dict()
                    and _without_budget(mv.config.get("train", {})) == _without_budget(asdict(spec.train)))
            if same:
                logger.info(f"{mv.version} already trains {preset!r} on {prep_id}; skipping (use retrain=True)")
                champ = registry.champion(wh)
                return {"version": mv.version, "val_accuracy": mv.val_accuracy, "promoted": False,
                        "champion": champ, "path": str(mv.path), "skipped": True, "prep_id": prep_id}
    budget = spec.train.max_seconds
    timeout = budget + GRACE_SECONDS if budget else DEFAULT_TIMEOUT
    out = run_dir_for(wh, dataset, preset, prep_id, overrides)
    logger.info(f"training {preset!r} on {prep_id} (budget {budget or 'none'} s, task timeout {timeout:.0f} s)")
    with run_lock(out):
        if registered_version(out) is not None:      # registered by a run that crashed before removing it
            discard_run_dir(out)
        out_dir = train_model.with_options(timeout_seconds=timeout)(prep_dir, str(out), dataset, preset,
                                                                     overrides, device)
        result = register_model(str(wh.root), out_dir, dataset, preset, spec.prepare)
    return result | {"skipped": False, "prep_id": prep_id}
