"""The train stage's job: prepare -> train -> register -> promote, for one dataset and preset.

    spec = plan("default", {"epochs": 3}, device="auto")     # every option and the device checked first
    prep = prepare(wh, dataset, PrepareConfig(**spec.prepare))
    vectors = pretrained_vectors(wh, prep.prep_dir, spec)    # word vectors, when the preset pretrains (cached)
    reusable_version(wh, "default", overrides, spec, prep.prep_id, prep.prep_dir)   # trained already?
    out = run_dir_for(wh, dataset, "default", prep.prep_id, overrides)
    with run_lock(out): start_run(out); train(..., vectors=vectors); register_and_promote(...); discard_run_dir(out)

``nproc > 1`` trains through ``torchrun`` instead (:func:`run_training`, :mod:`pipeline.train.ddp_main`); the
steps around it are the same, so the run is registered by the same rules.

:func:`train_dataset` runs those steps in order (``reviewflow train --no-prefect``); ``flows/train.py`` wraps
the same steps in Prefect tasks. Each rule here exists once:

* **reuse**: a registered version is reused instead of training again only if it was trained on the same
  shards with the same preset *and* the same model and training settings (the time budget and the thread
  count aside), and the user gave no overrides and no ``retrain``;
* **one run per configuration**: the run directory is named by dataset, preset, prep and overrides, so a
  crashed run resumes there, and it is held (``run_lock``) from training to registration;
* **registered once**: a run directory is published as a version at most once, whatever fails after it.
"""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

from pipeline.core.config import Warehouse
from pipeline.core.errors import NotFoundError
from pipeline.prepare.config import PrepareConfig
from pipeline.prepare.job import prepare
from pipeline import registry
from pipeline.train.register import register
from pipeline.train import promotion
from pipeline.train.config import TrainResult, model_key_of
from pipeline.train.ddp_main import launch
from pipeline.model.device import pick_device
from pipeline.train.distributed import check_nproc
from pipeline.train.loop import model_config_for, train
from pipeline.train.pretrain import PretrainConfig, pretrain_word_vectors
from pipeline.train.presets import PRESETS, PresetSpec, resolve_preset
from pipeline.train.rundir import discard_run_dir, mark_registered, registered_version, run_lock
from pipeline.train.selftrain import check_self_training


def plan(preset: str, overrides: dict | None, device: str = "auto", nproc: int = 1) -> tuple[dict, PresetSpec]:
    """(the overrides, the resolved preset): every option, the device and the process count checked, before
    any data is read (``InputError`` naming the option). A None value is applied as None (``--set
    pretrained=null``: no pretraining; ``patience=null``: never stop early); callers leave out the flags the
    user did not set."""
    overrides = dict(overrides or {})
    spec = resolve_preset(preset, overrides)
    pick_device(device)
    check_nproc(nproc, spec.train.optimizer, device)
    return overrides, spec


def run_training(prep_dir: str | Path, spec: PresetSpec, out: Path, *, device: str = "auto", nproc: int = 1,
                 vectors: Path | str | None = None, progress: bool = True, on_epoch=None, log=None) -> TrainResult:
    """Train ``spec`` into the run directory ``out`` (held by the caller): in this process, or on ``nproc``
    processes through ``torchrun`` (whose output goes to ``log`` line by line, each epoch's record to
    ``on_epoch``). Either way the run directory ends up the same: checkpoints, best weights, result."""
    if nproc > 1:
        if log is None:     # the ranks' progress goes where a single process writes its own: stderr
            log = (lambda line: print(line, file=sys.stderr, flush=True)) if progress else (lambda *_: None)
        return launch(prep_dir, spec.train, out, nproc=nproc, device=device, model=spec.model, vectors=vectors,
                      on_epoch=on_epoch, log=log)
    return train(prep_dir, spec.train, out, device=device, progress=progress, model=spec.model,
                 on_epoch=on_epoch, lock=False, vectors=vectors)


def reusable_version(wh: Warehouse, preset: str, overrides: dict, spec: PresetSpec, prep_id: str,
                     prep_dir: str | Path, retrain: bool = False) -> registry.ModelVersion | None:
    """The newest registered version this training would reproduce, or None to train.

    Only without ``retrain`` and without overrides; then a version matches when it was trained on the same
    shards (``prep_id``), with the same preset, the same model configuration and the same training settings
    (the time budget and the thread count do not change the model)."""
    if retrain or overrides:
        return None
    model = model_config_for(Path(prep_dir), spec.model).to_dict()
    settings = spec.train.model_key()
    for mv in reversed(registry.list_versions(wh)):
        trained = model_key_of(mv.config.get("train", {}))
        if (mv.prep_id == prep_id and mv.config.get("preset") == preset and mv.config.get("model") == model
                and trained == settings):
            return mv
    return None


def pretrained_vectors(wh: Warehouse, prep_dir: str | Path, spec: PresetSpec, log=print) -> Path | None:
    """The word-vector directory the preset starts its embedding from (built once per prep and parameters,
    then reused: :func:`pipeline.train.pretrain.pretrain_word_vectors`), or None when it does not pretrain."""
    if not spec.train.pretrained:
        return None
    return pretrain_word_vectors(prep_dir, wh.pretrained, pretrain_config(spec), log=log).path


