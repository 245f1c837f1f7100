"""A warehouse on an object store (``--warehouse s3://bucket/prefix``), through a local mirror per machine.

Against a real S3-compatible server (moto in server mode) on loopback:

* the whole life cycle through the real CLI: ingest -> prepare -> train -> score a local DuckDB table on 2 Dask
  workers (once through Prefect), every row intact and scored, the lake on S3 read back with pyarrow; then a
  second machine's mirror pulls the same lake, shards, model and champion;
* a failed command publishes nothing (its mirror's new files go up with the next command that succeeds);
* a pull leaves identical local files alone, replaces a changed one, keeps a local change not yet pushed, and
  skips a folder whose visibility file is not on the store yet; a push deletes nothing on the store and never
  overwrites a champion pointer another machine moved (races: tests/test_s3_conditional.py).
"""

from __future__ import annotations

import hashlib
import json
import uuid
from pathlib import Path

import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest
from ops_helpers import TINY_OVERRIDES
from score_helpers import make_review_db, query_rows
from synthetic import make_reviews
from typer.testing import CliRunner

from flows.cli import app
from pipeline.core import objectstore
from pipeline.core.objectstore import PublishConflict, pull, push



@pytest.fixture
def s3(monkeypatch):
    """A real S3-compatible server (moto) on loopback, with a bucket; AWS_* point every process at it."""
    import s3fs
    from serverkit import moto_s3

    for key in ("REVIEWFLOW_WAREHOUSE", "REVIEWFLOW_SCRATCH", "REVIEWFLOW_CACHE", "REVIEWFLOW_DASK_ADDRESS"):
        monkeypatch.delenv(key, raising=False)
    with moto_s3(monkeypatch):
        bucket = f"reviewflow-wh-{uuid.uuid4().hex[:12]}"    # moto keeps buckets for the whole process: one per test
        s3fs.S3FileSystem().mkdir(bucket)
        yield f"s3://{bucket}/wh"


def _fs():
    import s3fs

    return s3fs.S3FileSystem(skip_instance_cache=True, use_listings_cache=False)


def cli(cache: Path, *args: str, env: dict | None = None):
    """One ``reviewflow`` command, in this process, on the machine whose mirrors live under ``cache``."""
    return CliRunner().invoke(app, [str(a) for a in args], env={"REVIEWFLOW_CACHE": str(cache), **(env or {})})


def _ok(result) -> None:
    assert result.exit_code == 0, f"{result.output}\n{result.exception!r}"


def local_tree(mirror: Path) -> dict[str, str]:
    """``{relative path: sha256}`` of the mirror's files that travel to the store."""
    return {p.relative_to(mirror).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for prefix in objectstore.SYNCED if (mirror / prefix).is_dir()
            for p in (mirror / prefix).rglob("*") if p.is_file()
            and not any(part.startswith(".") for part in p.relative_to(mirror).parts)}


def store_tree(uri: str) -> dict[str, str]:
    fs, root = _fs(), uri.removeprefix("s3://")
    return {path[len(root) + 1:]: hashlib.sha256(fs.cat_file(path)).hexdigest() for path in fs.find(root)}


def only_mirror(cache: Path) -> Path:
    (mirror,) = [p for p in cache.iterdir() if p.is_dir()]
    return mirror


def write_csv(path: Path, n: int, seed: int = 3) -> set[str]:
    t = make_reviews(n, seed=seed, split="train")
    pacsv.write_csv(t.select(["review_id", "text", "label"]), path)
    return set(t.column("review_id").to_pylist())


