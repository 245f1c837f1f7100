"""The appended-parts merge under ``kill -9``: the committer SIGKILLed at each step of a partitioned run, then rerun.

A real subprocess runs :func:`pipeline.score.partitioned.score_table_partitioned` (parts scored in that process,
``serial_map``) with ``REVIEWFLOW_TEST_KILL_AT`` naming the step at which it SIGKILLs itself:

* ``planned``: the snapshot is in the scratch space, no part scored;
* ``staged:2``: two parts scored and staged, nothing folded;
* ``fold``: inside the fold's transaction, after the UPDATE and the audit counts, before COMMIT;
* ``folded``: the fold committed, the run not yet marked completed, the scratch folder still there.

Then a run in this process finishes the table. Every time: no row lost or doubled (each row scored once, by the one
model version, the audit rows adding up to the rows scored), the scores equal to a one-process run row for row,
the scored parts of the killed run reused where they were written, and the scratch folder removed at the end.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from score_helpers import make_review_db, query_rows

from pipeline.score.partitioned import KILL_AT_ENV, PartResult, run_folder, score_table_partitioned, serial_map
from pipeline.score.scratch import Scratch
from pipeline.score.writeback import score_table

pytestmark = [pytest.mark.subprocess]

ROOT = Path(__file__).resolve().parents[1]
N = 1200
ROWS_PER_PART = 200
PARTS = N // ROWS_PER_PART

_CHILD = """
import sys
from pathlib import Path
from pipeline.core.config import Warehouse
from pipeline.score.partitioned import score_table_partitioned, serial_map
from pipeline.serve.predictor import load_predictor

db, warehouse, version, scratch = sys.argv[1:5]
predictor = load_predictor(Warehouse(Path(warehouse)), version, precision="fp32")
score_table_partitioned(db, "reviews", version, serial_map(predictor, 0.5), scratch=scratch, rows_per_part=%d,
                        engine="serial", workers=1)
print("finished")
""" % ROWS_PER_PART


@pytest.fixture(scope="module")
def tiny(model_shelf, tmp_path_factory):
    """A warehouse with a tiny trained champion, its predictor, and the scores one process writes."""
    from model_helpers import champion

    from pipeline.serve.predictor import load_predictor

    shelved = model_shelf.copy(champion, tmp_path_factory.mktemp("wh") / "warehouse")
    predictor = load_predictor(shelved.wh, shelved.champion, precision="fp32")
    ref = make_review_db(tmp_path_factory.mktemp("ref") / "ref.duckdb", n=N)
    score_table(ref, "reviews", predictor)
    return shelved.wh, shelved.champion, predictor, _scores(ref)


def _scores(db):
    return query_rows(db, "SELECT review_id, sentiment_score, sentiment_label, sentiment_model, sentiment_coverage "
                          "FROM reviews ORDER BY 1")


@pytest.mark.parametrize("step,reused", [("planned", 0), ("staged:2", 2), ("fold", PARTS), ("folded", None)])
def test_kill_9_of_the_committer_at_each_step_loses_and_doubles_no_row(tiny, tmp_path, step, reused):
    wh, version, predictor, want = tiny
    db = make_review_db(tmp_path / "r.duckdb", n=N)
    scratch = str(tmp_path / "scratch")
    env = {**os.environ, KILL_AT_ENV: step, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    child = subprocess.run([sys.executable, "-c", _CHILD, str(db), str(wh.root), version, scratch], env=env, cwd=ROOT,
                           capture_output=True, text=True, timeout=300)
    assert child.returncode == -signal.SIGKILL, child.stdout + child.stderr
    folder = run_folder(Scratch(scratch), db, "reviews", version)
    written = query_rows(db, "SELECT count(*) FROM reviews WHERE sentiment_model IS NOT NULL")[0][0]
    runs = query_rows(db, "SELECT status, rows_scored FROM sentiment_runs")
    assert runs == [("running", N if step == "folded" else 0)]            # the fold is all or nothing
    assert written == (N if step == "folded" else 0)
    assert os.path.isdir(folder)

    seen: list[PartResult] = []

    def recording(parts):
        for result in serial_map(predictor, 0.5)(parts):
            seen.append(result)
            yield result

    rep = score_table_partitioned(db, "reviews", version, recording, scratch=scratch, rows_per_part=ROWS_PER_PART)
    runs = query_rows(db, "SELECT status, rows_scored FROM sentiment_runs ORDER BY started_at")
    assert [r[0] for r in runs] == ["failed", "completed"]                 # the killed run is found dead
    assert sum(r[1] for r in runs) == N                                     # no row counted twice or lost
    if reused is None:                                                      # folded before the kill: nothing left
        assert rep.rows_scored == 0 and rep.rows_up_to_date == N and seen == []
    else:
        assert rep.rows_scored == N and rep.chunks == PARTS
        assert [r.reused for r in seen] == [True] * reused + [False] * (PARTS - reused)
    got = _scores(db)
    assert [r[0] for r in got] == [r[0] for r in want]
    assert [r[2:4] for r in got] == [r[2:4] for r in want] and {r[3] for r in got} == {version}
    np.testing.assert_array_equal(np.array([r[1] for r in got], dtype=float), np.array([r[1] for r in want], dtype=float))
    np.testing.assert_array_equal(np.array([r[4] for r in got], dtype=float), np.array([r[4] for r in want], dtype=float))
    assert not os.path.exists(folder)
