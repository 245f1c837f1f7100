"""Issue 18, item 5: a name given as a table that is not a table scoring can write into — a view, a view or table
named in another case, a table of another schema or attached database, a temporary table, a table macro — is
refused with what it is and what to do, never 'not found' while being listed among the tables; and the
DuckDB file is byte-identical afterwards (checkpointed, then hashed). Readers (export) take views."""

from __future__ import annotations

import hashlib
import subprocess
import sys
from pathlib import Path

import duckdb
import pytest
from score_helpers import BowPredictor, make_review_db, query_rows
from synthetic import make_reviews, write_lake_dataset

from pipeline.core.duck import find_relation, list_tables, list_views, quote_ident, require_readable, require_table
from pipeline.core.errors import InputError, NotFoundError
from pipeline.score.export import export_table
from pipeline.score.sync import sync_dataset_table
from pipeline.score.writeback import score_table

REVIEWFLOW = str(Path(sys.executable).with_name("reviewflow"))
WEIRD_VIEW = 'we"ird view; --'
SETUP = [
    "CREATE VIEW imdb_v AS SELECT * FROM reviews WHERE label = 1",
    "CREATE VIEW Mixed_View AS SELECT review_id, text FROM reviews",
    f"CREATE VIEW {quote_ident(WEIRD_VIEW)} AS SELECT * FROM reviews",
    "CREATE SCHEMA s",
    "CREATE TABLE s.t AS SELECT review_id, text FROM reviews",
    "CREATE MACRO m() AS TABLE SELECT * FROM reviews",
]

# name given -> (error class, words the message must hold (regex), words it must not hold)
FAMILY = {
    "imdb_v": (InputError, r"'imdb_v' in .* is a VIEW \(CREATE VIEW imdb_v AS SELECT \* FROM reviews WHERE "
               r"\(\"label\" = 1\)\), not a table: scoring adds columns .* Score the table the view reads from, or "
               r"make a table of it: CREATE TABLE \"imdb_v_table\" AS SELECT \* FROM \"imdb_v\"; then --table "
               r"imdb_v_table"),
    "IMDB_V": (InputError, r"'IMDB_V' in .* is a VIEW .*CREATE TABLE \"imdb_v_table\""),
    "mixed_view": (InputError, r"'mixed_view' in .* is a VIEW \(CREATE VIEW Mixed_View .*SELECT \* FROM "
                   r"\"Mixed_View\"; then --table Mixed_View_table"),
    WEIRD_VIEW: (InputError, r"is a VIEW .*CREATE TABLE \"we\"\"ird view; --_table\" AS SELECT \* FROM "
                 r"\"we\"\"ird view; --\""),
    "REVIEWS": (InputError, r"no table is named exactly 'REVIEWS' in .*; there is 'reviews', which differs only in "
                r"case\..* pass --table reviews"),
    "Reviews": (InputError, r"differs only in case"),
    "t": (InputError, r"'t' in .* is not a table of schema 'main'.*: it is a table 't' in schema 's'; tables that "
          r"exist: 'reviews'; views \(read only\): 'Mixed_View', 'imdb_v', .*CREATE TABLE \"t\" AS SELECT \* FROM \"s\".\"t\"\) "
          r"and pass --table t"),
    "s.t": (InputError, r"it is a table 't' in schema 's'.*FROM \"s\".\"t\""),
    "m": (NotFoundError, r"table 'm' not found in .*; tables that exist: 'reviews'; views \(read only\): "),
    "nope": (NotFoundError, r"table 'nope' not found in .*; tables that exist: 'reviews'; views \(read only\): "
             r"'Mixed_View', 'imdb_v', 'we\"ird view; --'$"),
}


def _settled_hash(db: Path) -> str:
    """The file's bytes after a CHECKPOINT (nothing left in a WAL): equal hashes = untouched."""
    con = duckdb.connect(str(db))
    con.execute("CHECKPOINT")
    con.close()
    assert not Path(f"{db}.wal").exists()
    return hashlib.sha256(db.read_bytes()).hexdigest()


@pytest.fixture
def family_db(tmp_path) -> Path:
    db = make_review_db(tmp_path / "family.duckdb", 40)
    con = duckdb.connect(str(db))
    for statement in SETUP:
        con.execute(statement)
    con.close()
    return db


@pytest.mark.parametrize("name", list(FAMILY))
def test_score_refuses_what_is_not_a_writable_table_and_leaves_the_file_as_it_was(family_db, name):
    err, pattern = FAMILY[name]
    before = _settled_hash(family_db)
    with pytest.raises(err, match=pattern) as got:
        score_table(family_db, name, BowPredictor(), chunk_rows=20)
    assert "\n" not in str(got.value)
    assert _settled_hash(family_db) == before
    if "tables that exist: " in str(got.value):        # the listing never calls a view a table
        assert str(got.value).split("tables that exist: ", 1)[1].split(";")[0] == "'reviews'"


