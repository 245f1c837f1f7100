"""``PrepareConfig``: every option of ``prepare``, with its default and its check, written once.

The Prefect flow's parameters and the ``reviewflow prepare`` options take their defaults from these fields,
so this module stays light (no numpy/pyarrow): the CLI imports it at start-up.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from pipeline.core.options import at_least, between, check_options, option_error

TRUNCATE_MODES = ("head", "tail", "head+tail")
PAD_SIDES = ("left", "right")
SPLIT_BY = ("review", "group")


@dataclass(frozen=True)
class PrepareConfig:
    max_len: int = 256
    min_freq: int = 2
    max_vocab: int = 50_000       # total ids incl. <pad>/<unk>; 0 = no cap
    val_fraction: float = 0.25
    seed: int = 0
    truncate: str = "head"        # head|tail|head+tail
    pad_side: str = "right"       # left|right
    strip_html: bool = True
    include_unsup: bool = False
    # train rows each class (0 and 1) needs, else prepare refuses the dataset. 50 is a floor, not a target:
    # below it a model mostly memorises (and a one-class set scores val accuracy 1.0 while learning
    # nothing). Not part of the prep id: it decides whether to prepare, not what is written.
    min_class_rows: int = 50
    # how validation is drawn from the labelled train rows: "review" = each review on its own (stratified by
    # label); "group" = whole groups (the lake's group_id: a movie, a product), so validation judges reviews
    # of things the model never saw; rows without a group are split per review (pipeline.prepare.split).
    split_by: str = "review"

    def __post_init__(self):
        self.validate()

    def validate(self) -> "PrepareConfig":
        """Check every field (type, range, choice): a bad one is an ``InputError`` naming it."""
        check_options(self, {"max_len": at_least(1), "min_freq": at_least(1), "max_vocab": at_least(0),
                             "val_fraction": between(0, 1, high_open=True), "seed": between(0, 2**63 - 1),
                             "min_class_rows": at_least(1)},
                      {"truncate": TRUNCATE_MODES, "pad_side": PAD_SIDES, "split_by": SPLIT_BY})
        if 0 < self.max_vocab < 3:
            raise option_error("max_vocab", ">= 3 (2 special tokens + 1), or 0 for no cap", self.max_vocab)
        return self

    def identity(self) -> dict:
        """The parameters that decide the shards (prep id and manifest ``params``). ``split_by`` is left out
        while it is the default ``"review"``, so preps made before the option existed keep their ids."""
        params = asdict(self)
        params.pop("min_class_rows")
        if params["split_by"] == "review":
            params.pop("split_by")
        return params