@pytest.mark.prefect
@pytest.mark.slow
def test_ingest_prepare_train_score_on_s3_with_two_workers_then_a_second_machine_sees_it(
        prefect_harness, s3, tmp_path):
    a, b = tmp_path / "machine-a", tmp_path / "machine-b"
    ids = write_csv(tmp_path / "reviews.csv", 200)
    _ok(cli(a, "ingest", tmp_path / "reviews.csv", "--dataset", "tiny", "-w", s3, "--no-prefect", "--no-progress"))
    _ok(cli(a, "prepare", "--dataset", "tiny", "-w", s3, "--no-prefect", "--min-freq", "1", "--val-fraction",
            "0.25", "--max-len", "64"))
    sets = [f"--set={k}={json.dumps(v)}" for k, v in {**TINY_OVERRIDES, "min_freq": 1, "val_fraction": 0.25}.items()]
    _ok(cli(a, "train", "--dataset", "tiny", "-w", s3, "--no-prefect", "--device", "cpu", *sets))
    mirror = only_mirror(a)
    version = json.loads((mirror / "models" / "champion").read_text())["version"]

    db = tmp_path / "local" / "reviews.duckdb"                  # the DuckDB file stays with the committer
    db.parent.mkdir()
    make_review_db(db, n=300)
    _ok(cli(a, "score", "--table", "reviews", "--db", db, "-w", s3, "--workers", "2", "--rows-per-part", "100",
            "--device", "cpu"))
    assert query_rows(db, "SELECT count(*), count(DISTINCT sentiment_model), min(sentiment_model) FROM reviews "
                          "WHERE sentiment_score IS NOT NULL") == [(300, 1, version)]
    assert query_rows(db, "SELECT engine, workers, partitions, rows_scored, status FROM sentiment_runs") == [
        ("dask", 2, 3, 300, "completed")]

    stored = store_tree(s3)
    lake = pq.ParquetDataset(f"{s3[5:]}/lake/reviews/dataset=tiny", filesystem=_fs()).read()
    assert lake.num_rows == 200 and set(lake.column("review_id").to_pylist()) == ids
    assert f"models/{version}/config.json" in stored and "models/champion" in stored
    assert any(k.startswith("shards/") and k.endswith("/manifest.json") for k in stored)
    assert not any(k.endswith(".duckdb") or "/." in f"/{k}" for k in stored)
    assert not (mirror / "scratch").exists()                    # partitions went to <store>/scratch, not the mirror,
    assert not [k for k in stored if k.startswith("scratch/")]  # and the completed run removed them
    assert stored == local_tree(mirror)                         # everything the mirror published, nothing else

    listed = cli(b, "models", "list", "-w", s3)                 # another machine: pulls the models it reads
    _ok(listed)
    assert version in listed.output
    other = only_mirror(b)
    assert json.loads((other / "models" / "champion").read_text())["version"] == version
    assert not (other / "lake" / "reviews" / "dataset=tiny").exists()      # `models list` does not read the lake
    pull(s3, other)
    assert local_tree(other) == local_tree(mirror)


def test_a_failed_command_publishes_nothing_the_next_success_publishes_the_mirror(s3, tmp_path, monkeypatch):
    a = tmp_path / "machine-a"
    monkeypatch.setenv("REVIEWFLOW_WAREHOUSE", s3)               # the variable, not the flag
    write_csv(tmp_path / "one.csv", 20)
    _ok(cli(a, "ingest", tmp_path / "one.csv", "--dataset", "d1", "--no-prefect", "--no-progress"))
    before = store_tree(s3)
    assert [k for k in before if k.startswith("lake/reviews/dataset=d1/")]
    mirror = only_mirror(a)
    published_here = mirror / "lake" / "reviews" / "dataset=d1" / "part-published-by-a-crashed-run.parquet"
    published_here.write_bytes(next((mirror / "lake" / "reviews" / "dataset=d1").glob("part-*")).read_bytes())

    failed = cli(a, "ingest", tmp_path / "missing.csv", "--dataset", "d1", "--no-prefect", "--no-progress")
    assert failed.exit_code != 0
    assert store_tree(s3) == before

    _ok(cli(a, "models", "list"))                               # any command that succeeds pushes what is pending
    assert store_tree(s3) == {**before, published_here.relative_to(mirror).as_posix():
                              hashlib.sha256(published_here.read_bytes()).hexdigest()}


def test_serve_refuses_an_object_store_warehouse_it_could_never_publish(s3, tmp_path):
    result = cli(tmp_path / "c", "serve", "-w", s3)
    assert result.exit_code != 0 and "would never publish" in str(result.exception)
    assert store_tree(s3) == {}


def _mirror_with_files(root: Path) -> Path:
    for rel, data in {"lake/reviews/dataset=d/part-1.parquet": b"lake part one",
                      "shards/p1/train/shard-00000.ids.npy": b"shard bytes",
                      "shards/p1/manifest.json": b'{"prep_id": "p1"}',
                      "models/v0001-x-1/model.safetensors": b"weights",
                      "models/v0001-x-1/config.json": b'{"v": 1}',
                      "models/champion": b'{"version": "v0001-x-1"}',
                      "models/aliases/challenger.json": b'{"version": "v0001-x-1"}',
                      "models/aliases.jsonl": b'{"alias": "challenger"}\n',
                      "models/.promotion.lock": b"",
                      "reviews.duckdb": b"not synced"}.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data)
    return root


def _stats(root: Path) -> dict[str, tuple[int, int]]:
    return {rel: ((root / rel).stat().st_ino, (root / rel).stat().st_mtime_ns) for rel in local_tree(root)}


