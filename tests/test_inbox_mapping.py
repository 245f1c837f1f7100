"""Which column of an inbox file holds the text (id, label): sidecar, serve settings, or a documented guess.

Real files (CSV, JSON lines, Parquet) read by the real readers; ingest through ``pipeline.ingest.job``.
"""

from __future__ import annotations

import json
import os
import time

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest

from pipeline.core.errors import InputError
from pipeline.ingest.columns import LONG_TEXT_CHARS, guess_text_column
from pipeline.ingest.detect import detect, sample_strings
from pipeline.ingest.job import ingest
from pipeline.ingest.lake import read_table
from pipeline.ops import inbox
from synthetic import make_reviews

OLD = 3600.0


def _drop_table(wh, name: str, table: pa.Table, sidecar: dict | str | None = None):
    """Write ``table`` into the inbox as CSV/JSONL/Parquet (by suffix), with an optional sidecar; both old."""
    path = wh.inbox / name
    path.parent.mkdir(parents=True, exist_ok=True)
    if name.endswith(".csv"):
        pacsv.write_csv(table, path)
    elif name.endswith(".parquet"):
        pq.write_table(table, path)
    else:
        path.write_text("".join(json.dumps(r) + "\n" for r in table.to_pylist()))
    paths = [path]
    if sidecar is not None:
        side = inbox.sidecar_of(path)
        side.write_text(sidecar if isinstance(sidecar, str) else json.dumps(sidecar))
        paths.append(side)
    old = time.time() - OLD
    for p in paths:
        os.utime(p, (old, old))
    return path


def _reviews(n=30, seed=1) -> pa.Table:
    t = make_reviews(n, seed=seed, split=None, id_prefix="x")
    return t.select(["review_id", "text", "label"])


def test_guess_by_common_name_any_case_text_first():
    assert guess_text_column(["id", "Review"], {}).column == "Review"
    g = guess_text_column(["id", "stars", "comment"], {})
    assert g.column == "comment" and g.why == "auto: common name 'comment'"
    assert guess_text_column(["review", "text"], {}).column == "text"   # a file that works today keeps working
    assert guess_text_column(["body", "content"], {}).column == "body"


