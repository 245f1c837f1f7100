"""prepare(): shards, manifest, checksums, prep id, cache, Preprocessor parity, edge cases."""

from __future__ import annotations

import datetime as dt
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest

from pipeline.core.errors import InputError, IntegrityError, NotFoundError
from pipeline.train.loader import load_split
from pipeline.prepare.config import PrepareConfig
from pipeline.prepare.job import compute_prep_id, dataset_fingerprint, prepare
from pipeline.prepare.preprocess import load_preprocessor
from pipeline.core.schema import REVIEW_SCHEMA
from pipeline.prepare.shards import ChecksumError
from pipeline.prepare.vocab import read_vocab, vocab_sha256
from synthetic import make_reviews, write_lake_dataset

CFG = PrepareConfig(max_len=24, min_freq=1, max_vocab=1000)
ROOT = Path(__file__).resolve().parents[1]


def rows(texts, split="train", labels=None, prefix="x"):
    n = len(texts)
    labels = labels if labels is not None else [i % 2 for i in range(n)]
    now = dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc)
    return pa.table({"review_id": [f"{prefix}{i}" for i in range(n)], "text": texts,
                     "label": pa.array(labels, pa.int8()), "rating": pa.array([None] * n, pa.int8()),
                     "split": [split] * n, "source": ["t"] * n, "ingested_at": pa.array([now] * n, REVIEW_SCHEMA.field("ingested_at").type)},
                    schema=REVIEW_SCHEMA)


@pytest.fixture
def lake(warehouse):
    t = pa.concat_tables([make_reviews(400, 0, "train"), make_reviews(120, 1, "test", id_prefix="te"),
                          make_reviews(60, 2, "unsup", id_prefix="un")])
    t = t.set_column(2, "label", pc.if_else(pc.equal(t["split"], "unsup"), pa.scalar(None, pa.int8()), t["label"]))
    write_lake_dataset(warehouse, "syn", t)
    return warehouse, t


def text_of(table: pa.Table, review_ids: list[str]) -> list[str]:
    idx = {r: i for i, r in enumerate(table["review_id"].to_pylist())}
    texts = table["text"].to_pylist()
    return [texts[idx[r]] for r in review_ids]


def test_shards_manifest_and_roundtrip(lake):
    wh, table = lake
    res = prepare(wh, "syn", CFG, batch_rows=64, shard_rows=100)
    m = json.loads((res.prep_dir / "manifest.json").read_text())
    assert not res.cached and res.prep_id == m["prep_id"]
    assert m["counts"] == {"train": 300, "val": 100, "test": 120, "unsup": 0}
    assert m["label_counts"]["val"] == {"0": 50, "1": 50}               # stratified
    assert m["dropped"]["unsup_excluded"] == 60
    assert m["params"]["max_len"] == 24 and m["code_version"]
    vocab = read_vocab(res.prep_dir / "vocab.txt")
    assert vocab[:2] == ["<pad>", "<unk>"] and m["vocab_size"] == len(vocab)
    assert m["vocab_sha256"] == vocab_sha256(vocab)
    assert [s["rows"] for s in m["splits"]["train"]["shards"]] == [100, 100, 100]
    assert all(len(f["sha256"]) == 64 for s in m["splits"]["train"]["shards"] for f in s["files"].values())
    assert set(m["lengths"]["tokens"]) >= {"p50", "p95", "max"} and m["lengths"]["kept"]["max"] <= 24
    assert m["unk_rate"]["train"] == 0.0 and m["unk_rate"]["test"] is not None
    assert (res.prep_dir / "length_hist.png").stat().st_size > 1000
    assert (res.prep_dir / "train/shard-00000.ids.npy").exists()
    # vocabulary from train only: a word only in the test split is unknown
    data = load_split(res.prep_dir, "train", verify=True)
    assert data.ids.dtype == np.int32 and data.ids.shape == (300, 24)
    assert data.lengths.dtype == np.int32 and data.labels.dtype == np.int8
    assert len(set(data.review_ids)) == 300
    val = load_split(res.prep_dir, "val")
    assert not set(val.review_ids) & set(data.review_ids)
    # every padded row: lengths real tokens then zeros (right pad), no <pad> inside
    for ids, n in zip(data.ids, data.lengths):
        assert (ids[:n] != 0).all() and (ids[n:] == 0).all()
    assert not list(wh.shards.glob(".*")) and not list(wh.tmp.iterdir())     # no temp leftovers