def test_pull_leaves_identical_files_alone_and_push_deletes_nothing_on_the_store(s3, tmp_path):
    a = _mirror_with_files(tmp_path / "a")
    sent = push(a, s3)
    assert sorted(sent.transferred) == sorted(local_tree(a))
    assert sent.transferred[-2:] == ["models/champion", "models/aliases.jsonl"]  # the pointer last, then the log
    assert ".promotion.lock" not in str(store_tree(s3)) and "reviews.duckdb" not in store_tree(s3)
    assert push(a, s3).transferred == []                        # unchanged since the last sync: nothing to send

    b = tmp_path / "b"
    assert sorted(pull(s3, b).transferred) == sorted(local_tree(a))
    assert local_tree(b) == local_tree(a)
    seen = _stats(b)
    (b / objectstore.STATE_FILE).unlink()                       # no record: compared by ETag (MD5), not rewritten
    again = pull(s3, b)
    assert again.transferred == [] and again.unchanged == len(seen) and _stats(b) == seen

    part = b / "lake/reviews/dataset=d/part-1.parquet"
    part.write_bytes(b"lake part two")                          # same size, other bytes, store copy unchanged
    assert pull(s3, b).pending == ["lake/reviews/dataset=d/part-1.parquet"]    # a local change is kept ...
    (b / objectstore.STATE_FILE).unlink()
    assert pull(s3, b).transferred == ["lake/reviews/dataset=d/part-1.parquet"]  # ... unless it was never synced
    assert part.read_bytes() == b"lake part one"

    part.unlink()
    push(b, s3)                                                 # the mirror lacks it: the store keeps it
    assert "lake/reviews/dataset=d/part-1.parquet" in store_tree(s3)

    worker = tmp_path / "worker"                                # a Dask worker needs one model version, no more
    pull(s3, worker, ["models/v0001-x-1"])
    assert sorted(local_tree(worker)) == ["models/v0001-x-1/config.json", "models/v0001-x-1/model.safetensors"]


def test_pull_skips_a_folder_being_published_and_builds_a_new_one_whole(s3, tmp_path):
    fs = _fs()
    fs.pipe_file(f"{s3[5:]}/shards/p2/train/shard-00000.ids.npy", b"first half of a publish")
    rep = pull(s3, tmp_path / "b")
    assert rep.skipped == ["shards/p2"] and not (tmp_path / "b" / "shards" / "p2").exists()
    fs.pipe_file(f"{s3[5:]}/shards/p2/manifest.json", b"{}")
    assert sorted(pull(s3, tmp_path / "b").transferred) == ["shards/p2/manifest.json",
                                                            "shards/p2/train/shard-00000.ids.npy"]
    assert not [p for p in (tmp_path / "b" / "shards").iterdir() if p.name.startswith(".")]   # no temp left


def test_publish_order_data_first_then_visibility_files_pointers_champion_last_then_logs():
    rels = ["models/champion", "models/v1/config.json", "models/champions/d.json", "models/v1/manifest.json",
            "shards/p/manifest.json", "models/v1/model.safetensors", "lake/reviews/dataset=d/part-1.parquet",
            "shards/p/train/shard-00000.ids.npy", "models/promotions.jsonl", "models/aliases/challenger.json",
            "models/aliases.jsonl"]
    ordered = sorted(rels, key=lambda r: (objectstore.publish_rank(r), r))
    assert ordered == ["lake/reviews/dataset=d/part-1.parquet", "models/v1/model.safetensors",
                       "shards/p/train/shard-00000.ids.npy", "shards/p/manifest.json", "models/v1/manifest.json",
                       "models/v1/config.json", "models/aliases/challenger.json", "models/champions/d.json",
                       "models/champion", "models/aliases.jsonl", "models/promotions.jsonl"]   # logs record moves made


def test_a_champion_moved_by_another_machine_is_not_overwritten(s3, tmp_path):
    a = _mirror_with_files(tmp_path / "a")
    (a / "models/promotions.jsonl").write_text('{"by": "a", "n": 1}\n')
    push(a, s3)
    b = tmp_path / "b"
    pull(s3, b)
    (b / "models/champion").write_bytes(b'{"version": "v0002-from-b"}')
    (b / "models/promotions.jsonl").write_text('{"by": "a", "n": 1}\n{"by": "b", "n": 2}\n')
    push(b, s3)

    (a / "models/champion").write_bytes(b'{"version": "v0003-from-a"}')
    (a / "models/promotions.jsonl").write_text('{"by": "a", "n": 1}\n{"by": "a", "n": 3}\n')
    with pytest.raises(PublishConflict, match="models/champion"):
        push(a, s3)
    fs = _fs()
    assert fs.cat_file(f"{s3[5:]}/models/champion") == b'{"version": "v0002-from-b"}'
    assert fs.cat_file(f"{s3[5:]}/models/promotions.jsonl").decode().splitlines() == [
        '{"by": "a", "n": 1}', '{"by": "b", "n": 2}']       # a's refused promotion is not logged as done ...
    assert (a / "models/promotions.jsonl").read_bytes() == fs.cat_file(f"{s3[5:]}/models/promotions.jsonl")
    assert (a / "models/champion").read_bytes() == b'{"version": "v0002-from-b"}'   # ... nor kept in a's mirror
    pull(s3, a)                                                 # the store's champion stays on the next pull
    assert (a / "models/champion").read_bytes() == b'{"version": "v0002-from-b"}'