def test_the_real_table_beside_them_scores(family_db):
    rep = score_table(family_db, "reviews", BowPredictor(), chunk_rows=20)
    assert rep.rows_scored == 40
    assert query_rows(family_db, "SELECT count(*) FROM imdb_v WHERE sentiment_score IS NOT NULL") == \
        query_rows(family_db, "SELECT count(*) FROM reviews WHERE label = 1")      # the view shows the scores


@pytest.mark.parametrize("name", ['we"ird table; --', "with space", "ÜmläutTäble"])
def test_a_base_table_with_a_hostile_name_is_a_table(tmp_path, name):
    db = make_review_db(tmp_path / "h.duckdb", 30, table=name)
    assert score_table(db, name, BowPredictor(), chunk_rows=20).rows_scored == 30


def test_listings_agree_with_the_classifier(family_db):
    con = duckdb.connect(str(family_db), read_only=True)
    try:
        assert list_tables(con) == ["reviews"]
        assert list_views(con) == sorted(["Mixed_View", "imdb_v", WEIRD_VIEW])
        for name in list_tables(con):
            require_table(con, name)
        for name in list_views(con):
            assert find_relation(con, name).kind == "view"
            assert require_readable(con, name).kind == "view"
            with pytest.raises(InputError, match="is a VIEW"):
                require_table(con, name)
    finally:
        con.close()


def test_temporary_relations_and_attached_read_only_tables(tmp_path, family_db):
    """What only a connection of one's own can hold (real DuckDB; no scoring run sees these)."""
    other = tmp_path / "other.duckdb"
    con = duckdb.connect(str(other))
    con.execute("CREATE TABLE elsewhere AS SELECT 1 AS review_id, 'x' AS text")
    con.close()
    con = duckdb.connect(str(family_db))
    try:
        con.execute(f"ATTACH '{other}' AS o (READ_ONLY)")
        con.execute("CREATE TEMP TABLE scratch AS SELECT * FROM reviews")
        con.execute("CREATE TEMP TABLE reviews AS SELECT * FROM reviews LIMIT 1")     # hides the real one
        con.execute("CREATE TEMP VIEW tv AS SELECT 1")
        with pytest.raises(InputError, match=r"'scratch' is a TEMPORARY TABLE: it lives only in the connection"):
            require_table(con, "scratch")
        with pytest.raises(InputError, match=r"'reviews' is a TEMPORARY TABLE.*hides any table of that name"):
            require_table(con, "reviews")
        with pytest.raises(InputError, match=r"'tv' is a TEMPORARY VIEW"):
            require_readable(con, "tv")
        with pytest.raises(InputError, match=r"it is a table 'elsewhere' in database 'o' \(attached read-only\).*"
                                             r"FROM \"o\".\"main\".\"elsewhere\""):
            require_table(con, "elsewhere")
        with pytest.raises(InputError, match="in database 'o'"):
            require_table(con, "o.main.elsewhere")
    finally:
        con.close()


def test_export_reads_views_and_refuses_the_rest(family_db, tmp_path):
    before = _settled_hash(family_db)
    assert export_table(family_db, "imdb_v", tmp_path / "v.csv") == \
        query_rows(family_db, "SELECT count(*) FROM reviews WHERE label = 1")[0][0]
    assert export_table(family_db, WEIRD_VIEW, tmp_path / "w.parquet") == 40
    with pytest.raises(InputError, match=r"it is a table 't' in schema 's'"):
        export_table(family_db, "t", tmp_path / "t.csv")
    with pytest.raises(NotFoundError, match=r"views \(read only\): 'Mixed_View'"):
        export_table(family_db, "nope", tmp_path / "n.csv")
    assert not (tmp_path / "t.csv").exists() and not (tmp_path / "n.csv").exists()
    assert _settled_hash(family_db) == before


def test_scoring_a_dataset_whose_table_name_is_taken_by_a_view_is_refused(warehouse, tmp_path):
    write_lake_dataset(warehouse, "syn", make_reviews(30, seed=2))
    db = make_review_db(tmp_path / "d.duckdb", 10)
    con = duckdb.connect(str(db))
    con.execute("CREATE VIEW syn_scored AS SELECT * FROM reviews")
    con.close()
    before = _settled_hash(db)
    with pytest.raises(InputError, match=r"'syn_scored' in .* is a VIEW"):
        sync_dataset_table(warehouse, "syn", db)
    assert _settled_hash(db) == before


@pytest.mark.subprocess
def test_cli_says_what_the_view_is_and_exits_2(tiny_champion, family_db):
    before = _settled_hash(family_db)
    out = subprocess.run([REVIEWFLOW, "score", "--table", "imdb_v", "--db", str(family_db), "--no-prefect",
                          "-w", str(tiny_champion.wh.root)], capture_output=True, text=True, timeout=300, check=False)
    assert out.returncode == 2, out.stderr
    last = out.stderr.strip().splitlines()[-1]
    assert last.startswith("error: 'imdb_v' in ") and "is a VIEW" in last and "--table imdb_v_table" in last
    assert _settled_hash(family_db) == before