def test_guess_the_one_long_string_column_by_median_length():
    prose = ["this product broke after two days and support never answered my emails"] * 9 + ["ok"]
    ids = ["0123456789abcdef0123456789abcdef01234567"] * 10          # long, but no spaces: not prose
    short = ["red", "blue"] * 5
    g = guess_text_column(["sku", "colour", "opinion"], {"sku": ids, "colour": short, "opinion": prose})
    assert g.column == "opinion" and "median" in g.why and "10 sampled values" in g.why
    # two long columns: no guess, both named
    g2 = guess_text_column(["a", "b"], {"a": prose, "b": prose})
    assert g2.column is None and g2.long_columns == ("a", "b")
    # just under the threshold: not long
    g3 = guess_text_column(["a"], {"a": ["x " * (LONG_TEXT_CHARS // 2 - 1)]})
    assert g3.column is None and "no column" in g3.why
    # a column that plays another role is never the text
    assert guess_text_column(["id", "opinion"], {"id": prose, "opinion": prose}, exclude={"id"}).column == "opinion"


@pytest.mark.parametrize("name", ["s.csv", "s.jsonl", "s.parquet"])
def test_sample_strings_reads_names_and_first_rows(warehouse, name):
    t = pa.table({"id": [1, 2, 3], "opinion": ["a b", None, "c d e"]})
    path = _drop_table(warehouse, name, t)
    names, strings = sample_strings(detect(path), rows=2)
    assert names == ["id", "opinion"] and strings["opinion"] == ["a b"] and "id" not in strings


def test_sample_of_an_unreadable_file_is_none(warehouse):
    path = warehouse.inbox / "broken.parquet"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"not parquet at all")
    assert sample_strings(detect(path)) is None


def test_csv_with_id_review_just_works(warehouse):
    t = _reviews()
    path = _drop_table(warehouse, "export.csv", pa.table({"id": t["review_id"], "review": t["text"]}))
    choice = inbox.choose_columns(path, {})
    assert choice.mapping == {"text_col": "review"}
    assert choice.describe() == "text='review' (auto: common name 'review')"
    report = ingest(warehouse, str(path), "inbox", progress=False, **choice.mapping)
    assert report.rows_added == 30 and report.columns["text"] == "review" and report.columns["id"] == "id"
    lake = read_table(warehouse, "inbox", columns=["review_id", "text"])
    assert sorted(lake["text"].to_pylist()) == sorted(t["text"].to_pylist())


def test_long_column_guess_in_jsonl_and_label_from_settings(warehouse):
    t = _reviews()
    path = _drop_table(warehouse, "shop.jsonl", pa.table({"sku": t["review_id"], "opinion": t["text"],
                                                          "ok": t["label"]}))
    choice = inbox.choose_columns(path, {"id": "sku", "label": "ok", "text": None})
    assert choice.mapping == {"id_col": "sku", "label_col": "ok", "text_col": "opinion"}
    assert choice.how["id"] == "serve setting" and choice.how["text"].startswith("auto: the one long string column")
    report = ingest(warehouse, str(path), "shop", progress=False, **choice.mapping)
    assert report.rows_added == 30 and {r["label"] for r in report.by_split_label} == {"pos", "neg"}


def test_sidecar_wins_over_settings_and_travels_with_its_file(warehouse):
    t = _reviews()
    path = _drop_table(warehouse, "a.parquet", pa.table({"sku": t["review_id"], "body": t["text"],
                                                         "summary": t["text"]}),
                       sidecar={"text": "summary", "id": "sku"})
    assert [p.name for p in inbox.pending(warehouse)] == ["a.parquet"]        # the sidecar is not a review file
    c = inbox.claim(warehouse, path)
    assert c.sidecar == warehouse.inbox / "processing" / "a.parquet.reviewflow.json" and c.sidecar.exists()
    choice = inbox.choose_columns(c.path, {"text": "body", "label": None}, c.sidecar)
    assert choice.mapping == {"text_col": "summary", "id_col": "sku"}
    assert choice.how == {"text": "sidecar a.parquet.reviewflow.json", "id": "sidecar a.parquet.reviewflow.json"}
    done = inbox.complete(warehouse, c)
    assert inbox.sidecar_of(done).exists() and not c.sidecar.exists()
    assert inbox.status(warehouse)["processed"] == 1


@pytest.mark.parametrize("content, says", [
    ('{"txt": "review"}', "unknown key(s) 'txt'; allowed: 'text', 'id', 'label'"),
    ('{"text": 3}', "'text' must be a column name (a non-empty string), not 3"),
    ('{"text": " "}', "'text' must be a column name"),
    ('["review"]', "must hold a JSON object"),
    ("{text: review}", "is not valid JSON"),
])
def test_bad_sidecar_is_refused_naming_it(warehouse, content, says):
    path = _drop_table(warehouse, "b.csv", pa.table({"id": ["1"], "review": ["fine"]}), sidecar=content)
    c = inbox.claim(warehouse, path)
    with pytest.raises(InputError) as err:
        inbox.choose_columns(c.path, {}, c.sidecar)
    assert says in str(err.value) and "b.csv.reviewflow.json" in str(err.value)
    failed = inbox.fail(warehouse, c, err.value)
    assert inbox.sidecar_of(failed).read_text() == content          # kept beside the failed file, unchanged


def test_no_text_column_error_says_how_to_name_it(warehouse):
    path = _drop_table(warehouse, "c.csv", pa.table({"id": ["1", "2"], "stars": [1, 5]}))
    with pytest.raises(InputError) as err:
        inbox.choose_columns(path, {})
    msg = str(err.value)
    assert "which column holds the review text?" in msg and "'id', 'stars'" in msg
    assert "c.csv.reviewflow.json" in msg and "--inbox-text-col" in msg


def test_a_named_text_column_is_not_guessed_over(warehouse):
    """A serve setting names a column the file lacks: ingest says so (no silent guess instead)."""
    path = _drop_table(warehouse, "d.csv", pa.table({"id": ["1"], "review": ["fine enough"]}))
    choice = inbox.choose_columns(path, {"text": "body"})
    assert choice.mapping == {"text_col": "body"}
    with pytest.raises(InputError, match="column 'body' not found"):
        ingest(warehouse, str(path), "inbox", progress=False, **choice.mapping)


def test_recover_stale_puts_a_file_back_with_its_sidecar(warehouse):
    path = _drop_table(warehouse, "e.csv", pa.table({"id": ["1"], "opinion": ["fine"]}), sidecar={"text": "opinion"})
    c = inbox.claim(warehouse, path)
    old = time.time() - 2 * OLD
    os.utime(c.path, (old, old))
    assert inbox.recover_stale(warehouse, older_than_s=OLD) == [path]
    assert inbox.sidecar_of(path).exists() and not any((warehouse.inbox / "processing").iterdir())
