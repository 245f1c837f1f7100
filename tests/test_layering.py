"""The layers hold at run time, not only in the import graph (lint-imports checks that): a process that scores
a table, answers SQL with sentiment() and reads the registry loads no training code and no Prefect."""

from __future__ import annotations

import subprocess
import sys

import pytest

from score_helpers import make_review_db

SCORING_RUN = """
import importlib, pkgutil, sys
import pipeline.score, pipeline.serve, pipeline.registry
for pkg in (pipeline.score, pipeline.serve, pipeline.registry):
    for m in pkgutil.iter_modules(pkg.__path__):
        if m.name != "__main__":
            importlib.import_module(f"{pkg.__name__}.{m.name}")
from pipeline import registry
from pipeline.core.config import Warehouse
from pipeline.score.sql import run_query
from pipeline.score.writeback import score_table
from pipeline.serve.predictor import load_predictor

from pathlib import Path
wh = Warehouse(Path(sys.argv[1]))
registry.verify_version(wh, registry.champion(wh))
predictor = load_predictor(wh, "champion")
report = score_table(sys.argv[2], "reviews", predictor)
assert report.to_dict()["rows_scored"] > 0, report
run_query(sys.argv[2], "SELECT avg(sentiment(text)) FROM reviews", predictor=predictor)
loaded = sorted(m for m in sys.modules if m.startswith("pipeline.train") or m.split(".")[0] in ("prefect", "flows"))
print("LOADED", loaded)
"""


@pytest.mark.subprocess
def test_scoring_sql_and_the_registry_load_no_training_code(tiny_champion, tmp_path):
    db = tmp_path / "reviews.duckdb"
    make_review_db(db, n=60)
    proc = subprocess.run([sys.executable, "-c", SCORING_RUN, str(tiny_champion.wh.root), str(db)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "LOADED []" in proc.stdout, proc.stdout
