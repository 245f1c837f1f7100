"""``reviewflow export``: a table to Parquet/CSV, atomically; what user SQL may not do (COPY)."""

from __future__ import annotations

import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest
from score_helpers import make_review_db
from typer.testing import CliRunner

from pipeline.core.errors import InputError, NotFoundError
from pipeline.score.export import export_table


def test_export_writes_every_row_and_column_and_refuses_cleanly(tmp_path):
    db = make_review_db(tmp_path / "r.duckdb", n=57)
    out = tmp_path / "out" / "reviews.parquet"
    with pytest.raises(InputError, match="does not exist; create it first"):     # a typo'd folder is not made
        export_table(db, "reviews", out)
    out.parent.mkdir()
    assert export_table(db, "reviews", out) == 57
    t = pq.read_table(out)
    assert t.num_rows == 57 and t.column_names[:3] == ["review_id", "text", "label"]
    assert export_table(db, "reviews", tmp_path / "reviews.csv") == 57
    assert pacsv.read_csv(tmp_path / "reviews.csv").num_rows == 57
    before = out.read_bytes()
    with pytest.raises(NotFoundError, match="'nope' not found"):
        export_table(db, "nope", out)
    with pytest.raises(InputError, match="must end in"):
        export_table(db, "reviews", tmp_path / "x.json")
    assert out.read_bytes() == before and sorted(p.name for p in out.parent.iterdir()) == ["reviews.parquet"]


def test_export_cli_and_a_hostile_table_name(tmp_path):
    from flows.cli import app

    db = make_review_db(tmp_path / "r.duckdb", n=10, table='we"ird; DROP TABLE x')
    out = tmp_path / "w.parquet"
    res = CliRunner().invoke(app, ["export", "--table", 'we"ird; DROP TABLE x', "--to", str(out), "--db", str(db),
                                   "--warehouse", str(tmp_path / "wh")])
    assert res.exit_code == 0, res.output
    assert pq.read_table(out).num_rows == 10 and "exported 10 rows" in res.output
