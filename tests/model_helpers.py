"""Tiny trained, registered models for the tests, each trained once per session and handed out as copies.

Training even a tiny model costs seconds on 2 cores; a dozen test modules need one. ``ModelShelf`` (the
session fixture ``model_shelf`` in conftest) trains each *recipe* the first time a test asks for it, keeps
that warehouse as a master nobody touches, and gives every caller its own copy (``shutil.copytree``: well
under 0.1 s), so a test may promote, alias, score into or break its warehouse without changing another's.
A recipe is a function ``(Warehouse) -> {name: version}``; one with a ``base`` starts from a copy of that
recipe's warehouse (a second model beside the champion costs one training, not two).

Shared recipes live here; a recipe only one module uses may live in that module.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from pipeline.core.config import Warehouse

Recipe = Callable[[Warehouse], dict]


@dataclass(frozen=True)
class Shelved:
    """A private copy of a recipe's warehouse and the versions the recipe registered, by name."""
    wh: Warehouse
    versions: dict

    @property
    def champion(self) -> str:
        return self.versions["champion"]


class ModelShelf:
    def __init__(self, root: Path):
        self.root = root
        self._masters: dict[str, tuple[Path, dict]] = {}

    def _master(self, recipe: Recipe) -> tuple[Path, dict]:
        key = f"{recipe.__module__}.{recipe.__qualname__}"
        if key not in self._masters:
            folder = self.root / key.replace("<", "").replace(">", "")
            base = getattr(recipe, "base", None)
            versions = dict(self.copy(base, folder).versions) if base else {}
            wh = Warehouse(folder).ensure()
            versions.update(_pinned(recipe, wh))
            self._masters[key] = (folder, versions)
        return self._masters[key]

    def copy(self, recipe: Recipe, dest: Path) -> Shelved:
        """``recipe``'s warehouse (trained now if this session has not yet) copied to ``dest`` (must not exist)."""
        folder, versions = self._master(recipe)
        shutil.copytree(folder, dest, symlinks=True)
        return Shelved(Warehouse(dest), dict(versions))


def _pinned(recipe: Recipe, wh: Warehouse) -> dict:
    """Run ``recipe`` on one torch thread, then give the caller its thread count back. Training sets the process's
    thread count and keeps it (``TrainConfig.threads``), so without this the model a recipe trains (and what its
    registration decides, e.g. int8) would depend on which test happened to run before the first caller."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return recipe(wh)
    finally:
        torch.set_num_threads(threads)


def based_on(base: Recipe) -> Callable[[Recipe], Recipe]:
    """Decorator: the recipe starts from a copy of ``base``'s warehouse and adds to it."""
    def mark(recipe: Recipe) -> Recipe:
        recipe.base = base
        return recipe
    return mark


# ------------------------------------------------------------------------------------------ shared recipes
def champion(wh: Warehouse) -> dict:
    """The ops tests' tiny champion (ops_helpers.train_tiny_champion): default preset shrunk to 1 epoch of a
    16-wide GRU, trained on dataset 'tiny' of 200 synthetic reviews, registered and promoted. Its scores are
    spread out (no ties at the top, explanations with real weights): more data saturates them."""
    from ops_helpers import train_tiny_champion

    return {"champion": train_tiny_champion(wh, dataset="tiny", n=200)}


@based_on(champion)
def champion_and_other(wh: Warehouse) -> dict:
    """``champion`` plus a second version trained the same way on dataset 'other' (160 reviews), still
    registered but no longer champion: the challenger of the alias / shadow / SQL-function tests."""
    from ops_helpers import train_tiny_champion

    from pipeline import registry
    from pipeline.train import promotion

    champ = registry.champion(wh)
    other = train_tiny_champion(wh, dataset="other", n=160)
    promotion.promote(wh, champ, reason="test setup")
    return {"other": other}


def gru(wh: Warehouse) -> dict:
    """train_helpers' tiny bidirectional GRU (32-token head+tail prep of 240 reviews, max+mean pooling,
    3 epochs), registered and promoted: a model whose preprocessing the coverage / device tests know."""
    from pipeline.train.config import TrainConfig
    from pipeline.train.job import register_and_promote
    from pipeline.train.loop import train
    from train_helpers import tiny_model, tiny_prep

    prep = tiny_prep(wh, n=240)
    run = train(prep, TrainConfig(epochs=3, batch_size=16, lr=0.02, threads=1), wh.tmp / "gru-run", progress=False,
                model=tiny_model())
    return {"champion": register_and_promote(wh, run, preset="tiny", promote=True)}
