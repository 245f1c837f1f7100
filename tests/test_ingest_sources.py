"""Ingest from every source kind (aclImdb folder / tarball / URL, CSV, JSONL, Parquet) into the lake."""

from __future__ import annotations

import hashlib
import json
import re
import subprocess
import sys
import tarfile
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from ingest_helpers import make_tarball, serve_dir, snapshot, tar_folder, tmp_files
from synthetic import make_reviews, write_aclimdb_folder

from pipeline.ingest.download import DownloadError
from pipeline.core.errors import InputError
from pipeline.ingest.job import ingest
from pipeline.ingest.labels import normalize_labels
from pipeline.ingest.lake import dataset_files, read_table
from pipeline.core.schema import LAKE_SCHEMA
from pipeline.ingest.detect import detect


def lake_rows(wh, name) -> dict[str, dict]:
    return {r["review_id"]: r for r in read_table(wh, name).to_pylist()}


def expected_acl(base: Path) -> dict[str, tuple]:
    """review_id -> (text, label, rating, split) straight from the files."""
    out = {}
    for f in base.glob("*/*/*_*.txt"):
        split, cls = f.parent.parent.name, f.parent.name
        num, rating = f.stem.split("_")
        if cls == "unsup":
            out[f"unsup_{num}"] = (f.read_text(), None, int(rating) or None, "unsup")
        else:
            out[f"{split}_{cls}_{num}"] = (f.read_text(), 1 if cls == "pos" else 0, int(rating), split)
    return out


def as_tuples(rows: dict[str, dict]) -> dict[str, tuple]:
    return {k: (r["text"], r["label"], r["rating"], r["split"]) for k, r in rows.items()}


# ----------------------------------------------------------------------------- aclImdb sources

def test_aclimdb_folder(warehouse, tmp_path):
    base = write_aclimdb_folder(tmp_path / "src", n_per_class=4, unsup=3)
    rep = ingest(warehouse, str(tmp_path / "src"), "acl", progress=False)
    assert (rep.kind, rep.rows_read, rep.rows_added, rep.duplicates) == ("aclimdb-folder", 19, 19, 0)
    rows = lake_rows(warehouse, "acl")
    assert as_tuples(rows) == expected_acl(base)
    assert {"train_pos_0", "test_neg_3", "unsup_2"} <= set(rows)
    assert rows["unsup_0"]["label"] is None and rows["unsup_0"]["rating"] is None
    assert {r["source"] for r in rows.values()} == {str((tmp_path / "src").resolve())}
    assert len({r["ingested_at"] for r in rows.values()}) == 1
    assert pq.read_schema(rep.part_file).equals(LAKE_SCHEMA)
    assert rows["train_pos_0"]["group_id"] is None          # aclImdb names no group
    by = {(r["split"], r["label"]): (r["rows"], r["added"]) for r in rep.by_split_label}
    assert by == {("train", "pos"): (4, 4), ("train", "neg"): (4, 4), ("test", "pos"): (4, 4),
                  ("test", "neg"): (4, 4), ("unsup", "unlabelled"): (3, 3)}
    # the aclImdb dir itself is accepted too, and yields the same ids (nothing new)
    again = ingest(warehouse, str(base), "acl", progress=False)
    assert (again.rows_read, again.rows_added, again.duplicates_in_lake, again.part_file) == (19, 0, 19, None)


def test_aclimdb_tarball_local_matches_folder(warehouse, tmp_path):
    base = write_aclimdb_folder(tmp_path / "src", n_per_class=3, unsup=2)
    tar = tar_folder(base, tmp_path / "aclImdb_v1.tar.gz")
    # extra files of the real tarball (README, vocab, urls, bow features) are skipped
    rep = ingest(warehouse, str(tar), "tar", progress=False)
    assert (rep.kind, rep.rows_added) == ("aclimdb-tarball", 14)
    assert as_tuples(lake_rows(warehouse, "tar")) == expected_acl(base)


