"""Ingest's optional group column (``--group-col`` -> the lake's ``group_id``), and lake parts from before it."""

from __future__ import annotations

import json
import subprocess
import sys

import pyarrow as pa
import pyarrow.dataset as pads
import pyarrow.parquet as pq
import pytest
from ingest_helpers import snapshot
from synthetic import make_reviews, write_lake_dataset

from pipeline.core.errors import InputError
from pipeline.core.schema import LAKE_SCHEMA
from pipeline.ingest import lake
from pipeline.ingest.job import ingest


def _groups(wh, name: str) -> dict[str, str | None]:
    t = lake.read_table(wh, name, columns=["review_id", "group_id"])
    return dict(zip(t.column("review_id").to_pylist(), t.column("group_id").to_pylist()))


def test_csv_group_column_is_kept_as_text_and_blank_is_null(warehouse, tmp_path):
    csv = tmp_path / "shop.csv"
    csv.write_text("id,body,label,product\n1,great kettle,pos,kettle-7\n2,awful kettle,neg, kettle-7 \n"
                   "3,fine mug,pos,42\n4,no product named,neg,\n")
    rep = ingest(warehouse, str(csv), "shop", text_col="body", id_col="id", group_col="product", progress=False)
    assert rep.rows_added == 4 and rep.columns["group"] == "product"
    assert _groups(warehouse, "shop") == {"1": "kettle-7", "2": "kettle-7", "3": "42", "4": None}
    assert pq.read_schema(rep.part_file).equals(LAKE_SCHEMA)


def test_parquet_group_column_integers_and_pandas_style_floats(warehouse, tmp_path):
    path = tmp_path / "r.parquet"
    pq.write_table(pa.table({"text": ["a film", "b film", "c film", "d film"],
                             "label": [1, 0, 1, 0],
                             "movie_id": pa.array(["tt01", "tt01", None, "tt02"]),
                             "movie_num": pa.array([7.0, 7.0, float("nan"), 12.0])}), path)
    ingest(warehouse, str(path), "films", group_col="movie_id", progress=False)
    by_text = dict(zip(*(lake.read_table(warehouse, "films").column(c).to_pylist() for c in ("text", "group_id"))))
    assert by_text == {"a film": "tt01", "b film": "tt01", "c film": None, "d film": "tt02"}
    ingest(warehouse, str(path), "nums", group_col="movie_num", progress=False)
    assert sorted(map(str, _groups(warehouse, "nums").values())) == ["12", "7", "7", "None"]


def test_without_a_group_column_group_id_is_null_and_group_id_is_the_default(warehouse, tmp_path):
    csv = tmp_path / "plain.csv"
    csv.write_text("text,label\nnice,pos\nbad,neg\n")
    rep = ingest(warehouse, str(csv), "plain", progress=False)
    assert "group" not in rep.columns and set(_groups(warehouse, "plain").values()) == {None}
    jsonl = tmp_path / "g.jsonl"       # a column already called group_id is taken without --group-col
    jsonl.write_text('{"text": "one", "label": 1, "group_id": 5}\n{"text": "two", "label": 0, "group_id": "x"}\n')
    rep = ingest(warehouse, str(jsonl), "own", progress=False)
    assert rep.columns["group"] == "group_id"
    assert sorted(_groups(warehouse, "own").values()) == ["5", "x"]


def test_missing_or_unusable_group_column_is_one_clear_error_and_the_lake_is_untouched(warehouse, tmp_path):
    csv = tmp_path / "a.csv"
    csv.write_text("review_id,text,label,movie\nr1,good,pos,m1\n")
    ingest(warehouse, str(csv), "ds", progress=False)
    before = snapshot(warehouse)
    with pytest.raises(InputError, match=r"column 'movie_id' not found; the file has columns: 'review_id', 'text', "
                                         r"'label', 'movie' \(choose with --group-col\)"):
        ingest(warehouse, str(csv), "ds", group_col="movie_id", progress=False)
    pqp = tmp_path / "bad.parquet"
    pq.write_table(pa.table({"text": ["x", "y"], "g": [1.0, 2.5]}), pqp)
    with pytest.raises(InputError, match=r"group 2.5 is not a whole number.*row 2, column 'g'"):
        ingest(warehouse, str(pqp), "ds", group_col="g", progress=False)
    pq.write_table(pa.table({"text": ["x"], "g": [[1, 2]]}), pqp)
    with pytest.raises(InputError, match=r"group column must hold strings or integers"):
        ingest(warehouse, str(pqp), "ds", group_col="g", progress=False)
    assert snapshot(warehouse) == before