def test_vocab_from_train_only(warehouse):
    train = rows(["alpha beta", "alpha gamma", "beta alpha", "gamma beta"], labels=[1, 0, 1, 0])
    test = rows(["alpha zeta", "omega"], split="test", labels=[1, 0], prefix="t")
    write_lake_dataset(warehouse, "v", pa.concat_tables([train, test]))
    res = prepare(warehouse, "v", PrepareConfig(max_len=4, min_freq=1, val_fraction=0.0, min_class_rows=1))
    vocab = read_vocab(res.prep_dir / "vocab.txt")
    assert vocab == ["<pad>", "<unk>", "alpha", "beta", "gamma"]
    test_ids = load_split(res.prep_dir, "test").ids
    assert test_ids.tolist() == [[2, 1, 0, 0], [1, 0, 0, 0]]
    assert res.manifest["unk_rate"]["test"] == pytest.approx(2 / 3, abs=1e-5)


def test_preprocessor_encode_reproduces_shards(lake):
    wh, table = lake
    for cfg in (PrepareConfig(max_len=16, truncate="head+tail", pad_side="left", min_freq=2, max_vocab=30),
                PrepareConfig(max_len=20, truncate="tail", pad_side="right", strip_html=False)):
        res = prepare(wh, "syn", cfg, batch_rows=50)
        pre = load_preprocessor(res.prep_dir)
        for split in ("train", "val", "test"):
            data = load_split(res.prep_dir, split)
            ids, lengths = pre.encode(text_of(table, data.review_ids))
            assert np.array_equal(ids, data.ids) and np.array_equal(lengths, data.lengths)
        assert pre.tokenize(["Great <br />film!"]) == ([["great", "film"]] if cfg.strip_html else [["great", "br", "film"]])


def test_prep_id_deterministic_and_cache_hit(lake):
    wh, _ = lake
    fp = dataset_fingerprint(wh, "syn")
    assert compute_prep_id("syn", fp, CFG) == compute_prep_id("syn", dataset_fingerprint(wh, "syn"), CFG)
    assert compute_prep_id("syn", fp, CFG) != compute_prep_id("syn", fp, PrepareConfig(max_len=25, min_freq=1, max_vocab=1000))
    first = prepare(wh, "syn", CFG)
    stamps = {p: p.stat().st_mtime_ns for p in first.prep_dir.rglob("*")}
    again = prepare(wh, "syn", CFG)
    assert again.cached and again.prep_id == first.prep_id and again.counts == first.counts
    assert {p: p.stat().st_mtime_ns for p in again.prep_dir.rglob("*")} == stamps
    # new data in the lake -> new prep id, new prep
    write_lake_dataset(wh, "syn", make_reviews(10, 9, "train", id_prefix="new"), part="part-1")
    third = prepare(wh, "syn", CFG)
    assert not third.cached and third.prep_id != first.prep_id and third.counts["train"] + third.counts["val"] == 410