def test_aclimdb_tarball_over_http(warehouse, tmp_path):
    base = write_aclimdb_folder(tmp_path / "src", n_per_class=3, unsup=1)
    (base / "README").write_text("not a review")
    (base / "train" / "urls_pos.txt").write_text("http://example/1")
    served = tmp_path / "www"
    served.mkdir()
    tar_folder(base, served / "aclImdb_v1.tar.gz")
    with serve_dir(served) as url:
        rep = ingest(warehouse, f"{url}/aclImdb_v1.tar.gz", "web", progress=True)
        assert (rep.kind, rep.rows_read, rep.rows_added) == ("aclimdb-url", 13, 13)
        rows = lake_rows(warehouse, "web")
        assert as_tuples(rows) == expected_acl(base)
        assert {r["source"] for r in rows.values()} == {f"{url}/aclImdb_v1.tar.gz"}
        before = snapshot(warehouse)
        with pytest.raises(DownloadError, match=r"HTTP 404.*missing\.tar\.gz") as err:
            ingest(warehouse, f"{url}/missing.tar.gz", "web", progress=False)
        (served / "page.tar.gz").write_text("<html>Not a tarball</html>")
        with pytest.raises(InputError, match=r"not a valid, complete tar archive.*page\.tar\.gz"):
            ingest(warehouse, f"{url}/page.tar.gz", "web", progress=False)
        assert snapshot(warehouse) == before and not tmp_files(warehouse)
    assert err.value.transient is False


# ------------------------------------------------------------------------------ file sources

def test_csv_mapping_and_label_spellings(warehouse, tmp_path):
    csv = tmp_path / "shop.csv"
    csv.write_text(
        "order_id,body,sentiment,stars,extra\n"
        '1,"Great, really great",POS,9,x\n'
        "2,awful,negative,2,y\n"
        '3,"multi\nline ""quoted"" review",1,8,z\n'
        "4,meh,False,4,\n"
        "5,fine, True ,7,\n"
        "6,who knows,,,\n"
        "007,leading zeros kept,Positive,10,\n", encoding="utf-8")
    rep = ingest(warehouse, str(csv), "shop", text_col="body", label_col="sentiment", id_col="order_id",
                 rating_col="stars", split="test", progress=False)
    assert (rep.kind, rep.rows_read, rep.rows_added) == ("csv", 7, 7)
    assert rep.columns == {"text": "body", "label": "sentiment", "id": "order_id", "rating": "stars"}
    rows = lake_rows(warehouse, "shop")
    assert {k: r["label"] for k, r in rows.items()} == {"1": 1, "2": 0, "3": 1, "4": 0, "5": 1, "6": None, "007": 1}
    assert rows["3"]["text"] == 'multi\nline "quoted" review'
    assert rows["1"]["text"] == "Great, really great" and rows["1"]["rating"] == 9 and rows["6"]["rating"] is None
    assert {r["split"] for r in rows.values()} == {"test"}
    assert {r["source"] for r in rows.values()} == {str(csv.resolve())}


def test_jsonl_defaults_bool_and_int_labels(warehouse, tmp_path):
    path = tmp_path / "r.jsonl"
    lines = [{"id": 10, "text": "good one", "label": True, "split": "train"},
             {"id": 11, "text": "bad one", "label": False, "split": "TEST "},
             {"id": 12, "text": "no label", "split": None},
             {"id": 13, "text": "2020-01-01", "label": 1}]
    path.write_text("\n".join(json.dumps(x) for x in lines) + "\n\n")
    rep = ingest(warehouse, str(path), "j", split="unsup", progress=False)
    rows = lake_rows(warehouse, "j")
    assert rep.columns == {"text": "text", "label": "label", "id": "id", "split": "split"}
    assert {k: (r["text"], r["label"], r["split"]) for k, r in rows.items()} == {
        "10": ("good one", 1, "train"), "11": ("bad one", 0, "test"), "12": ("no label", None, "unsup"),
        "13": ("2020-01-01", 1, "unsup")}


