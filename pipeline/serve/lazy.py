"""A registered version that loads its model only when there is something to score.

A re-run of ``reviewflow score`` usually finds nothing to score: every row is already scored by the champion.
Such a run needs the version's *name* (to tell fresh rows from stale ones) and its coverage rule (for the
report), both in ``config.json``; it needs neither torch nor the weights. :class:`LazyPredictor` answers those
from the registry alone and builds the real :class:`pipeline.serve.predictor.Predictor` (torch, weights,
SHA-256 checks) on the first call that scores, or on :meth:`LazyPredictor.load`.

What a bad request would refuse still fails at once, before the table is touched: an unknown version, a
malformed coverage rule, a ``max_error`` the version has no margin for, and a device other than ``cpu`` / ``auto``
(anything else is checked against this machine's devices, which needs torch: such a run loads eagerly).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from pipeline import registry
from pipeline.core.config import Warehouse
from pipeline.model.abstain import margin_for
from pipeline.model.coverage import CoverageRule, rule_from_config

if TYPE_CHECKING:
    from pipeline.serve.predictor import Predictor

#: devices a run can take without asking torch what this machine has (``auto`` resolves when the model loads)
LAZY_DEVICES = ("cpu", "auto")


class LazyPredictor:
    """The predictor of version ``model`` (a version, alias or "champion", resolved once, now), built on first
    use with ``device``, ``batch_size``, ``precision`` and ``max_error`` as :class:`Predictor` takes them.

    Until it is built, :attr:`device` is the device asked for and :attr:`precision` is None (nothing ran);
    afterwards both are the loaded predictor's. Anything else a :class:`Predictor` has is the loaded one's."""

    accepts_arrow = True

    def __init__(self, wh: Warehouse, model: str = "champion", *, device: str = "cpu", batch_size: int | None = None,
                 precision: str = "auto", max_error: float | None = None):
        mv = registry.get(wh, model)
        self.version: str = mv.version
        self.model_dir = mv.path
        #: texts below it are 'unknown' (read from config.json; a malformed rule is refused now)
        self.coverage_rule: CoverageRule = rule_from_config(mv.config, mv.path / "config.json")
        #: the stated error rate (None: off) and its recorded margin; a rate the version has no margin for is refused now
        self.max_error = None if max_error is None else float(max_error)
        self.abstain_margin = None if max_error is None else margin_for(mv.config, max_error, mv.version)
        self._options: dict[str, Any] = dict(device=device, batch_size=batch_size, precision=precision,
                                             max_error=max_error)
        self._device = device
        self._loaded: Predictor | None = None
        if device not in LAZY_DEVICES:
            self.load()

    @property
    def loaded(self) -> bool:
        return self._loaded is not None

    def load(self) -> "Predictor":
        """The real predictor, built once (torch, the weights and their SHA-256 check)."""
        if self._loaded is None:
            from pipeline.serve.predictor import Predictor      # deferred: torch loads here, not before

            self._loaded = Predictor(self.model_dir, version=self.version, **self._options)
        return self._loaded

    @property
    def device(self) -> str:
        return self._loaded.device if self._loaded is not None else self._device

    @property
    def precision(self) -> str | None:
        return self._loaded.precision if self._loaded is not None else None

    def predict_proba(self, texts: Sequence[str | None]):
        return self.load().predict_proba(texts)

    def predict_with_coverage(self, texts):
        return self.load().predict_with_coverage(texts)

    def __getattr__(self, name: str):
        if name.startswith("_"):          # never build a model for a private or special lookup (copy, pickle)
            raise AttributeError(name)
        return getattr(self.load(), name)

