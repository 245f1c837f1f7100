"""What a training run is told (``TrainConfig``) and what it leaves behind (``TrainResult``), and the names
of the files in its run directory. Both classes are plain data: the loop, the registry and the job read them.
"""

from __future__ import annotations

import dataclasses
from dataclasses import asdict, dataclass, field
from pathlib import Path

from pipeline.core.options import Bound, above, at_least, between, check_options, option_error
from pipeline.core.storage import read_json
from pipeline.model.network import ModelConfig

CHECKPOINT = "checkpoint.pt"      # resumable state, rewritten atomically every epoch
BEST = "best.safetensors"         # weights of the best epoch (``TrainConfig.select``)
RESULT = "result.json"            # written once training has finished
REGISTERED = "registered.json"    # written once the result is a registered version: the dir is then discarded
LR_SCHEDULES = ("constant", "onecycle", "cosine")
SELECTS = ("val_loss", "val_accuracy")
TRAIN_BOUNDS = {"epochs": at_least(1), "batch_size": at_least(1), "lr": above(0), "weight_decay": at_least(0),
                "grad_clip": above(0), "patience": at_least(1), "seed": between(0, 2**32 - 1),
                "max_seconds": above(0), "threads": at_least(1), "ngram_lr": above(0), "part_loss": at_least(0),
                "joint_loss": at_least(0), "embed_lr": above(0), "freeze_embed_epochs": at_least(0),
                "l2": at_least(0), "span_aug": at_least(0), "span_aug_per_review": at_least(1),
                "self_train": at_least(0), "self_train_per_review": at_least(1),
                "self_train_confidence": Bound("in (0.5, 1)", lambda v: 0.5 < v < 1)}
PRETRAINED = ("word2vec",)
OPTIMIZERS = ("adam", "lbfgs")
NOT_IN_RESUME_KEY = ("max_seconds", "threads")   # may change between a crash and its resume: no effect on the model
SPAN_FIELDS = ("span_aug", "span_aug_per_review")    # in the key only when span_aug > 0: runs and versions from
                                                     # before they existed keep matching with augmentation off
SELF_FIELDS = ("self_train", "self_train_teacher", "self_train_per_review", "self_train_confidence")   # likewise


@dataclass
class TrainConfig:
    epochs: int = 10
    batch_size: int = 64
    lr: float = 2e-3
    weight_decay: float = 0.0
    lr_schedule: str = "constant"       # constant | onecycle | cosine
    grad_clip: float | None = 1.0       # None: no clipping
    patience: int | None = 3            # epochs without val-loss improvement; None: never stop early
    select: str = "val_loss"            # metric that picks the best checkpoint: val_loss | val_accuracy
    seed: int = 0
    bucket: bool = True                 # sort by length within windows (fast, little padding)
    trim: bool = True                   # cut each batch to its longest review
    max_seconds: float | None = None    # time budget: stop cleanly between steps
    threads: int | None = None          # torch CPU threads (None: torch default)
    ngram_lr: float = 0.1               # peak lr of the n-gram bag's weights (ModelConfig.ngram_buckets > 0)
    part_loss: float = 0.0              # weight of the losses on the encoder's and the n-gram bag's own logits
    joint_loss: float = 1.0             # weight of the loss on their mix (0 + part_loss 1: an ensemble trained at once)
    pretrained: str | None = None       # word2vec: start the embedding from skip-gram vectors (pipeline.train.pretrain)
    embed_lr: float = 1.0               # the embedding's lr as a share of ``lr`` (discriminative fine-tuning)
    freeze_embed_epochs: int = 0        # keep the embedding frozen for the first epochs (gradual unfreezing)
    optimizer: str = "adam"             # adam (minibatches) | lbfgs: full-batch exact fit of a binary n-gram bag
    l2: float = 0.0                     # lbfgs: the loss is mean BCE + l2 / 2 * ||n-gram weights||^2
    span_aug: float = 0.0               # loss weight of short spans of the training reviews (pipeline.train.augment)
                                        # relative to the full reviews; 0 = no augmentation
    span_aug_per_review: int = 2        # spans drawn per training review (1-3 sentences each) when span_aug > 0
    self_train: float = 0.0             # loss weight of teacher-labelled spans of the unlabelled reviews
                                        # (pipeline.train.selftrain); 0 = off. Excludes span_aug
    self_train_teacher: str | None = None   # the teacher: a registered version's name (not an alias)
    self_train_per_review: int = 3      # spans drawn per unlabelled review
    self_train_confidence: float = 0.9  # a span is kept when the teacher gives it and its review p >= c (or <= 1 - c)

    def __post_init__(self):
        """Check every field (type, range, choice): a bad one is an ``InputError`` naming it."""
        check_options(self, TRAIN_BOUNDS, {"lr_schedule": LR_SCHEDULES, "select": SELECTS, "pretrained": PRETRAINED,
                                           "optimizer": OPTIMIZERS})
        if self.joint_loss == 0 and self.part_loss == 0:
            raise option_error("joint_loss", "> 0 when part_loss is 0 (else no loss is trained)", self.joint_loss)
        for name in ("span_aug", "self_train"):
            if getattr(self, name) and self.optimizer == "lbfgs":
                raise option_error(name, "0 with optimizer lbfgs (a full-batch fit of the reviews)", getattr(self, name))
        if self.self_train and self.span_aug:
            raise option_error("self_train", "0 when span_aug > 0 (one kind of short rows per run)", self.self_train)
        if self.self_train and not (isinstance(self.self_train_teacher, str) and self.self_train_teacher):
            raise option_error("self_train_teacher", "a registered version's name when self_train > 0",
                               self.self_train_teacher)

    @classmethod
    def from_dict(cls, d: dict) -> "TrainConfig":
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})

    def model_key(self) -> dict:
        """The fields that change what is trained: they must match to resume a run or reuse a registered model
        (the time budget and the thread count may differ)."""
        return model_key_of(asdict(self))


