"""Registration: turn a finished training run into a registered version, with the decisions made once, here:
the int8 decision (:mod:`pipeline.train.precision`), the eval set promotion compares on, the plots and the
model card. The champion pointers are not touched (:func:`pipeline.train.job.register_and_promote`)."""

from __future__ import annotations

import shutil
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from pipeline import registry
from pipeline.core.config import Warehouse
from pipeline.core.errors import IntegrityError, NotFoundError
from pipeline.core.storage import read_json, sha256_file
from pipeline.model import abstain
from pipeline.model.calibration import band_temperature
from pipeline.model.coverage import DEFAULT_RULE, coverage_of, rule_from_config
from pipeline.model.device import pick_device
from pipeline.model.quantize import quantize
from pipeline.model.weights import load_model
from pipeline.serve.predictor import calibrated_proba
from pipeline.train.config import TrainResult
from pipeline.train.loader import SplitData, load_split
from pipeline.train.loop import predict_logits
from pipeline.train.precision import Int8Rule, decide


def _eval_set_table(prep_dir: Path) -> pa.Table | None:
    """(review_id, label) of the validation rows the version was selected on, or None without a val split."""
    val = _val_split(prep_dir)
    if val is None:
        return None
    return pa.table({"review_id": pa.array(val.review_ids, pa.string()),
                     "label": pa.array(np.asarray(val.labels, np.int8), pa.int8())})


def _int8_decision(res: TrainResult, val: SplitData | None, rule: Int8Rule) -> dict:
    """:func:`pipeline.model.quantize.decide` for the run's weights on its validation split; an architecture
    torch cannot quantize or run in int8 is recorded as ``int8: false`` with torch's words, never a failed
    registration."""
    model = load_model(Path(res.weights), res.model_config, "cpu")
    try:
        return decide(model, val, rule, weights_sha256=sha256_file(res.weights))
    except (RuntimeError, NotImplementedError, AssertionError, AttributeError, TypeError, ValueError,
            FloatingPointError) as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
        return {"int8": False, "reason": f"static int8 does not run on this model ({first})"}


def _abstain_record(res: TrainResult, cfg: dict, val: SplitData | None) -> dict | None:
    """The ``--max-error`` margins (:func:`pipeline.model.abstain.fit`) on the labelled validation rows the
    version reads (its coverage rule), scored as CPU scoring scores them: the precision registration kept
    (static int8 with its ranges, else fp32), then sigmoid(logit / T) with the short-text T for short rows.
    None without a validation split or labelled rows."""
    if val is None or not len(val):
        return None
    model = load_model(Path(res.weights), res.model_config, "cpu")
    if cfg.get("int8") and isinstance(cfg.get("int8_static"), dict):
        model = quantize(model, cfg["int8_static"]["ranges"])
    logits, labels = predict_logits(model, val, 256, pick_device("cpu"))
    mv = registry.ModelVersion(version="(registering)", path=Path(res.out_dir), config=cfg, metrics={}, prep_id="")
    lengths = np.asarray(val.lengths)
    probs = calibrated_proba(logits, band_temperature(lengths, mv.temperature_bands, mv.temperature))
    known, share = coverage_of(np.asarray(val.ids), lengths)
    rows = (labels >= 0) & (lengths > 0) & rule_from_config(cfg).readable(known, share)
    if not rows.any():
        return None
    return abstain.fit(probs[rows], labels[rows]).to_dict()


def _val_split(prep_dir: Path) -> SplitData | None:
    try:
        return load_split(prep_dir, "val", mmap=True)
    except (NotFoundError, OSError):
        return None