def test_jsonl_mixed_label_types_use_the_slow_path(warehouse, tmp_path):
    path = tmp_path / "mixed.ndjson"
    path.write_text('{"text": "a", "label": 1}\n{"text": "b", "label": "neg"}\n{"text": "c", "label": "True"}\n')
    ingest(warehouse, str(path), "m", progress=False)
    labels = {r["text"]: r["label"] for r in lake_rows(warehouse, "m").values()}
    assert labels == {"a": 1, "b": 0, "c": 1}


def test_parquet_mapping_and_content_hash_ids(warehouse, tmp_path):
    src = make_reviews(6, seed=3)
    table = pa.table({"body": src["text"], "y": pa.array(["pos", "neg", "Positive", "NEGATIVE", "1", "0"]),
                      "stars": pa.array([9.0, 2.0, 8.0, 1.0, None, 3.0]),
                      "part": pa.array(["train", "train", "test", None, "unsup", "test"]).dictionary_encode()})
    path = tmp_path / "r.parquet"
    pq.write_table(table, path)
    rep = ingest(warehouse, str(path), "p", text_col="body", label_col="y", rating_col="stars", split_col="part",
                 progress=False)
    assert rep.rows_added == 6
    rows = lake_rows(warehouse, "p")
    texts = src["text"].to_pylist()
    ids = ["sha1_" + hashlib.sha1(t.encode()).hexdigest() for t in texts]
    assert list(rows) == ids  # stable content-hash ids, in source order
    assert [rows[i]["label"] for i in ids] == [1, 0, 1, 0, 1, 0]
    assert [rows[i]["rating"] for i in ids] == [9, 2, 8, 1, None, 3]
    assert [rows[i]["split"] for i in ids] == ["train", "train", "test", None, "unsup", "test"]
    assert ingest(warehouse, str(path), "p", text_col="body", label_col="y", rating_col="stars",
                  split_col="part", progress=False).rows_added == 0


def test_normalize_labels_all_spellings():
    arr = pa.array(["pos", "NEG", " positive ", "Negative", "1", "0", "TRUE", "false", "", None])
    assert normalize_labels(arr).to_pylist() == [1, 0, 1, 0, 1, 0, 1, 0, None, None]
    assert normalize_labels(pa.array([1, 0, None], pa.int64())).to_pylist() == [1, 0, None]
    assert normalize_labels(pa.array([True, False, None])).to_pylist() == [1, 0, None]
    assert normalize_labels(pa.array([1.0, 0.0, float("nan")])).to_pylist() == [1, 0, None]
    with pytest.raises(InputError) as err:
        normalize_labels(pa.array([1, 2]), path="f.parquet", column="y", row_offset=100)
    assert (err.value.path, err.value.row, err.value.column) == ("f.parquet", 102, "y")
    assert "unknown label value 2" in str(err.value)


# ------------------------------------------------------------------------- cleaning and dedupe

def test_empty_text_dropped_and_counted(warehouse, tmp_path):
    path = tmp_path / "e.jsonl"
    path.write_text('{"text": "kept"}\n{"text": ""}\n{"text": "   \\n\\t "}\n{"other": 1}\n{"text": null}\n'
                    '{"text": "also kept"}\n')
    rep = ingest(warehouse, str(path), "e", progress=False)
    assert (rep.rows_read, rep.rows_added) == (6, 2)
    assert rep.dropped == {"missing_text": 2, "empty_text": 2}
    assert sorted(r["text"] for r in lake_rows(warehouse, "e").values()) == ["also kept", "kept"]


def test_duplicates_within_source_keep_first(warehouse, tmp_path):
    """Repeats of the same review are harmless (dropped, counted); a reused id is an error (test_ingest_hardening)."""
    csv = tmp_path / "d.csv"
    csv.write_text("review_id,text\na,first a\nb,only b\na,first a\nc,only c\nb,only b\n")
    rep = ingest(warehouse, str(csv), "d", progress=False)
    assert (rep.rows_read, rep.rows_added, rep.duplicates_in_source, rep.duplicates) == (5, 3, 2, 2)
    assert {k: r["text"] for k, r in lake_rows(warehouse, "d").items()} == {"a": "first a", "b": "only b", "c": "only c"}