def model_key_of(train: dict) -> dict:
    """:meth:`TrainConfig.model_key` of a stored training configuration (a registered version's ``train``)."""
    skip = (NOT_IN_RESUME_KEY + (() if train.get("span_aug") else SPAN_FIELDS)
            + (() if train.get("self_train") else SELF_FIELDS))
    return {k: v for k, v in train.items() if k not in skip}


@dataclass
class TrainResult:
    out_dir: Path
    weights: Path
    model_config: ModelConfig
    train_config: TrainConfig
    prep_dir: Path
    prep_id: str
    history: list[dict]
    metrics: dict                       # final validation metrics of the best checkpoint, with its calibration
                                        # (temperature, val_ece_before/after, reliability) and val_accuracy_short
    stopped: str                        # completed | early_stopping | time_budget
    device: str
    seconds: float
    environment: dict = field(default_factory=dict)
    weights_sha256: str | None = None   # of ``weights`` when training finished; a resume checks it

    @property
    def calibration(self) -> dict | None:
        """``{"temperature": T, "temperature_bands": [[10, T1], [40, T2]], ...}`` fitted on validation after training
        (the bands on the validation reviews' sentences, spans and 20+20-token cuts: texts of at most that many
        tokens use that T; a run from before the bands records ``temperature_short`` up to ``short_max_tokens``
        instead), or None for a run finished before calibration existed (its
        version then scores with T = 1, as it always did)."""
        t = self.metrics.get("temperature")
        if t is None:
            return None
        short, bands = self.metrics.get("temperature_short"), self.metrics.get("temperature_bands")
        extra = {} if short is None else {"temperature_short": float(short),
                                          "short_max_tokens": int(sum(self.metrics.get("short_tokens", [20, 20])))}
        if bands is not None:      # the temperatures the predictor uses by text length (they supersede T_short)
            extra = {"temperature_bands": [[int(n), float(t)] for n, t in bands]}
        return extra | {"temperature": float(t), "method": "temperature scaling (validation NLL)",
                "fit_rows": self.metrics.get("val_n"), "val_ece_before": self.metrics.get("val_ece_before"),
                "val_ece_after": self.metrics.get("val_ece_after")}

    def to_dict(self) -> dict:
        d = {k: getattr(self, k) for k in ("history", "metrics", "stopped", "device", "seconds", "environment",
                                           "prep_id")}
        d.update(out_dir=str(self.out_dir), weights=str(self.weights), prep_dir=str(self.prep_dir),
                 model_config=self.model_config.to_dict(), train_config=asdict(self.train_config),
                 weights_sha256=self.weights_sha256)
        return d

    @classmethod
    def load(cls, out_dir: str | Path) -> "TrainResult":
        d = read_json(Path(out_dir) / RESULT)
        return cls(out_dir=Path(d["out_dir"]), weights=Path(d["weights"]),
                   model_config=ModelConfig.from_dict(d["model_config"]),
                   train_config=TrainConfig.from_dict(d["train_config"]), prep_dir=Path(d["prep_dir"]),
                   prep_id=d["prep_id"], history=d["history"], metrics=d["metrics"], stopped=d["stopped"],
                   device=d["device"], seconds=d["seconds"], environment=d.get("environment", {}),
                   weights_sha256=d.get("weights_sha256"))