def test_aclimdb_source_refuses_group_col(warehouse, tmp_path):
    (tmp_path / "acl" / "train" / "pos").mkdir(parents=True)
    (tmp_path / "acl" / "train" / "pos" / "0_9.txt").write_text("fine")
    with pytest.raises(InputError, match=r"--group-col apply to CSV/JSON/Parquet files only"):
        ingest(warehouse, str(tmp_path / "acl"), "acl", group_col="movie", progress=False)


def test_group_is_metadata_not_identity(warehouse, tmp_path):
    """Same id and content under another group is the same review (first row's group kept), and a review
    already in the lake keeps the group it was ingested with; content-hash ids ignore the group."""
    csv = tmp_path / "a.csv"
    csv.write_text("review_id,text,label,movie\nr1,good,pos,m1\nr1,good,pos,m2\nr2,bad,neg,m1\n")
    rep = ingest(warehouse, str(csv), "ds", group_col="movie", progress=False)
    assert (rep.rows_added, rep.duplicates_in_source) == (2, 1)
    assert _groups(warehouse, "ds") == {"r1": "m1", "r2": "m1"}
    csv.write_text("review_id,text,label,movie\nr1,good,pos,m9\nr3,new,pos,m9\n")
    rep = ingest(warehouse, str(csv), "ds", group_col="movie", progress=False)
    assert (rep.rows_added, rep.duplicates_in_lake) == (1, 1)
    assert _groups(warehouse, "ds") == {"r1": "m1", "r2": "m1", "r3": "m9"}
    hashed = tmp_path / "h.csv"
    hashed.write_text("text,movie\nsame words,m1\nsame words,m2\n")
    assert ingest(warehouse, str(hashed), "h", group_col="movie", progress=False).rows_added == 1


def test_old_parts_without_group_id_read_as_null_next_to_new_ones(warehouse, tmp_path):
    old = write_lake_dataset(warehouse, "mixed", make_reviews(6, seed=1, id_prefix="old"))
    assert "group_id" not in pq.read_schema(old).names          # a part as earlier versions wrote it
    csv = tmp_path / "new.csv"
    csv.write_text("review_id,text,label,movie\nn1,lovely,pos,m1\n")
    ingest(warehouse, str(csv), "mixed", group_col="movie", progress=False)
    assert lake.open_dataset(warehouse, "mixed").schema.equals(LAKE_SCHEMA)
    groups = _groups(warehouse, "mixed")
    assert groups.pop("n1") == "m1" and len(groups) == 6 and set(groups.values()) == {None}
    assert lake.read_table(warehouse, "mixed", filter=pads.field("group_id").is_null()).num_rows == 6
    lake.write_part(warehouse, "mixed", make_reviews(3, seed=2, id_prefix="wp"))   # 7-column tables still append
    assert lake.read_table(warehouse, "mixed").num_rows == 10


@pytest.mark.subprocess
def test_cli_group_col(warehouse, tmp_path):
    csv = tmp_path / "a.csv"
    csv.write_text("review_id,text,label,movie\nr1,good,pos,m1\nr2,bad,neg,m2\n")
    run = subprocess.run([sys.executable, "-m", "flows.cli", "ingest", str(csv), "--dataset", "cli", "--group-col",
                          "movie", "--no-prefect", "--json", "--no-progress", "--warehouse", str(warehouse.root)],
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    assert json.loads(run.stdout)["columns"]["group"] == "movie"
    assert _groups(warehouse, "cli") == {"r1": "m1", "r2": "m2"}
