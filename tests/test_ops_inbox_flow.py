"""The ingest-and-score inbox flow through real Prefect (ephemeral API), DuckDB and a real tiny model."""

from __future__ import annotations

import os

import duckdb
import pytest

from ops_helpers import drop_bad_csv, drop_csv
from pipeline.ingest.lake import read_table
from pipeline.ops import inbox as box

FRESH_FOR = 600.0   # the flows' min_age_s here; dropped files are older than that, or brand new (mtime now)
OLD = 2 * FRESH_FOR


@pytest.mark.prefect
def test_inbox_flow_processes_fails_and_skips_duplicates(prefect_harness, tiny_champion):
    from flows.inbox import inbox_flow

    warehouse, version = tiny_champion.wh, tiny_champion.champion
    good = drop_csv(warehouse, "batch-1.csv", n=20, age_s=OLD)
    dup_text = good.read_bytes()
    bad = drop_bad_csv(warehouse, age_s=OLD)
    # mtime now: however slowly this host starts the flow, the file is minutes younger than min_age_s
    fresh = drop_csv(warehouse, "still-copying.csv", n=3, seed=9, id_prefix="late", age_s=0)

    out = inbox_flow(warehouse=str(warehouse.root), min_age_s=FRESH_FOR)
    assert (out["processed"], out["failed"], out["duplicates"]) == (1, 1, 0)
    assert out["rows_added"] == 20 and out["rows_scored"] == 20 and out["table"] == "inbox_scored"
    processed, failed = warehouse.inbox / "processed", warehouse.inbox / "failed"
    assert (processed / "batch-1.csv").read_bytes() == dup_text
    assert (failed / bad.name).exists() and "text" in (failed / f"{bad.name}.error.txt").read_text().lower()
    assert fresh.exists(), "a file modified seconds ago must wait for the next pass"
    with duckdb.connect(str(warehouse.duckdb_path), read_only=True) as con:
        n, models, nulls = con.execute(
            "SELECT count(*), count(DISTINCT sentiment_model), count(*) FILTER (WHERE sentiment_score IS NULL) "
            "FROM inbox_scored").fetchone()
        assert (n, nulls) == (20, 0)
        assert con.execute("SELECT any_value(sentiment_model) FROM inbox_scored").fetchone()[0] == version

    # next pass: the same content again under another name is recognised by hash and not ingested twice;
    # the file that was still being copied is now old enough and gets processed
    again = warehouse.inbox / "batch-1-copy.csv"
    again.write_bytes(dup_text)
    os.utime(again, (0, 0))
    os.utime(fresh, (0, 0))
    out2 = inbox_flow(warehouse=str(warehouse.root), min_age_s=FRESH_FOR)
    assert (out2["processed"], out2["duplicates"], out2["failed"], out2["rows_added"]) == (1, 1, 0, 3)
    assert (processed / "batch-1-copy.csv").exists() and (processed / "still-copying.csv").exists()
    assert box.status(warehouse) == {"waiting": 0, "processing": 0, "processed": 3, "failed": 1, "ledger": 2}
    with duckdb.connect(str(warehouse.duckdb_path), read_only=True) as con:
        assert con.execute("SELECT count(*), count(sentiment_score) FROM inbox_scored").fetchone() == (23, 23)


@pytest.mark.prefect
def test_inbox_flow_scoring_failure_moves_ingested_files_to_failed(prefect_harness, warehouse):
    """No model to score with: the files were ingested (their rows stay in the lake) but not scored, so they
    go to failed/ with the scoring error beside them, and nothing enters the ledger (dropping them again
    retries)."""
    from flows.inbox import inbox_flow

    dropped = [drop_csv(warehouse, f"batch-{i}.csv", n=10, seed=i, id_prefix=f"b{i}", age_s=OLD) for i in (1, 2)]
    out = inbox_flow(warehouse=str(warehouse.root), min_age_s=FRESH_FOR)
    assert (out["processed"], out["failed"], out["duplicates"], out["rows_added"]) == (0, 2, 0, 20)
    assert out["rows_scored"] == 0 and out["table"] is None
    failed = warehouse.inbox / "failed"
    for path in dropped:
        assert (failed / path.name).exists() and not path.exists()
        error = (failed / f"{path.name}.error.txt").read_text()
        assert "ingested 10 row(s) into dataset 'inbox', but scoring failed" in error
    assert {r["error"].split(":")[0] for r in out["results"]} == {"scoring"}
    assert read_table(warehouse, "inbox", columns=["review_id"]).num_rows == 20
    assert box.ledger(warehouse) == []


@pytest.mark.prefect
def test_inbox_flow_maps_columns_from_sidecar_settings_and_guess(prefect_harness, tiny_champion):
    """A CSV exported as ``id,review`` just works (guessed, shown in the results); a sidecar names other columns;
    a bad sidecar fails its file alone, naming the sidecar."""
    import pyarrow as pa
    import pyarrow.csv as pacsv

    from flows.inbox import inbox_flow
    from synthetic import make_reviews

    warehouse = tiny_champion.wh
    t, u = make_reviews(12, seed=8, split=None, id_prefix="m"), make_reviews(12, seed=9, split=None, id_prefix="s")
    files = {"export.csv": (pa.table({"id": t["review_id"], "review": t["text"]}), None),
             "shop.csv": (pa.table({"sku": u["review_id"], "opinion": u["text"], "ok": u["label"]}),
                          '{"text": "opinion", "id": "sku", "label": "ok"}'),
             "typo.csv": (pa.table({"id": t["review_id"], "review": t["text"]}), '{"txt": "review"}')}
    for name, (table, sidecar) in files.items():
        path = warehouse.inbox / name
        path.parent.mkdir(parents=True, exist_ok=True)
        pacsv.write_csv(table, path)
        paths = [path]
        if sidecar:
            paths.append(box.sidecar_of(path))
            paths[-1].write_text(sidecar)
        for p in paths:
            os.utime(p, (0, 0))
    out = inbox_flow(warehouse=str(warehouse.root), min_age_s=FRESH_FOR)
    by_file = {r["file"]: r for r in out["results"]}
    assert {f: r["status"] for f, r in by_file.items()} == {"export.csv": "processed", "shop.csv": "processed",
                                                            "typo.csv": "failed"}
    assert by_file["export.csv"]["columns"] == "text='review' (auto: common name 'review')"
    assert "text='opinion' (sidecar shop.csv.reviewflow.json)" in by_file["shop.csv"]["columns"]
    assert "unknown key(s) 'txt'" in by_file["typo.csv"]["error"] and "typo.csv.reviewflow.json" in \
        by_file["typo.csv"]["error"]
    assert box.sidecar_of(warehouse.inbox / "failed" / "typo.csv").exists()
    assert (out["processed"], out["failed"], out["rows_added"], out["rows_scored"]) == (2, 1, 24, 24)
    lake = read_table(warehouse, "inbox", columns=["review_id", "label"]).to_pylist()
    assert sorted(r["review_id"] for r in lake) == sorted(t["review_id"].to_pylist() + u["review_id"].to_pylist())
    assert {r["review_id"]: r["label"] for r in lake if r["review_id"].startswith("s")} == \
        dict(zip(u["review_id"].to_pylist(), u["label"].to_pylist()))