def test_invalid_utf8_replaced_and_counted(warehouse, tmp_path):
    csv = tmp_path / "latin1.csv"
    csv.write_bytes(b"text,label\ncaf\xe9 ok,pos\nfine,neg\n\xff\xfe broken,neg\n")
    rep = ingest(warehouse, str(csv), "u", progress=False)
    assert (rep.rows_added, rep.replaced_utf8) == (3, 2)
    texts = sorted(r["text"] for r in lake_rows(warehouse, "u").values())
    assert texts == ["caf\ufffd ok", "fine", "\ufffd\ufffd broken"]

    jl = tmp_path / "bad.jsonl"
    jl.write_bytes(b'{"text": "good"}\n{"text": "bad \xc3\x28 bytes"}\n')
    assert ingest(warehouse, str(jl), "u2", progress=False).replaced_utf8 == 1
    assert "bad \ufffd( bytes" in {r["text"] for r in lake_rows(warehouse, "u2").values()}

    base = write_aclimdb_folder(tmp_path / "acl", n_per_class=1, splits=("train",))
    next((base / "train" / "pos").glob("0_*.txt")).write_bytes(b"ok \x80 not utf8")  # another 0_*.txt = id clash
    rep = ingest(warehouse, str(tmp_path / "acl"), "u3", progress=False)
    assert rep.replaced_utf8 == 1 and lake_rows(warehouse, "u3")["train_pos_0"]["text"] == "ok \ufffd not utf8"

    pqp = tmp_path / "bin.parquet"
    pq.write_table(pa.table({"text": pa.array([b"ok", b"\xff bad"], pa.binary())}), pqp)
    assert ingest(warehouse, str(pqp), "u4", progress=False).replaced_utf8 == 1


def test_ten_megabyte_review_intact(warehouse, tmp_path):
    big = ("A very long review. " * 524_288)[: 10 * 1024 * 1024]
    csv = tmp_path / "big.csv"
    csv.write_text(f'review_id,text,label\nbig,"{big}",pos\nsmall,tiny,neg\n')
    jl = tmp_path / "big.jsonl"
    jl.write_text(json.dumps({"review_id": "big", "text": big}) + "\n" + json.dumps({"review_id": "s", "text": "x"}) + "\n")
    assert ingest(warehouse, str(csv), "big", progress=False).rows_added == 2
    assert lake_rows(warehouse, "big")["big"]["text"] == big
    assert ingest(warehouse, str(jl), "bigj", progress=False).rows_added == 2
    assert lake_rows(warehouse, "bigj")["big"]["text"] == big


