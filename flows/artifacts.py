"""Helpers shared by the flows for Prefect artifacts."""

from __future__ import annotations

import re
from typing import Callable


def artifact_key(*parts: str) -> str:
    """A stable artifact key from ``parts``: Prefect allows only lowercase letters, digits and dashes."""
    key = re.sub(r"-+", "-", re.sub(r"[^a-z0-9-]", "-", "-".join(parts).lower())).strip("-")[:100]
    return key or "reviewflow"


def rows_progress(label: str, description: str, logger, verb: str = "scored") -> tuple[str, Callable[[int, int], None]]:
    """A progress artifact keyed ``score-progress-<label>`` and the ``progress(done, total)`` callback that updates
    it and logs a line ("<label>: done/total rows <verb> (pct%)"). -> (artifact id, callback)."""
    from prefect.artifacts import create_progress_artifact, update_progress_artifact

    art = create_progress_artifact(progress=0.0, key=artifact_key("score-progress", label), description=description)

    def progress(done: int, total: int) -> None:
        pct = 100.0 if total == 0 else round(100.0 * done / total, 1)
        update_progress_artifact(artifact_id=art, progress=pct)
        logger.info("%s: %d/%d rows %s (%.1f%%)", label, done, total, verb, pct)

    return art, progress