def register(wh: Warehouse, run: TrainResult | str | Path, *, preset: str = "custom", dataset: str | None = None,
             prepare: dict | None = None, version: str | None = None, int8_rule: Int8Rule = Int8Rule()) -> str:
    """Publish a finished training run (``TrainResult`` or its ``out_dir``) as a new immutable version; the
    champion pointers are not touched (see :func:`pipeline.train.job.register_and_promote`).

    The version records the SHA-256 of its files (``config.json`` -> ``checksums``; loading verifies them) and
    the review ids + labels of the validation rows it was selected on (``eval_set.parquet``), so that promotion
    can compare models on the same data. Registering onto an existing version fails.

    It also decides whether CPU scoring runs the model in static int8 (``config.json`` ``"int8"``, and its
    calibrated ranges ``"int8_static"``), from fp32 and int8 accuracy on the validation split and their speeds (``int8_rule``; :mod:`pipeline.train.precision`),
    and records the confidence margins of ``--max-error`` on the validation split (``"abstain"``:
    :mod:`pipeline.model.abstain`).
    """
    res = run if isinstance(run, TrainResult) else TrainResult.load(run)
    if not Path(res.weights).is_file():
        raise IntegrityError(f"training run {res.out_dir} has no weights file {res.weights}; retrain")
    if getattr(res, "weights_sha256", None) and sha256_file(res.weights) != res.weights_sha256:
        raise IntegrityError(f"{res.weights} changed after training finished (SHA-256 differs from the run's "
                             "result.json); retrain")
    version = version if version is not None else registry.reserve_version(wh, preset)
    manifest_path = Path(res.prep_dir) / "manifest.json"
    manifest = read_json(manifest_path) if manifest_path.exists() else {}
    cfg = {"model": res.model_config.to_dict(), "train": asdict(res.train_config), "preset": preset,
           "prep_id": res.prep_id, "dataset": dataset or manifest.get("dataset"),
           "prepare": prepare or manifest.get("params", {}),
           "coverage": DEFAULT_RULE.to_dict()}     # below it, scoring says 'unknown' instead of guessing
    if res.calibration is not None:
        cfg["calibration"] = res.calibration
    metrics = {"final": res.metrics, "history": res.history, "stopped": res.stopped, "seconds": res.seconds,
               "device": res.device}
    eval_set = _eval_set_table(Path(res.prep_dir))
    metrics["int8"] = _int8_decision(res, _val_split(Path(res.prep_dir)), int8_rule)
    cfg["int8"] = metrics["int8"]["int8"]       # what CPU scoring reads; the measurements stay in metrics.json
    if "static" in metrics["int8"]:             # kept: its calibrated ranges, hashed with the weights
        cfg["int8_static"] = metrics["int8"].pop("static")
    unsure = _abstain_record(res, cfg, _val_split(Path(res.prep_dir)))
    if unsure is not None:                      # scoring's --max-error margins (pipeline.model.abstain)
        cfg["abstain"] = unsure
    if eval_set is not None:
        metrics["eval_set"] = {"split": "val", "rows": eval_set.num_rows, "dataset": cfg["dataset"],
                               "sha256": registry.eval_set_fingerprint(eval_set)}

    def fill(tmp: Path) -> None:
        shutil.copyfile(res.weights, tmp / "model.safetensors")
        for name in ("vocab.txt", "manifest.json"):
            if (Path(res.prep_dir) / name).exists():
                shutil.copyfile(Path(res.prep_dir) / name, tmp / name)
        if eval_set is not None:
            pq.write_table(eval_set, tmp / registry.EVAL_SET)

    def describe(tmp: Path) -> None:
        _draw_plots(res, tmp, version)
        (tmp / "MODEL_CARD.md").write_text(registry.model_card(version, cfg, metrics, res.environment))

    return registry.publish(wh, version, cfg, metrics, res.environment | {"device": res.device}, fill, describe)


def _draw_plots(res: TrainResult, folder: Path, version: str) -> None:
    """``training_curve.png`` and, for a calibrated run, ``reliability.png`` into the version ``folder``."""
    from pipeline.core.plots import plot_reliability, plot_training_curve

    bins = res.metrics.get("reliability")
    try:   # matplotlib is imported only when a plot is drawn
        plot_training_curve(res.history, folder / "training_curve.png", title=version)
        if bins:
            plot_reliability(bins["before"], bins["after"], folder / "reliability.png",
                             temperature=res.metrics.get("temperature", 1.0), title=version,
                             bands=res.metrics.get("reliability_bands"))
    except ImportError:  # plotting is a nicety, never a reason to lose a trained model
        pass