def test_cache_hit_reads_no_text(lake):
    wh, _ = lake
    first = prepare(wh, "syn", CFG)
    # make the lake unreadable as Parquet but keep its fingerprint (name, size, mtime): a cache hit must not read it
    part = next(wh.dataset_dir("syn").glob("*.parquet"))
    st = part.stat()
    part.write_bytes(b"\0" * st.st_size)
    import os

    os.utime(part, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert prepare(wh, "syn", CFG).cached
    # a new prep id must read the text: the damaged part file is named, as a damaged lake (no raw arrow error)
    with pytest.raises(IntegrityError, match=rf"cannot be read: .*{part.name}.*Parquet magic bytes"):
        prepare(wh, "syn", PrepareConfig(max_len=7))
    assert first.prep_dir.exists()


def test_checksum_verification_detects_corruption(lake):
    wh, _ = lake
    res = prepare(wh, "syn", CFG)
    load_split(res.prep_dir, "val", verify=True)
    shard = res.prep_dir / "val/shard-00000.ids.npy"
    raw = bytearray(shard.read_bytes())
    raw[-1] ^= 0xFF
    shard.write_bytes(bytes(raw))
    load_split(res.prep_dir, "train", verify=True)                 # other splits still fine
    with pytest.raises(ChecksumError, match="val/shard-00000.ids.npy"):
        load_split(res.prep_dir, "val", verify=True)
    (res.prep_dir / "test/shard-00000.labels.npy").unlink()
    with pytest.raises(ChecksumError, match="missing"):
        load_split(res.prep_dir, "test", verify=True)


def test_zero_token_reviews_are_dropped_and_counted(warehouse):
    t = rows(["good film", "!!! ...", "<br /><br />", "bad film", "fine"], labels=[1, 0, 1, 0, 1])
    write_lake_dataset(warehouse, "z", t)
    res = prepare(warehouse, "z", PrepareConfig(max_len=8, min_freq=1, val_fraction=0.0, min_class_rows=1))
    assert res.manifest["dropped"]["empty_after_normalisation"] == 2
    data = load_split(res.prep_dir, "train")
    assert data.review_ids == ["x0", "x3", "x4"] and data.lengths.min() >= 1
    ids, lengths = load_preprocessor(res.prep_dir).encode(["!!!", None, ""])
    assert lengths.tolist() == [0, 0, 0] and not ids.any()


@pytest.mark.subprocess
def test_huge_review_is_truncated_with_sane_memory(warehouse):
    big = ("word " * 2_100_000)[:10_000_000] + " THE END"
    t = rows([big, "small one", "another small", "tiny"], labels=[1, 0, 1, 0])
    write_lake_dataset(warehouse, "big", t)
    # peak RSS growth measured in a fresh process: this one's high-water mark was raised by earlier tests
    code = (
        "import resource\n"
        "from pipeline.core.config import Warehouse\nfrom pipeline.prepare.config import PrepareConfig\n"
        "from pipeline.prepare.job import prepare\nimport pyarrow.dataset, pipeline.core.plots\n"
        "base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
        f"res = prepare(Warehouse.from_env({str(warehouse.root)!r}), 'big', PrepareConfig(max_len=6, min_freq=1, "
        "val_fraction=0.0, truncate='head+tail', min_class_rows=1))\n"
        "print(res.prep_dir, (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base) // 1024)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert out.returncode == 0, out.stderr
    prep_dir, grew_mib = out.stdout.strip().splitlines()[-1].rsplit(" ", 1)
    data = load_split(prep_dir, "train")
    vocab = read_vocab(Path(prep_dir) / "vocab.txt")
    assert data.lengths.tolist() == [6, 2, 2, 1]
    assert [vocab[i] for i in data.ids[0]] == ["word", "word", "word", "word", "the", "end"]
    assert json.loads((Path(prep_dir) / "manifest.json").read_text())["lengths"]["tokens"]["max"] == 2_000_002
    print(f"peak RSS growth while preparing a 10 MB review: {grew_mib} MiB")    # 61 MiB measured
    assert int(grew_mib) < 200, f"peak RSS grew by {grew_mib} MiB for a 10 MB review"


def test_spill_to_disk_gives_identical_shards(lake):
    wh, _ = lake
    a = prepare(wh, "syn", CFG, batch_rows=40, workers=2)
    import shutil

    shutil.rmtree(a.prep_dir)
    b = prepare(wh, "syn", CFG, batch_rows=40, workers=1, spill_budget=0)
    assert a.prep_id == b.prep_id
    assert a.manifest["splits"] == b.manifest["splits"]                  # same bytes: same checksums


def test_unsup_and_unlabelled_rows(lake):
    wh, _ = lake
    res = prepare(wh, "syn", PrepareConfig(max_len=12, include_unsup=True))
    assert res.counts["unsup"] == 60 and res.manifest["label_counts"]["unsup"] == {"-1": 60}
    assert load_split(res.prep_dir, "unsup").labels.tolist() == [-1] * 60


def test_bad_inputs(warehouse, lake):
    wh, _ = lake
    with pytest.raises(NotFoundError):
        prepare(wh, "missing", CFG)
    for bad in (dict(truncate="middle"), dict(pad_side="top"), dict(max_len=0), dict(val_fraction=1.0),
                dict(min_freq=0), dict(max_vocab=2)):
        with pytest.raises(InputError):
            prepare(wh, "syn", PrepareConfig(**bad))
    assert not list(wh.shards.iterdir())


def test_crash_leaves_no_half_prep(lake, monkeypatch):
    wh, _ = lake
    import pipeline.prepare.job as P

    def boom(*a, **k):
        raise RuntimeError("disk full")

    monkeypatch.setattr(P, "_plot", boom)
    with pytest.raises(RuntimeError):
        prepare(wh, "syn", CFG)
    assert not list(wh.shards.iterdir()) and not list(wh.tmp.iterdir())
    monkeypatch.undo()
    assert not prepare(wh, "syn", CFG).cached


def test_shard_writer_splits_exactly(tmp_path):
    from pipeline.prepare.shards import ShardWriter

    w = ShardWriter(tmp_path, "train", 3, total=10, shard_rows=4)
    for lo, hi in ((0, 3), (3, 9), (9, 10)):                 # batches that straddle shard boundaries
        n = hi - lo
        w.add(np.arange(lo * 3, hi * 3, dtype=np.int32).reshape(n, 3), np.full(n, 3), np.zeros(n, np.int8),
              pa.array([f"r{i}" for i in range(lo, hi)]))
    shards = w.close()
    assert [s["rows"] for s in shards] == [4, 4, 2]
    ids = np.concatenate([np.load(tmp_path / f"{s['stem']}.ids.npy") for s in shards])
    assert np.array_equal(ids, np.arange(30).reshape(10, 3))
    with pytest.raises(ValueError):
        w.add(np.zeros((1, 3), np.int32), np.ones(1), np.zeros(1, np.int8), pa.array(["x"]))
