"""Promotion: does a newly registered version replace its dataset's champion?

The rules:

1. **Champions are per dataset.** A version competes only with the champion of the dataset it was trained
   on (``models/champions/<dataset>.json``). The *serving* champion (``models/champion``: what ``champion``
   means for score, predict and sql) moves implicitly only to a model of its own dataset: a model trained on
   another dataset, however good its validation figure (a one-class toy set scores 1.0), never displaces it.
   ``reviewflow models promote VERSION`` is the explicit override.
2. **Compared on the same data.** When both versions were selected on the same validation rows (equal
   ``eval_set`` fingerprints) their recorded validation accuracies are compared. Otherwise both models score
   the candidate's validation reviews (texts read back from the lake by review id) and those accuracies are
   compared. If that cannot be done (the lake no longer holds the rows, a version predates eval sets), the
   champion stays and the decision says why.
3. **Strictly better wins**; a tie keeps the champion.
4. **Deciding twice changes nothing.** A version that already is its dataset's champion (a retried
   registration step) is left as it is, and no second decision is logged.

Every decision is appended to ``models/promotions.jsonl`` (what was compared, on what, and the outcome), and
decisions are taken under the registry's pointer lock (:func:`pipeline.registry.pointer_lock`), so two
registrations finishing together cannot interleave. A version is verified whole
(:func:`pipeline.registry.verify_version`: every checked file against its SHA-256, config, name, a real folder)
inside that lock before it is decided on and again where the pointer moves
(:func:`pipeline.registry.set_champion`): a damaged or altered version is refused with an ``IntegrityError``,
no pointer moves and no decision is logged.
"""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pyarrow.compute as pc
import pyarrow.dataset as pads
import pyarrow.parquet as pq
from pipeline.core.config import Warehouse
from pipeline.core.errors import ReviewflowError
from pipeline.ingest.lake import read_table
from pipeline import registry
from pipeline.serve.predictor import Predictor

LOG = "promotions.jsonl"
LOCK_TIMEOUT = 300.0    # seconds to wait for another registration's promotion decision
ALREADY = "already the champion of its dataset"


@dataclass
class Decision:
    version: str
    dataset: str | None
    promoted: bool                  # became its dataset's champion
    serving: bool                   # ... and the serving champion
    reason: str
    champion_before: str | None     # the dataset's champion it was compared with
    compared_on: str | None = None  # what data the two accuracies were measured on
    candidate_accuracy: float | None = None
    champion_accuracy: float | None = None
    comparison: dict | None = None  # a side-by-side check on the user's table it was based on (models compare)


def _lock(wh: Warehouse):
    """The registry's pointer lock, waiting at most :data:`LOCK_TIMEOUT` s (then ``TemporaryFailure``, exit 75)."""
    return registry.pointer_lock(wh, timeout=LOCK_TIMEOUT)


def _log(wh: Warehouse, decision: Decision) -> None:
    record = asdict(decision) | {"at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")}
    with open(wh.models / LOG, "a", encoding="utf-8") as fh:
        fh.write(json.dumps(record, sort_keys=True) + "\n")


def _eval_rows(wh: Warehouse, mv: registry.ModelVersion) -> tuple[list[str], np.ndarray]:
    """The texts and labels of ``mv``'s validation rows, read back from its dataset in the lake."""
    path = mv.path / registry.EVAL_SET
    if not path.is_file():
        raise ReviewflowError(f"{mv.version} has no {registry.EVAL_SET} (registered before eval sets)")
    registry.verify_files(mv, (registry.EVAL_SET,))
    ev = pq.read_table(path)
    rows = read_table(wh, mv.config["dataset"], columns=["review_id", "text"],
                      filter=pads.field("review_id").isin(ev.column("review_id")))
    text_of = dict(zip(rows.column("review_id").to_pylist(), rows.column("text").to_pylist()))
    ids = ev.column("review_id").to_pylist()
    missing = sum(1 for i in ids if i not in text_of)
    if missing:
        raise ReviewflowError(f"{missing} of {len(ids)} validation reviews of {mv.version} are no longer in "
                              f"dataset {mv.config['dataset']!r}")
    labels = pc.fill_null(ev.column("label"), -1).to_numpy(zero_copy_only=False)
    return [text_of[i] for i in ids], labels


