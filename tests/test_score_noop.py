"""A run with nothing to score loads no model (issue 21, fixed cost): the version is resolved from the registry,
the table surveyed read-only, and torch and the weights load only when a row needs a score.

Checked through the real DuckDB file and a real tiny registered model: the no-op run leaves the predictor
unbuilt and still records a completed audit row; a run with rows builds it before anything is written (a model
that fails verification leaves the file byte-identical); the requests a model would refuse are refused on a
no-op too; and a fresh process re-scoring a scored table through the CLI never imports torch.
"""

from __future__ import annotations

import hashlib
import subprocess
import sys

import duckdb
import numpy as np
import pytest

from score_helpers import make_review_db, query_rows

from pipeline.core.errors import InputError, IntegrityError, NotFoundError
from pipeline.score.writeback import score_table

from pipeline.serve.lazy import LazyPredictor


def _digest(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture
def scored(tiny_champion, tmp_path):
    """A table of 80 reviews (two with no text) scored once by the tiny champion."""
    db = make_review_db(tmp_path / "reviews.duckdb", n=80)
    with duckdb.connect(str(db)) as con:
        con.execute("UPDATE reviews SET text = NULL WHERE review_id IN (SELECT min(review_id) FROM reviews)")
        con.execute("UPDATE reviews SET text = '  ' WHERE review_id IN (SELECT max(review_id) FROM reviews)")
    first = score_table(db, "reviews", LazyPredictor(tiny_champion.wh, "champion"))
    assert first.rows_scored + first.rows_unknown == 78 and first.rows_skipped == 2
    return tiny_champion, db


def test_nothing_to_score_builds_no_model_and_still_records_the_run(scored):
    shelf, db = scored
    predictor = LazyPredictor(shelf.wh, "champion")
    report = score_table(db, "reviews", predictor)
    assert not predictor.loaded
    assert (report.rows_to_score, report.rows_scored, report.rows_up_to_date, report.rows_skipped) == (0, 0, 78, 2)
    runs = query_rows(db, "SELECT status, model, rows_scored, device, precision FROM sentiment_runs "
                          "ORDER BY started_at")
    assert len(runs) == 2 and runs[-1][:3] == ("completed", shelf.champion, 0)
    assert runs[-1][3:] == ("cpu", None)            # nothing ran: the device asked for, no precision
    assert runs[0][3:] == ("cpu", "fp32")           # the first run built the model: what it picked


@pytest.mark.parametrize("change", ["new_row", "stale_model", "rescore", "blank_filled"])
def test_rows_to_score_build_the_model_before_anything_is_written(scored, change):
    shelf, db = scored
    with duckdb.connect(str(db)) as con:
        if change == "new_row":
            con.execute("INSERT INTO reviews (review_id, text) VALUES ('zz_new', 'a wonderful, moving film')")
        elif change == "stale_model":
            con.execute("UPDATE reviews SET sentiment_model = 'v0000-other' WHERE review_id IN "
                        "(SELECT review_id FROM reviews WHERE text IS NOT NULL ORDER BY review_id LIMIT 3)")
        elif change == "blank_filled":
            con.execute("UPDATE reviews SET text = 'dull and far too long' WHERE text = '  '")
    predictor = LazyPredictor(shelf.wh, "champion")
    report = score_table(db, "reviews", predictor, rescore=change == "rescore")
    assert predictor.loaded and predictor.precision == "fp32"
    expected = {"new_row": 1, "stale_model": 3, "rescore": 78, "blank_filled": 1}[change]
    assert report.rows_scored + report.rows_unknown == expected
    assert query_rows(db, "SELECT device, precision FROM sentiment_runs ORDER BY started_at DESC LIMIT 1") == \
        [("cpu", "fp32")]


def test_a_table_never_scored_has_no_sentiment_columns_yet_and_is_all_candidates(tiny_champion, tmp_path):
    db = make_review_db(tmp_path / "fresh.duckdb", n=30)
    predictor = LazyPredictor(tiny_champion.wh, "champion")
    report = score_table(db, "reviews", predictor)
    assert predictor.loaded and report.rows_scored + report.rows_unknown == 30


def test_a_model_that_fails_verification_fails_before_a_byte_is_written(scored):
    shelf, db = scored
    with duckdb.connect(str(db)) as con:
        con.execute("INSERT INTO reviews (review_id, text) VALUES ('zz_new', 'a wonderful, moving film')")
    weights = shelf.wh.models / shelf.champion / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF
    weights.chmod(0o644)
    weights.write_bytes(bytes(data))
    before = _digest(db)
    predictor = LazyPredictor(shelf.wh, "champion")
    with pytest.raises(IntegrityError, match="SHA-256|sha256|checksum"):
        score_table(db, "reviews", predictor)
    assert _digest(db) == before


@pytest.mark.parametrize("bad", [
    dict(model="v9999-nope"),
    dict(max_error=0.5),
    dict(max_error=0.0123),
])
def test_what_a_model_would_refuse_is_refused_on_a_no_op_too(scored, bad):
    shelf, db = scored
    before = _digest(db)
    options = dict(model="champion") | bad
    with pytest.raises((InputError, NotFoundError)):
        LazyPredictor(shelf.wh, options.pop("model"), **options)
    assert _digest(db) == before


def test_a_device_this_machine_lacks_is_refused_at_once(tiny_champion):
    torch = pytest.importorskip("torch")
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    with pytest.raises(InputError, match="cuda"):
        LazyPredictor(tiny_champion.wh, "champion", device="cuda")


def test_the_lazy_predictor_scores_exactly_as_the_loaded_one(tiny_champion):
    from pipeline.serve.predictor import load_predictor

    texts = ["a wonderful, moving film", "dull", None, "", "不知道", "the plot was thin but the acting great"] * 5
    lazy = LazyPredictor(tiny_champion.wh, "champion")
    eager = load_predictor(tiny_champion.wh, "champion")
    a, b = lazy.predict_with_coverage(texts), eager.predict_with_coverage(texts)
    for field in ("score", "coverage", "known", "tokens", "readable"):
        np.testing.assert_array_equal(getattr(a, field), getattr(b, field))      # NaN where NaN, bit for bit
    assert lazy.version == eager.version and lazy.coverage_rule == eager.coverage_rule


NO_OP_RUN = """
import sys
from typer.testing import CliRunner
from flows.cli import app
out = CliRunner().invoke(app, ["score", "--table", "reviews", "--db", sys.argv[2], "--no-prefect",
                               "--warehouse", sys.argv[1]])
assert out.exit_code == 0, out.output
assert "already up to date" in out.output, out.output
print("TORCH", "torch" in sys.modules)
"""


@pytest.mark.subprocess
def test_a_cli_re_run_with_nothing_to_score_never_imports_torch(scored):
    shelf, db = scored
    proc = subprocess.run([sys.executable, "-c", NO_OP_RUN, str(shelf.wh.root), str(db)], capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:] + proc.stdout[-2000:]
    assert "TORCH False" in proc.stdout, proc.stdout
    assert query_rows(db, "SELECT count(*) FROM sentiment_runs WHERE status = 'completed'") == [(2,)]


def test_the_dask_preflight_says_when_there_is_nothing_to_score(scored):
    """``reviewflow score --workers N`` asks :func:`preflight` first: with nothing to score no cluster starts (and
    no worker loads the model); a stale row, another version or ``--rescore`` all need one. Read-only."""
    from pipeline.score.partitioned import preflight

    shelf, db = scored
    before = _digest(db)
    assert preflight(db, "reviews", version=shelf.champion) is False
    assert preflight(db, "reviews", version=shelf.champion, rescore=True) is True
    assert preflight(db, "reviews", version="v9999-other") is True
    assert preflight(db, "reviews") is True                              # no version: it cannot say, so yes
    assert _digest(db) == before
    with duckdb.connect(str(db)) as con:
        con.execute("INSERT INTO reviews (review_id, text) VALUES ('new-1', 'a fine film')")
    assert preflight(db, "reviews", version=shelf.champion) is True