@pytest.mark.subprocess
def test_ten_megabyte_review_memory_is_sane(tmp_path):
    """Peak RSS growth of a separate process ingesting one 10 MB review stays far below 'load it many times'."""
    big = "x" * (10 * 1024 * 1024)
    csv = tmp_path / "big.csv"
    csv.write_text(f"text\n{big}\n")
    code = (
        "import resource, sys\n"
        "from pipeline.core.config import Warehouse\nfrom pipeline.ingest.job import ingest\n"
        "import pyarrow, pyarrow.csv, pyarrow.parquet, pyarrow.json, pyarrow.dataset\n"
        "base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
        f"r = ingest(Warehouse.from_env({str(tmp_path / 'wh')!r}).ensure(), {str(csv)!r}, 'big', progress=False)\n"
        "assert r.rows_added == 1\n"
        "print(base // 1024, (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base) // 1024)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                         cwd=Path(__file__).resolve().parents[1])
    assert out.returncode == 0, out.stderr
    base_mib, grew_mib = map(int, out.stdout.strip().splitlines()[-1].split())
    print(f"peak RSS after imports {base_mib} MiB, growth while ingesting a 10 MB review {grew_mib} MiB")
    assert grew_mib < 200, f"ingesting a 10 MB review grew peak RSS by {grew_mib} MiB"


# ------------------------------------------------------------------------------- bad inputs

def _bad_cases(tmp: Path) -> list[tuple[str, dict, str]]:
    """(source, mapping kwargs, regex the error must match) — each names file / row / column."""
    cases = []
    cases.append((str(tmp / "nope.csv"), {}, r"no such file or folder \(file .*nope\.csv\)"))
    (tmp / "zero.csv").write_bytes(b"")
    cases.append((str(tmp / "zero.csv"), {}, r"empty file: no rows \(file .*zero\.csv\)"))
    (tmp / "zero.jsonl").write_bytes(b"")
    cases.append((str(tmp / "zero.jsonl"), {}, r"empty file: no rows \(file .*zero\.jsonl\)"))
    (tmp / "header.csv").write_text("review_id,text,label\n")
    cases.append((str(tmp / "header.csv"), {}, r"no rows .*\(file .*header\.csv\)"))
    (tmp / "blank.jsonl").write_text("\n  \n")
    cases.append((str(tmp / "blank.jsonl"), {}, r"no rows .*blank\.jsonl"))
    pq.write_table(pa.table({"text": pa.array([], pa.string())}), tmp / "empty.parquet")
    cases.append((str(tmp / "empty.parquet"), {}, r"no rows .*empty\.parquet"))
    (tmp / "cols.csv").write_text("id,body,label\n1,x,pos\n")
    cases.append((str(tmp / "cols.csv"), {}, r"column 'text' not found; the file has columns: 'id', 'body', 'label'"
                                            r".*--text-col.*file .*cols\.csv.*column 'text'"))
    cases.append((str(tmp / "cols.csv"), {"text_col": "body", "label_col": "sentiment"},
                  r"column 'sentiment' not found; the file has columns: 'id', 'body', 'label'.*column 'sentiment'"))
    pq.write_table(pa.table({"body": ["x"]}), tmp / "cols.parquet")
    cases.append((str(tmp / "cols.parquet"), {"text_col": "review"}, r"column 'review' not found.*'body'"))
    (tmp / "label.csv").write_text("text,label\na,pos\nb,neg\nc,maybe\nd,pos\n")
    cases.append((str(tmp / "label.csv"), {}, r"unknown label value 'maybe'.*file .*label\.csv, data row 3 at line 4, column 'label'"))
    (tmp / "label.jsonl").write_text('{"text": "a", "label": 1}\n{"text": "b", "label": 5}\n')
    cases.append((str(tmp / "label.jsonl"), {}, r"unknown label value 5.*label\.jsonl, line 2, column 'label'"))
    (tmp / "split.csv").write_text("text,split\na,train\nb,validation\n")
    cases.append((str(tmp / "split.csv"), {}, r"unknown split 'validation'.*data row 2 at line 3, column 'split'"))
    (tmp / "rating.csv").write_text("text,rating\na,5\nb,lots\n")
    cases.append((str(tmp / "rating.csv"), {}, r"rating 'lots' is not a number.*data row 2 at line 3, column 'rating'"))
    (tmp / "ids.csv").write_text("review_id,text\na,x\n,y\n")
    cases.append((str(tmp / "ids.csv"), {}, r"empty review id.*data row 2 at line 3, column 'review_id'"))
    (tmp / "syntax.jsonl").write_text('{"text": "a"}\n{"text": "b"\n')
    cases.append((str(tmp / "syntax.jsonl"), {}, r"invalid JSON.*syntax\.jsonl, line 2"))
    (tmp / "array.json").write_text('[{"text": "a"}]')
    cases.append((str(tmp / "array.json"), {}, r"JSON array.*array\.json"))
    (tmp / "notes.txt").write_text("hello")
    cases.append((str(tmp / "notes.txt"), {}, r"unrecognised source type"))
    cases.append((str(tmp / "label.csv"), {"split": "dev"}, r"--split must be one of train, test, unsup"))

    ok = {"aclImdb/train/pos/0_9.txt": b"fine review", "aclImdb/train/neg/0_2.txt": b"bad review"}
    make_tarball(tmp / "dotdot.tar.gz", {**ok, "aclImdb/train/pos/../../../../etc/1_9.txt": b"evil"})
    cases.append((str(tmp / "dotdot.tar.gz"), {}, r"unsafe tarball member 'aclImdb/train/pos/\.\./\.\./\.\./\.\./etc/1_9\.txt'"
                                                  r".*nothing was ingested.*dotdot\.tar\.gz"))
    make_tarball(tmp / "abs.tar.gz", {**ok, "/tmp/aclImdb/train/pos/5_9.txt": b"evil"})
    cases.append((str(tmp / "abs.tar.gz"), {}, r"unsafe tarball member '/tmp/aclImdb/train/pos/5_9\.txt'.*abs\.tar\.gz"))
    many = {f"aclImdb/train/pos/{i}_9.txt": (f"review {i} " * 400).encode() for i in range(200)}
    whole = make_tarball(tmp / "whole.tar.gz", many).read_bytes()
    (tmp / "truncated.tar.gz").write_bytes(whole[: len(whole) // 2])
    cases.append((str(tmp / "truncated.tar.gz"), {}, r"not a valid, complete tar archive.*truncated\.tar\.gz"))
    plain = make_tarball(tmp / "plain.tar", {"aclImdb/train/pos/0_9.txt": b"a" * 512,
                                             "aclImdb/train/pos/1_9.txt": b"b" * 512}, mode="w").read_bytes()
    (tmp / "cut.tar").write_bytes(plain[:1024])  # ends exactly after the first member: no end marker
    cases.append((str(tmp / "cut.tar"), {}, r"truncated.*cut\.tar"))
    (tmp / "garbage.tar.gz").write_bytes(b"\x1f\x8b" + b"\x00garbage" * 100)
    cases.append((str(tmp / "garbage.tar.gz"), {}, r"not a valid, complete tar archive.*garbage\.tar\.gz"))
    make_tarball(tmp / "other.tar.gz", {"data/readme.txt": b"hi"})
    cases.append((str(tmp / "other.tar.gz"), {}, r"no aclImdb reviews in this tarball.*other\.tar\.gz"))
    (tmp / "emptydir").mkdir()
    cases.append((str(tmp / "emptydir"), {}, r"not an aclImdb folder.*emptydir"))
    write_aclimdb_folder(tmp / "acl", n_per_class=1, splits=("train",))
    cases.append((str(tmp / "acl"), {"text_col": "body"}, r"--text-col apply to CSV/JSON/Parquet files only"))
    return cases


def test_bad_inputs_name_the_problem_and_leave_the_lake_unchanged(populated, tmp_path):
    wh = populated
    before = snapshot(wh)
    assert len(dataset_files(wh, "ds")) == 1
    bad_dir = tmp_path / "bad"
    bad_dir.mkdir()
    for source, kwargs, pattern in _bad_cases(bad_dir):
        try:
            ingest(wh, source, "ds", progress=False, **kwargs)
        except InputError as exc:
            assert re.search(pattern, str(exc)), f"{source} {kwargs}: message {exc} does not match {pattern}"
        else:
            pytest.fail(f"no error for {source} {kwargs}")
        assert snapshot(wh) == before, f"lake changed after failing on {source}"
        assert not tmp_files(wh), f"temp file left after failing on {source}"
        # a brand-new dataset is not created either
        with pytest.raises(InputError):
            ingest(wh, source, "fresh", progress=False, **kwargs)
        assert not wh.dataset_dir("fresh").exists()
    assert snapshot(wh) == before


def test_bad_row_late_in_a_big_file_still_leaves_no_trace(populated, tmp_path):
    """The error comes after many good batches were already staged: they must vanish too."""
    n = 30_000
    csv = tmp_path / "late.csv"
    with open(csv, "w") as fh:
        fh.write("text,label\n")
        for i in range(n):
            fh.write(f"review number {i},{'pos' if i % 2 else 'neg'}\n")
        fh.write("the last one,unsure\n")
    before = snapshot(populated)
    with pytest.raises(InputError, match=rf"unknown label value 'unsure'.*data row {n + 1} at line {n + 2}, column 'label'"):
        ingest(populated, str(csv), "ds", progress=False)
    assert snapshot(populated) == before and not tmp_files(populated)


def test_detect_kinds(tmp_path):
    for name, kind in [("a.csv", "csv"), ("a.tsv", "tsv"), ("a.jsonl", "jsonl"), ("a.ndjson", "jsonl"),
                       ("a.json", "jsonl"), ("a.parquet", "parquet"), ("a.csv.gz", "csv"),
                       ("aclImdb_v1.tar.gz", "aclimdb-tarball"), ("a.tgz", "aclimdb-tarball")]:
        (tmp_path / name).write_bytes(b"x")
        assert detect(str(tmp_path / name)).kind == kind
    assert detect("https://ai.stanford.edu/~amaas/data/sentiment/aclImdb_v1.tar.gz").kind == "aclimdb-url"
    with pytest.raises(InputError, match="download this csv file first"):
        detect("https://example.com/reviews.csv")


def test_compressed_csv_and_tsv(warehouse, tmp_path):
    import gzip

    with gzip.open(tmp_path / "r.csv.gz", "wt") as fh:
        fh.write("text,label\nzipped good,pos\nzipped bad,neg\n")
    (tmp_path / "r.tsv").write_text("text\tlabel\ttabbed, with comma\tpos\n".replace("\ttabbed", "\ntabbed"))
    assert ingest(warehouse, str(tmp_path / "r.csv.gz"), "z", progress=False).rows_added == 2
    assert ingest(warehouse, str(tmp_path / "r.tsv"), "z", progress=False).rows_added == 1
    assert sorted(r["text"] for r in lake_rows(warehouse, "z").values()) == [
        "tabbed, with comma", "zipped bad", "zipped good"]


def test_tarball_with_link_member_pointing_outside_is_rejected(warehouse, tmp_path):
    path = tmp_path / "link.tar.gz"
    with tarfile.open(path, "w:gz") as tf:
        info = tarfile.TarInfo("aclImdb/train/pos/0_9.txt")
        data = b"fine"
        info.size = len(data)
        import io

        tf.addfile(info, io.BytesIO(data))
        link = tarfile.TarInfo("aclImdb/train/pos/1_9.txt")
        link.type = tarfile.SYMTYPE
        link.linkname = "../../../../etc/passwd"
        tf.addfile(link)
    with pytest.raises(InputError, match=r"unsafe tarball member 'aclImdb/train/pos/1_9\.txt' -> \.\./"):
        ingest(warehouse, str(path), "l", progress=False)
    assert not wh_has(warehouse, "l")


def wh_has(wh, name) -> bool:
    return wh.dataset_dir(name).exists()


def test_cut_off_download_is_a_transient_error_and_download_is_atomic(warehouse, tmp_path):
    """A server that promises more bytes than it sends: ingest fails (retryable), nothing lands."""
    import http.server
    import threading

    from pipeline.ingest.download import download

    base = write_aclimdb_folder(tmp_path / "src", n_per_class=20)
    body = tar_folder(base, tmp_path / "a.tar.gz").read_bytes()

    class Liar(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body if self.path == "/full.tar.gz" else body[: len(body) // 2])

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Liar)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        before = snapshot(warehouse)
        with pytest.raises(DownloadError, match=r"connection closed after \d+ of \d+ bytes") as err:
            ingest(warehouse, f"{url}/cut.tar.gz", "web", progress=False)
        assert err.value.transient and snapshot(warehouse) == before and not tmp_files(warehouse)
        with pytest.raises(DownloadError):
            download(f"{url}/cut.tar.gz", tmp_path / "dl" / "x.tar.gz", progress=False)
        assert not (tmp_path / "dl").exists() or not list((tmp_path / "dl").iterdir())
        assert download(f"{url}/full.tar.gz", tmp_path / "dl" / "x.tar.gz", progress=False).read_bytes() == body
    finally:
        server.shutdown()
        server.server_close()