def pretrain_dataset(wh: Warehouse, dataset: str, preset: str = "default", overrides: dict | None = None,
                     log=print) -> dict:
    """prepare -> pretrain without Prefect (``reviewflow pretrain --no-prefect``): the word vectors that
    ``preset`` starts from, built (or reused) for its prep of ``dataset``."""
    overrides, spec = plan(preset, overrides)
    prep = prepare(wh, dataset, PrepareConfig(**spec.prepare))
    res = pretrain_word_vectors(prep.prep_dir, wh.pretrained, pretrain_config(spec), log=log)
    return {"prep_id": prep.prep_id, "vectors": str(res.path), "cached": res.cached, **res.manifest}


def pretrain_config(spec: PresetSpec) -> PretrainConfig:
    """The preset's pretraining parameters; the vectors are as wide as its embedding."""
    return PretrainConfig(**{**spec.pretrain, "dim": spec.model.embed_dim})


def run_dir_for(wh: Warehouse, dataset: str, preset: str, prep_id: str, overrides: dict) -> Path:
    """A deterministic run directory: re-running the same training after a crash resumes there.

    Named by the overrides and by the preset's definition, so a preset whose definition changed never
    meets the checkpoint of its old definition."""
    key = {"overrides": overrides, "preset": PRESETS.get(preset)}
    digest = hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()[:8]
    return wh.tmp / "runs" / f"{dataset}-{preset}-{prep_id}-{digest}"


def start_run(out_dir: Path) -> None:
    """Discard a run directory that a crashed run had registered but not removed: its configuration trains
    afresh (and is registered anew) rather than publishing that run a second time."""
    if registered_version(out_dir) is not None:
        discard_run_dir(out_dir)


def register_and_promote(wh: Warehouse, run: TrainResult | str | Path, *, preset: str = "custom",
                         dataset: str | None = None, prepare: dict | None = None,
                         promote: bool | None = None) -> str:
    """The one way a finished training run becomes a version, and maybe the champion; returns the version.

    ``run`` a run directory: published at most once. The version is recorded in the directory
    (``registered.json``) before anything else happens, so a retry after a later failure (the promotion
    decision, an artifact, the clean-up) finds it instead of publishing the same run a second time.
    ``run`` a ``TrainResult`` in memory: published as a new version on every call.

    ``promote``: None = promote only if it beats its dataset's champion on the same evaluation data
    (:func:`pipeline.train.promotion.maybe_promote`, which leaves an existing champion alone); True = always;
    False = never.
    """
    if isinstance(run, TrainResult):
        version = register(wh, run, preset=preset, dataset=dataset, prepare=prepare)
    else:
        version = registered_version(run)
        if version is None:
            version = register(wh, run, preset=preset, dataset=dataset, prepare=prepare)
            mark_registered(run, version)
    reference_profile(wh, version)
    if promote is True:
        promotion.promote(wh, version, reason="registered with promote=True")
    elif promote is None:
        promotion.maybe_promote(wh, version)
    return version


def reference_profile(wh: Warehouse, version: str, log=print) -> Path | None:
    """Store the version's reference profile for drift monitoring (:mod:`pipeline.train.reference`), once. A
    version whose validation texts are gone from the lake gets none (said, not fatal: scoring then skips the
    drift check)."""
    from pipeline.model.profile import REFERENCE_FILE
    from pipeline.train.reference import write_reference

    target = registry.get(wh, version).path / REFERENCE_FILE
    if target.exists():
        return target
    try:
        return write_reference(wh, version)
    except NotFoundError as exc:
        log(f"no reference profile for {version}: {exc}")
        return None


def summary(wh: Warehouse, version: str, prep_id: str, skipped: bool = False) -> dict:
    """What a train run tells its caller: the version, its accuracy, and where the champion stands."""
    mv, champ = registry.get(wh, version), registry.champion(wh)
    return {"version": version, "val_accuracy": mv.val_accuracy, "promoted": champ == version and not skipped,
            "champion": champ, "path": str(mv.path), "skipped": skipped, "prep_id": prep_id}


def train_dataset(wh: Warehouse, dataset: str, preset: str = "default", overrides: dict | None = None,
                  device: str = "auto", retrain: bool = False, progress: bool = True, nproc: int = 1) -> dict:
    """prepare -> train -> register -> promote without Prefect (``reviewflow train --no-prefect``).

    Every option and the device are checked before any data is read. The run directory is held with
    ``run_lock`` from training to registration: a concurrent run of the same configuration fails at once
    with ``TemporaryFailure``; run again later and it reuses the registered model (no overrides) or trains
    anew. A dir left registered-but-not-removed by a crash is discarded, never registered twice.
    ``nproc > 1``: DistributedDataParallel on that many processes (:func:`run_training`); the word vectors
    are built here, once, before the ranks start."""
    overrides, spec = plan(preset, overrides, device, nproc)
    check_self_training(wh, spec.train, spec.prepare)
    prep = prepare(wh, dataset, PrepareConfig(**spec.prepare))
    reused = reusable_version(wh, preset, overrides, spec, prep.prep_id, prep.prep_dir, retrain)
    if reused is not None:
        return summary(wh, reused.version, prep.prep_id, skipped=True)
    vectors = pretrained_vectors(wh, prep.prep_dir, spec, log=print if progress else (lambda *_: None))
    out = run_dir_for(wh, dataset, preset, prep.prep_id, overrides)
    with run_lock(out):
        start_run(out)
        run_training(prep.prep_dir, spec, out, device=device, nproc=nproc, vectors=vectors, progress=progress)
        version = register_and_promote(wh, out, preset=preset, dataset=dataset, prepare=spec.prepare)
        discard_run_dir(out)
    return summary(wh, version, prep.prep_id)