def _accuracy(mv: registry.ModelVersion, texts: list[str], labels: np.ndarray) -> float:
    probs = Predictor(mv.path, version=mv.version, device="cpu").predict_proba(texts)
    return float(np.mean((probs >= 0.5) == (labels == 1)))   # NaN (nothing to score) counts as wrong


def compare(wh: Warehouse, cand: registry.ModelVersion, champ: registry.ModelVersion) -> tuple[float, float, str]:
    """(candidate accuracy, champion accuracy, what they were measured on), on the same evaluation data."""
    fp_cand = (cand.metrics.get("eval_set") or {}).get("sha256")
    fp_champ = (champ.metrics.get("eval_set") or {}).get("sha256")
    if fp_cand and fp_cand == fp_champ and cand.val_accuracy is not None and champ.val_accuracy is not None:
        return cand.val_accuracy, champ.val_accuracy, f"recorded validation accuracy, same eval set {fp_cand[:12]}"
    texts, labels = _eval_rows(wh, cand)
    return (_accuracy(cand, texts, labels), _accuracy(champ, texts, labels),
            f"{len(texts)} validation reviews of {cand.version}, re-scored by both models")


def _decide(wh: Warehouse, version: str) -> Decision:
    cand = registry.get(wh, version)
    dataset = cand.config.get("dataset")
    serving = registry.champion(wh)
    current = registry.champion(wh, dataset) if dataset else None
    if current == version:
        return Decision(version, dataset, True, serving == version, ALREADY, current)
    if current is None:
        moves_serving = serving is None
        why = f"first model of dataset {dataset!r}" if dataset else "no dataset recorded"
        if not moves_serving:
            why += (f"; the serving champion stays {serving} (dataset "
                    f"{registry.dataset_of(wh, serving)!r}): a model of another dataset never replaces it "
                    f"implicitly (use `reviewflow models promote {version}`)")
        if dataset is None and serving is not None:
            return Decision(version, dataset, False, False, why, None)
        return Decision(version, dataset, True, moves_serving, why, None)
    champ = registry.get(wh, current)
    try:
        acc_cand, acc_champ, on = compare(wh, cand, champ)
    except ReviewflowError as exc:
        return Decision(version, dataset, False, False, f"kept {current}: cannot compare on the same data ({exc})",
                        current)
    won = acc_cand > acc_champ
    verdict = "beats" if won else "does not beat"
    return Decision(version, dataset, won, won and serving == current,
                    f"{version} {verdict} {current}: accuracy {acc_cand:.4f} vs {acc_champ:.4f}", current, on,
                    acc_cand, acc_champ)


def maybe_promote(wh: Warehouse, version: str) -> Decision:
    """Promote ``version`` if it beats its dataset's champion on the same evaluation data (module doc). A version
    that does not verify is refused (``IntegrityError``) before anything is decided or logged."""
    with _lock(wh):
        registry.verify_version(wh, version)
        decision = _decide(wh, version)
        if decision.reason == ALREADY:
            return decision
        if decision.promoted:
            registry.set_champion(wh, version, serving=decision.serving, reason=decision.reason)
        _log(wh, decision)
        return decision


def promote(wh: Warehouse, version: str, reason: str = "explicit", comparison: dict | None = None) -> Decision:
    """Make ``version`` (a version or alias) the serving champion and its dataset's champion, whatever its
    accuracy, once it verifies. ``comparison`` (from :func:`pipeline.score.shadow.compare_models`) is logged with
    the decision."""
    with _lock(wh):
        mv = registry.get(wh, version)
        before = registry.champion(wh)
        mv = registry.set_champion(wh, mv.version, serving=True, reason=reason)
        decision = Decision(mv.version, mv.config.get("dataset"), True, True, reason, before, comparison=comparison)
        _log(wh, decision)
        return decision


def history(wh: Warehouse) -> list[dict]:
    """Every promotion decision, oldest first."""
    path = Path(wh.models) / LOG
    if not path.exists():
        return []
    out = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:    # a line cut by a crash mid-append: skip it
            continue
    return out
