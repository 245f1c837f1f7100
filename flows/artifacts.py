"""Helpers shared by the flows for Prefect artifacts."""

from __future__ import annotations

import re


def artifact_key(*parts: str) -> str:
    """A stable artifact key from ``parts``: Prefect allows only lowercase letters, digits and dashes."""
    key = re.sub(r"-+", "-", re.sub(r"[^a-z0-9-]", "-", "-".join(parts).lower())).strip("-")[:100]
    return key or "reviewflow"
