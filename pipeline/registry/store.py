"""The model store: immutable versions under ``<warehouse>/models/<version>/``.

Each version is self-contained for inference::

    model.safetensors   weights                      config.json     ModelConfig + TrainConfig + preset + prep id
    vocab.txt           the vocabulary (copy)        manifest.json   the prep manifest (copy: tokenizer params)
    metrics.json        per-epoch history + final validation accuracy/loss/F1/confusion matrix
    training_curve.png  loss/accuracy per epoch      MODEL_CARD.md   what it is, how it did, how to use it
    reliability.png     calibration before/after (versions trained with calibration)
    environment.json    device and library versions it was trained with
    eval_set.parquet    review ids + labels of the validation rows (promotion compares models on them)

``config.json`` records the SHA-256 of the weights, vocabulary, manifest and eval set (``checksums``); loading a
version verifies them and refuses a mismatch. ``config.json`` ``"int8"`` (decided at registration by
:mod:`pipeline.train.precision`) says whether CPU scoring quantizes the model; ``"calibration"`` holds the
temperature (scores are ``sigmoid(logit / T)``).

Versions are named ``v0001-<preset>-<yyyymmddHHMMSS>`` (number monotonic), published with :func:`publish`
(``atomic_dir``) and never rewritten. What goes into a version is decided by the training side
(:mod:`pipeline.train.register`); which version a name means is :mod:`pipeline.registry.pointers`.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import math
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable

from pipeline.core.config import Warehouse, validate_name
from pipeline.core.errors import IntegrityError, NotFoundError, ReviewflowError
from pipeline.core.storage import atomic_dir, read_json, sha256_file, sweep_dead, write_json_atomic

if TYPE_CHECKING:
    from pipeline.model.network import ModelConfig

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
    def model_config(self) -> "ModelConfig":
        from pipeline.model.network import ModelConfig   # deferred: torch loads to build a model, not to read a version

        return ModelConfig.from_dict(self.config["model"])

    @property
    def val_accuracy(self) -> float | None:
        return self.metrics.get("final", {}).get("val_accuracy")

    @property
    def weights(self) -> Path:
        return self.path / "model.safetensors"

    @property
    def int8(self) -> bool | None:
        """Whether registration kept int8 for CPU scoring (static int8, its ranges in ``"int8_static"``; true
        without them: dynamic int8 from before, which scores in fp32); None for a version registered before the
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
    def temperature_bands(self) -> list[tuple[int, float]]:
        """``[(max_tokens, T), ...]`` ascending: the temperature of texts of at most that many tokens (longer texts:
        :attr:`temperature`). ``calibration.temperature_bands`` when recorded; else, for versions from before it,
        their one short-text T (``temperature_short`` up to ``short_max_tokens``); [] when neither was recorded.
        A malformed entry is an ``IntegrityError``."""
        block = self.config.get("calibration") or {}
        bands = block.get("temperature_bands") if isinstance(block, dict) else None
        if bands is None and isinstance(block, dict) and block.get("temperature_short") is not None:
            bands = [[block.get("short_max_tokens", 0), block["temperature_short"]]]
        out = []
        for entry in bands or []:
            longest, t = entry if isinstance(entry, (list, tuple)) and len(entry) == 2 else (None, None)
            if isinstance(t, bool) or not isinstance(t, (int, float)) or not math.isfinite(t) or t <= 0 \
                    or isinstance(longest, bool) or not isinstance(longest, int) or longest < 0:
                raise IntegrityError(f"model version {self.version}: config.json records length-band calibration "
                                     f"{entry!r}; the file was modified: restore it or train again")
            out.append((longest, float(t)))
        return sorted(out)


def _version_number(name: str) -> int:
    m = _VERSION_RE.match(name)
    return int(m.group(1)) if m else 0


def reserve_version(wh: Warehouse, preset: str) -> str:
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


def eval_set_fingerprint(table) -> str:
    """SHA-256 of the sorted (review_id, label) pairs: equal fingerprints = the same evaluation data."""
    rows = sorted(zip(table.column("review_id").to_pylist(), table.column("label").to_pylist()))
    return hashlib.sha256("".join(f"{i}\t{y}\n" for i, y in rows).encode()).hexdigest()



def publish(wh: Warehouse, version: str, cfg: dict, metrics: dict, environment: dict,
            fill: Callable[[Path], None], describe: Callable[[Path], None] | None = None) -> str:
    """Publish a new immutable version: ``fill(folder)`` writes the payload files (weights, vocab, manifest,
    eval set) into a temp folder, the checksums of :data:`CHECKED_FILES` go into ``config.json``, then
    ``describe(folder)`` adds what is read by people (plots, model card) and the folder is renamed into place.
    Publishing onto an existing version fails."""
    sweep_dead(wh.models)     # half-built version folders of killed registrations
    validate_name(version, "model version")
    target = wh.models / version
    if target.exists():
        raise ReviewflowError(f"model version {version} already exists; versions are immutable")
    try:
        with atomic_dir(target) as tmp:
            fill(tmp)
            cfg["checksums"] = {p.name: sha256_file(p) for p in sorted(tmp.iterdir()) if p.name in CHECKED_FILES}
            write_json_atomic(tmp / "config.json", cfg)
            write_json_atomic(tmp / "metrics.json", metrics)
            write_json_atomic(tmp / "environment.json", environment)
            if describe is not None:
                describe(tmp)
    except OSError as exc:
        if target.exists():
            raise ReviewflowError(f"model version {version} already exists; versions are immutable") from exc
        raise
    return version


def read_version(path: Path) -> ModelVersion:
    """The version in folder ``path`` as recorded (no file checks: :func:`pipeline.registry.verify_version`)."""
    found = {}
    for name in ("config.json", "metrics.json"):
        try:
            found[name] = read_json(path / name)
        except (OSError, ValueError) as exc:
            raise IntegrityError(f"model version {path.name}: {name} is unreadable ({type(exc).__name__}: "
                                 f"{str(exc).splitlines()[0] if str(exc) else ''}); it was modified or damaged: "
                                 f"restore it or train again") from None
    cfg, metrics = found["config.json"], found["metrics.json"]
    if not isinstance(cfg, dict) or not isinstance(cfg.get("model"), dict) or not isinstance(metrics, dict):
        raise IntegrityError(f"model version {path.name}: config.json/metrics.json do not hold a model version")
    return ModelVersion(version=path.name, path=path, config=cfg, metrics=metrics, prep_id=cfg.get("prep_id", ""))


def verify_files(mv: ModelVersion, names: tuple[str, ...] = ("vocab.txt", "manifest.json")) -> None:
    """Check ``names`` against the SHA-256 recorded at registration (versions from before checksums: skipped).
    The weights are checked where they are loaded (:func:`pipeline.model.weights.load_model`)."""
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



def open_version(wh: Warehouse, name: str) -> ModelVersion:
    """The version folder ``name`` (an exact version name); ``NotFoundError`` says what exists."""
    validate_name(name, "model version")
    path = wh.models / name
    if not (path / "config.json").exists():
        known = ", ".join(v.version for v in list_versions(wh)) or "none"
        raise NotFoundError(f"model version {name!r} not found in {wh.models} (known: {known})")
    return read_version(path)
