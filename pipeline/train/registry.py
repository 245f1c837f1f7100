"""The model registry: immutable versions under ``<warehouse>/models/<version>/`` and a champion pointer.

Each version is self-contained for inference::

    model.safetensors   weights                      config.json     ModelConfig + TrainConfig + preset + prep id
    vocab.txt           the vocabulary (copy)        manifest.json   the prep manifest (copy: tokenizer params)
    metrics.json        per-epoch history + final validation accuracy/loss/F1/confusion matrix
    training_curve.png  loss/accuracy per epoch      MODEL_CARD.md   what it is, how it did, how to use it
    reliability.png     calibration before/after (versions trained with calibration)
    environment.json    device and library versions it was trained with
    eval_set.parquet    review ids + labels of the validation rows (promotion compares models on them)

``config.json`` ``"int8"`` says whether CPU scoring quantizes the model to dynamic int8; it is decided here, at
registration, from fp32 and int8 accuracy on the validation split and their measured speeds
(:mod:`pipeline.train.quantize`; the measurements are ``metrics.json`` ``"int8"`` and in the model card).
Versions registered before it have no entry and score in fp32.

``config.json`` records the calibration (``"calibration": {"temperature": T, ...}``: scores are
``sigmoid(logit / T)``; a version without the block scores with T = 1) and the SHA-256 of the weights,
vocabulary, manifest and eval set (``checksums``); loading a version verifies them and refuses a mismatch.

Versions are named ``v0001-<preset>-<yyyymmddHHMMSS>`` (number monotonic), published with
``atomic_dir`` and never rewritten. ``<warehouse>/models/champion`` is a small JSON pointer, written
atomically. Champions are per dataset (``<warehouse>/models/champions/<dataset>.json``). This module
publishes and reads versions and pointers; *whether* a new version becomes champion is decided by
:mod:`pipeline.train.promotion`, and :func:`pipeline.train.job.register_and_promote` does both.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import math
import os
import re
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.core.config import Warehouse, validate_name
from pipeline.core.errors import IntegrityError, NotFoundError, ReviewflowError
from pipeline.core.storage import atomic_dir, read_json, sha256_file, sweep_dead, write_json_atomic
from pipeline.train import aliases
from pipeline.train.coverage import DEFAULT_RULE
from pipeline.train.config import TrainResult
from pipeline.train.loader import SplitData, load_split
from pipeline.train.model import ModelConfig
from pipeline.train.quantize import Int8Rule, decide
from pipeline.train.weights import load_model

CHAMPION = "champion"          # the serving champion: what `champion` means for score / predict / sql
CHAMPIONS = "champions"        # champions/<dataset>.json: the champion of each dataset
EVAL_SET = "eval_set.parquet"  # (review_id, label) of the validation rows a version was selected on
CHECKED_FILES = ("model.safetensors", "vocab.txt", "manifest.json", EVAL_SET)
_VERSION_RE = re.compile(r"^v(\d{4,})-")


@dataclass
class ModelVersion:
    version: str
    path: Path
    config: dict          # {"model": ..., "train": ..., "preset": ..., "prep_id": ..., "prepare": ...}
    metrics: dict         # {"final": {...}, "history": [...], ...}
    prep_id: str

    @property
    def model_config(self) -> ModelConfig:
        return ModelConfig.from_dict(self.config["model"])

    @property
    def val_accuracy(self) -> float | None:
        return self.metrics.get("final", {}).get("val_accuracy")

    @property
    def weights(self) -> Path:
        return self.path / "model.safetensors"

    @property
    def int8(self) -> bool | None:
        """Whether registration kept dynamic int8 for CPU scoring; None for a version registered before the
        decision existed (it scores in fp32). A recorded value that is not a bool is an ``IntegrityError``."""
        value = self.config.get("int8")
        if value is not None and not isinstance(value, bool):
            raise IntegrityError(f"model version {self.version}: config.json records int8 {value!r}, not true/false; "
                                 "the file was modified: restore it or train again")
        return value

    @property
    def int8_reason(self) -> str:
        """Why int8 was or was not kept (the model card's words), or why there is no decision."""
        if self.int8 is None:
            return "registered before int8 was measured at registration"
        return str((self.metrics.get("int8") or {}).get("reason", "no reason recorded"))

    @property
    def temperature(self) -> float:
        """The calibration temperature T (scores are ``sigmoid(logit / T)``); 1.0 for a version registered
        without one. A recorded T that is not a finite number > 0 is an ``IntegrityError``."""
        block = self.config.get("calibration")
        if block is None:
            return 1.0
        t = block.get("temperature") if isinstance(block, dict) else None
        if isinstance(t, bool) or not isinstance(t, (int, float)) or not math.isfinite(t) or t <= 0:
            raise IntegrityError(f"model version {self.version}: config.json records calibration temperature "
                                 f"{t!r}, which is not a number > 0; the file was modified: restore it or train again")
        return float(t)

    @property
    def short_temperature(self) -> tuple[float, int]:
        """(T for short texts, the longest text in tokens it applies to); (T, 0) when none was recorded."""
        block = self.config.get("calibration") or {}
        t, longest = block.get("temperature_short"), block.get("short_max_tokens", 0)
        if t is None:
            return self.temperature, 0
        if isinstance(t, bool) or not isinstance(t, (int, float)) or not math.isfinite(t) or t <= 0 \
                or not isinstance(longest, int) or longest < 0:
            raise IntegrityError(f"model version {self.version}: config.json records short-text calibration "
                                 f"{t!r} / {longest!r}; the file was modified: restore it or train again")
        return float(t), longest


def _version_number(name: str) -> int:
    m = _VERSION_RE.match(name)
    return int(m.group(1)) if m else 0


def _reserve_version(wh: Warehouse, preset: str) -> str:
    """Next version name; ``os.mkdir`` of a hidden marker makes the number unique across processes."""
    wh.models.mkdir(parents=True, exist_ok=True)
    n = max((_version_number(p.name.lstrip(".")) for p in wh.models.iterdir()), default=0) + 1
    stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%d%H%M%S")
    slug = re.sub(r"[^A-Za-z0-9_]+", "_", preset)[:20] or "custom"
    while True:
        try:
            os.mkdir(wh.models / f".v{n:04d}.reserved")
            return f"v{n:04d}-{slug}-{stamp}"
        except FileExistsError:
            n += 1


def _pretrained_lines(t: dict, f: dict) -> list[str]:
    """Where the embedding started, and how it was fine-tuned (discriminative lr, gradual unfreezing)."""
    if not t.get("pretrained"):
        return []
    p = f.get("pretrained", {})
    return [f"- embedding initialised from {t['pretrained']} vectors `{p.get('path', '?')}` (sha256 "
            f"`{str(p.get('vectors_sha256', '?'))[:12]}`), fine-tuned at {t.get('embed_lr', 1.0)} x lr, frozen for "
            f"the first {t.get('freeze_embed_epochs', 0)} epoch(s)"]


def model_card(version: str, cfg: dict, metrics: dict, env: dict) -> str:
    m, t, f = cfg["model"], cfg["train"], metrics["final"]
    enc = m["encoder"].upper() if m["encoder"] != "transformer" else "Transformer"
    direction = "bidirectional " if m["bidirectional"] and m["encoder"] != "transformer" else ""
    cm = f.get("val_confusion", [[0, 0], [0, 0]])
    grams = {1: "unigrams", 3: "unigrams + hashed bigrams and trigrams"}.get(m.get("ngram_n", 2),
                                                                            "unigrams + hashed bigrams")
    nb = f", NB log-count-ratio scaled (alpha {m['ngram_nb_alpha']})" if m.get("ngram_nb_alpha") else ""
    if m["encoder"] == "none":
        arch = [f"- n-grams only (NBSVM style): a linear bag of {m['vocab_size']:,} {grams} "
                f"({m.get('ngram_buckets', 0):,} hash buckets){nb}, mean -> logit; no embedding or encoder",
                f"- n-gram dropout {m.get('ngram_dropout', 0.0)}"]
    else:
        arch = [f"- embedding {m['vocab_size']} x {m['embed_dim']} (padding id 0) -> {m['layers']}-layer "
                f"{direction}{enc} (hidden {m['hidden']}) -> {m['pooling']} pooling -> linear logit",
                f"- dropout {m['dropout']}, embedding dropout {m['embed_dropout']}, "
                f"orthogonal init {m['orthogonal_init']}"]
    lines = [
        f"# Model card: {version}",
        "",
        f"Binary sentiment classifier (P(positive) for review text), preset **{cfg['preset']}**.",
        "",
        "## Architecture",
        arch[0],
        f"- parameters: {f.get('params', '?'):,}" if isinstance(f.get("params"), int) else "- parameters: ?",
        arch[1],
        f"- input: up to {m['max_len']} tokens, {m['pad_side']}-padded"
        + ("" if m.get("exact_lengths", True) else " (lineage: runs over its pads)"),
    ]
    if m.get("ngram_buckets") and m["encoder"] != "none":
        lines += [
            f"- n-gram half: a linear bag of {m['vocab_size']:,} {grams} ({m['ngram_buckets']:,} hash buckets){nb}"
            + f"; logit = {1 - m['ngram_weight']:.2f} x encoder + {m['ngram_weight']:.2f} x n-grams",
            f"- validation accuracy of each half alone: encoder {f.get('val_accuracy_encoder', float('nan')):.4f}, "
            f"n-grams {f.get('val_accuracy_ngram', float('nan')):.4f}",
        ]
    lines += [
        "",
        "## Data",
        f"- prepared shards `{cfg['prep_id']}` of dataset `{cfg.get('dataset', '?')}`; "
        f"prepare params: `{json.dumps(cfg.get('prepare', {}), sort_keys=True)}`",
        "",
        "## Training",
        f"- {len(metrics['history'])} epochs (stopped: {metrics.get('stopped')}), best epoch {f.get('best_epoch')}, "
        f"{metrics.get('seconds', 0):.0f} s on {env.get('device', '?')} (torch {env.get('torch', '?')})",
        f"- batch {t['batch_size']}, lr {t['lr']} ({t['lr_schedule']}), weight decay {t['weight_decay']}, "
        f"grad clip {t['grad_clip']}, patience {t['patience']}",
        *_pretrained_lines(t, f),
        "",
        "## Validation metrics (best checkpoint)",
        "| accuracy | loss | F1 | n |",
        "|---|---|---|---|",
        f"| {f.get('val_accuracy', 0):.4f} | {f.get('val_loss', 0):.4f} | {f.get('val_f1', 0):.4f} | {f.get('val_n')} |",
        "",
        f"Confusion matrix (rows true neg/pos, columns predicted neg/pos): {cm}",
    ]
    if "test_accuracy" in f:
        lines += ["", f"Test accuracy: {f['test_accuracy']:.4f} (n={f.get('test_n')})"]
    lines += _trust_lines(f)
    lines += _int8_lines(metrics.get("int8"))
    lines += ["", "## Use",
              f"    reviewflow predict \"a wonderful, moving film\" --model {version}",
              "", "## Limitations",
              "English movie reviews (IMDb-like); sarcasm, negation far from the cue word and other domains "
              "degrade accuracy. Words outside the vocabulary map to `<unk>`."
              + _coverage_line(cfg.get("coverage")), ""]
    return "\n".join(lines)


def _coverage_line(rule: dict | None) -> str:
    if not rule:
        return ""
    return (f" A text with fewer than {rule.get('min_known')} known token(s), or under "
            f"{100 * float(rule.get('min_share', 0)):.0f}% known tokens, is labelled `unknown` with no score.")


def _int8_lines(q: dict | None) -> list[str]:
    """The model card's CPU int8 section, from the registration's measurements (``metrics["int8"]``)."""
    if not q:
        return []
    lines = ["", "## CPU scoring precision (dynamic int8)",
             f"- decision: **int8: {'true' if q['int8'] else 'false'}**: {q.get('reason', '')}"]
    if "int8_val_accuracy" in q:
        lines += [f"- validation accuracy ({q['val_rows']:,} rows): fp32 {q['fp32_val_accuracy']:.4f}, int8 "
                  f"{q['int8_val_accuracy']:.4f} (delta {q['delta_points']:+.2f} points)",
                  f"- speed on a fixed sample of {q['sample_rows']:,} validation rows ({q.get('threads')} core, "
                  f"torch {q.get('torch')}): fp32 {q['fp32_rows_per_s']:,.0f} rows per CPU second, int8 "
                  f"{q['int8_rows_per_s']:,.0f} ({q['speedup']:.2f}x)"]
    lines.append("- CPU scoring follows this decision (a predictor loaded with `precision=\"fp32\"` ignores it); "
                 "CUDA scores in bf16")
    return lines


def _trust_lines(f: dict) -> list[str]:
    """The model card's calibration and short-text section, from the final metrics (``f``)."""
    lines = ["", "## Calibration and short texts"]
    if f.get("temperature") is None:
        lines.append("- not calibrated (trained before calibration existed): scores are sigmoid(logit), T = 1")
    else:
        n = f.get("val_n")
        lines += [
            f"- temperature T = {f['temperature']:.4f}, fitted on the {n:,} validation reviews by minimising their "
            "NLL; scores are sigmoid(logit / T), so labels, accuracy and ranking do not change"
            if isinstance(n, int) else f"- temperature T = {f['temperature']:.4f}",
            f"- ECE (15 equal-width confidence bins): {f['val_ece_before']:.4f} before, {f['val_ece_after']:.4f} "
            f"after scaling on the same rows"
            + (f" ({f['val_ece_after_crossfit']:.4f} with T fitted on the other half of them)"
               if f.get("val_ece_after_crossfit") is not None else ""),
            "- reliability diagram: `reliability.png`"]
    if f.get("val_accuracy_short") is not None:
        head, tail = f.get("short_tokens", [20, 20])
        lines.append(f"- short texts (validation reviews cut to their first {head} and last {tail} tokens): "
                     f"accuracy {f['val_accuracy_short']:.4f}, against {f.get('val_accuracy', float('nan')):.4f} "
                     "on the full reviews"
                     + (f"; their ECE after scaling {f['val_ece_short']:.4f}" if f.get("val_ece_short") is not None
                        else ""))
        if f.get("temperature_short") is not None:
            lines.append(f"- texts of at most {head + tail} tokens use their own temperature T = "
                         f"{f['temperature_short']:.4f}, fitted on those cut reviews: their ECE "
                         f"{f.get('val_ece_short_before', float('nan')):.4f} unscaled, "
                         f"{f.get('val_ece_short_full_t', float('nan')):.4f} with the full-review T, "
                         f"{f['val_ece_short']:.4f} with their own")
    return lines


def _eval_set_table(prep_dir: Path) -> pa.Table | None:
    """(review_id, label) of the validation rows the version was selected on, or None without a val split."""
    val = _val_split(prep_dir)
    if val is None:
        return None
    return pa.table({"review_id": pa.array(val.review_ids, pa.string()),
                     "label": pa.array(np.asarray(val.labels, np.int8), pa.int8())})


def eval_set_fingerprint(table) -> str:
    """SHA-256 of the sorted (review_id, label) pairs: equal fingerprints = the same evaluation data."""
    rows = sorted(zip(table.column("review_id").to_pylist(), table.column("label").to_pylist()))
    return hashlib.sha256("".join(f"{i}\t{y}\n" for i, y in rows).encode()).hexdigest()


def _int8_decision(res: TrainResult, val: SplitData | None, rule: Int8Rule) -> dict:
    """:func:`pipeline.train.quantize.decide` for the run's weights on its validation split; an architecture
    torch cannot quantize or run in int8 is recorded as ``int8: false`` with torch's words, never a failed
    registration."""
    model = load_model(Path(res.weights), res.model_config, "cpu")
    try:
        return decide(model, val, rule)
    except (RuntimeError, NotImplementedError, AssertionError, AttributeError, TypeError) as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
        return {"int8": False, "reason": f"dynamic int8 does not run on this model ({first})"}


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

    It also decides whether CPU scoring runs the model in dynamic int8 (``config.json`` ``"int8"``), from fp32
    and int8 accuracy on the validation split and their speeds (``int8_rule``; :mod:`pipeline.train.quantize`).
    """
    res = run if isinstance(run, TrainResult) else TrainResult.load(run)
    sweep_dead(wh.models)     # half-built version folders of killed registrations
    if not Path(res.weights).is_file():
        raise IntegrityError(f"training run {res.out_dir} has no weights file {res.weights}; retrain")
    if getattr(res, "weights_sha256", None) and sha256_file(res.weights) != res.weights_sha256:
        raise IntegrityError(f"{res.weights} changed after training finished (SHA-256 differs from the run's "
                             "result.json); retrain")
    if version is None:
        version = _reserve_version(wh, preset)
    validate_name(version, "model version")
    target = wh.models / version
    if target.exists():
        raise ReviewflowError(f"model version {version} already exists; versions are immutable")
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
    if eval_set is not None:
        metrics["eval_set"] = {"split": "val", "rows": eval_set.num_rows, "dataset": cfg["dataset"],
                               "sha256": eval_set_fingerprint(eval_set)}
    try:
        with atomic_dir(target) as tmp:
            shutil.copyfile(res.weights, tmp / "model.safetensors")
            for name in ("vocab.txt", "manifest.json"):
                if (Path(res.prep_dir) / name).exists():
                    shutil.copyfile(Path(res.prep_dir) / name, tmp / name)
            if eval_set is not None:
                pq.write_table(eval_set, tmp / EVAL_SET)
            cfg["checksums"] = {p.name: sha256_file(p) for p in sorted(tmp.iterdir()) if p.name in CHECKED_FILES}
            write_json_atomic(tmp / "config.json", cfg)
            write_json_atomic(tmp / "metrics.json", metrics)
            write_json_atomic(tmp / "environment.json", res.environment | {"device": res.device})
            _draw_plots(res, tmp, version)
            (tmp / "MODEL_CARD.md").write_text(model_card(version, cfg, metrics, res.environment))
    except OSError as exc:
        if target.exists():
            raise ReviewflowError(f"model version {version} already exists; versions are immutable") from exc
        raise
    return version


def _draw_plots(res: TrainResult, folder: Path, version: str) -> None:
    """``training_curve.png`` and, for a calibrated run, ``reliability.png`` into the version ``folder``."""
    from pipeline.core.plots import plot_reliability, plot_training_curve

    bins = res.metrics.get("reliability")
    try:   # matplotlib is imported only when a plot is drawn
        plot_training_curve(res.history, folder / "training_curve.png", title=version)
        if bins:
            plot_reliability(bins["before"], bins["after"], folder / "reliability.png",
                             temperature=res.metrics.get("temperature", 1.0), title=version)
    except ImportError:  # plotting is a nicety, never a reason to lose a trained model
        pass


def read_version(path: Path) -> ModelVersion:
    try:
        cfg = read_json(path / "config.json")
        metrics = read_json(path / "metrics.json")
    except (OSError, ValueError) as exc:
        raise IntegrityError(f"model version {path.name} is unreadable ({type(exc).__name__}: {exc}); "
                             f"it was modified or damaged: restore it or train again") from None
    if not isinstance(cfg, dict) or not isinstance(cfg.get("model"), dict) or not isinstance(metrics, dict):
        raise IntegrityError(f"model version {path.name}: config.json/metrics.json do not hold a model version")
    return ModelVersion(version=path.name, path=path, config=cfg, metrics=metrics, prep_id=cfg.get("prep_id", ""))


def verify_files(mv: ModelVersion, names: tuple[str, ...] = ("vocab.txt", "manifest.json")) -> None:
    """Check ``names`` against the SHA-256 recorded at registration (versions from before checksums: skipped).
    The weights are checked where they are loaded (:func:`pipeline.train.weights.load_model`)."""
    recorded = mv.config.get("checksums") or {}
    for name in names:
        want = recorded.get(name)
        if want is None:
            continue
        path = mv.path / name
        if not path.is_file():
            raise IntegrityError(f"model version {mv.version} lacks {name}; restore it or train again")
        if sha256_file(path) != want:
            raise IntegrityError(f"{path} does not match the SHA-256 recorded when {mv.version} was registered "
                                 f"(the file was modified); restore it or train again")


def list_versions(wh: Warehouse) -> list[ModelVersion]:
    """Every readable version, oldest first (a damaged one is left out here; ``get`` names its problem)."""
    if not wh.models.exists():
        return []
    dirs = [p for p in wh.models.iterdir() if p.is_dir() and _VERSION_RE.match(p.name)
            and (p / "config.json").exists()]
    out = []
    for p in sorted(dirs, key=lambda p: _version_number(p.name)):
        try:
            out.append(read_version(p))
        except IntegrityError:
            continue
    return out


def _read_pointer(path: Path) -> dict | None:
    if not path.exists():
        return None
    try:
        ptr = read_json(path)
        validate_name(ptr["version"], "model version")
        return ptr
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise IntegrityError(f"champion pointer {path} is damaged ({type(exc).__name__}); set it again with "
                             f"`reviewflow models promote VERSION`") from None


def champion(wh: Warehouse, dataset: str | None = None) -> str | None:
    """The serving champion (what ``champion`` means for score/predict/sql), or the champion of ``dataset``."""
    if dataset is None:
        ptr = _read_pointer(wh.models / CHAMPION)
    else:
        ptr = _read_pointer(wh.models / CHAMPIONS / f"{validate_name(dataset, 'dataset name')}.json")
        if ptr is None:   # warehouses from before per-dataset champions: the serving one, if it is of this dataset
            serving = _read_pointer(wh.models / CHAMPION)
            if serving is not None and dataset_of(wh, serving["version"]) == dataset:
                ptr = serving
    return ptr["version"] if ptr else None


def champions(wh: Warehouse) -> dict[str, str]:
    """``{dataset: version}`` of every per-dataset champion."""
    out = {}
    if (wh.models / CHAMPIONS).is_dir():
        for p in sorted((wh.models / CHAMPIONS).glob("*.json")):
            out[p.stem] = _read_pointer(p)["version"]
    serving = champion(wh)
    if serving is not None:
        out.setdefault(dataset_of(wh, serving) or "?", serving)
    return out


def dataset_of(wh: Warehouse, version: str) -> str | None:
    try:
        return get(wh, version).config.get("dataset")
    except NotFoundError:
        return None


def get(wh: Warehouse, version: str = CHAMPION) -> ModelVersion:
    """A version by name, alias (:mod:`pipeline.train.aliases`) or the champion; ``NotFoundError`` says what
    exists."""
    name = champion(wh) if version == CHAMPION else (aliases.resolve(wh, version) or version)
    if name is None:
        raise NotFoundError("no champion model yet; train one with `reviewflow train --dataset NAME`")
    validate_name(name, "model version")
    path = wh.models / name
    if not (path / "config.json").exists():
        known = ", ".join(v.version for v in list_versions(wh)) or "none"
        raise NotFoundError(f"model version {name!r} not found in {wh.models} (known: {known})")
    return read_version(path)


def set_champion(wh: Warehouse, version: str, *, serving: bool = True, reason: str = "") -> None:
    """Point ``version``'s dataset champion (and, if ``serving``, the serving champion) at ``version``."""
    mv = get(wh, version)
    pointer = {"version": mv.version, "dataset": mv.config.get("dataset"), "val_accuracy": mv.val_accuracy,
               "reason": reason, "promoted_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")}
    if mv.config.get("dataset"):
        write_json_atomic(wh.models / CHAMPIONS / f"{validate_name(mv.config['dataset'], 'dataset name')}.json",
                          pointer)
    if serving:
        write_json_atomic(wh.models / CHAMPION, pointer)

