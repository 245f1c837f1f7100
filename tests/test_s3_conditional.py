"""Pointers on an object-store warehouse are moved by conditional writes, so two machines never both win.

Against a real S3-compatible server (moto's, on loopback), with no mock in between:

* two machines' mirrors pull the same warehouse, both move the same champion (or alias) pointer to their own
  version and push at the same instant (threads behind a barrier, ten rounds per family): exactly one push wins
  every time, the other is refused with one clear line naming the pointer and the winner's version; the store
  names the winner's version; the winner's log line is there and the loser's is not (a refused promotion is not
  logged as done); the loser's mirror holds the store's pointers and log again; no other byte on the store moves;
* machines appending to the same log at the same instant all keep their lines (conditional append, retried);
* the conditional PUT itself refuses a stale ETag, an existing key, and a key removed since it was read;
* a pointer pulled from the store passes the caller's ``verify_pointer_target`` first: a refused or damaged one
  never replaces the mirror's, and the next pull tries again.
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
import uuid
from pathlib import Path

import pytest
from serverkit import moto_s3

from pipeline.core import objectstore
from pipeline.core.conditional import put_if, read_object
from pipeline.core.errors import EXIT_TEMPORARY, IntegrityError, NotFoundError
from pipeline.core.objectstore import PublishConflict, pull, push

ROUNDS = 10


@pytest.fixture
def bucket(monkeypatch):
    """A bucket on a real S3-compatible server (moto) on loopback; AWS_* point s3fs at it."""
    import s3fs

    quiet = logging.getLogger("werkzeug")       # one log record per request: thousands in the races below
    level, quiet.level = quiet.level, logging.WARNING
    with moto_s3(monkeypatch):
        name = f"reviewflow-cond-{uuid.uuid4().hex[:12]}"     # moto keeps buckets for the whole process
        s3fs.S3FileSystem().mkdir(name)
        try:
            yield name
        finally:
            quiet.setLevel(level)


def _fs():
    import s3fs

    return s3fs.S3FileSystem(skip_instance_cache=True, use_listings_cache=False)


def store_tree(uri: str) -> dict[str, bytes]:
    fs, root = _fs(), uri.removeprefix("s3://")
    return {path[len(root) + 1:]: fs.cat_file(path) for path in fs.find(root)}


def pointer(version: str, dataset: str = "d") -> bytes:
    return json.dumps({"version": version, "dataset": dataset}, sort_keys=True).encode() + b"\n"


def log_line(by: str, version: str) -> bytes:
    return json.dumps({"by": by, "version": version, "promoted": True}, sort_keys=True).encode() + b"\n"


SEED_LOG = log_line("seed", "v0001-seed")


def seed(uri: str, tmp: Path, pointers: dict[str, bytes]) -> dict[str, bytes]:
    """Publish a warehouse holding one model version, ``pointers`` and a promotion log; -> the store's bytes."""
    files = {"models/v0001-seed/config.json": b'{"dataset": "d"}', "models/v0001-seed/model.safetensors": b"w",
             "lake/reviews/dataset=d/part-1.parquet": b"lake", "models/promotions.jsonl": SEED_LOG,
             "models/aliases.jsonl": b'{"alias": "challenger"}\n', **pointers}
    for rel, data in files.items():
        (tmp / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp / rel).write_bytes(data)
    push(tmp, uri)
    return store_tree(uri)


def held(mirror: Path, rels: list[str]) -> dict[str, bytes]:
    return {rel: (mirror / rel).read_bytes() for rel in rels if (mirror / rel).exists()}


def race(*jobs):
    """Run ``jobs`` in threads released together by a barrier; -> each one's result or exception."""
    barrier, results = threading.Barrier(len(jobs)), [None] * len(jobs)

    def run(i, job):
        barrier.wait()
        try:
            results[i] = job()
        except BaseException as exc:  # noqa: BLE001 - the test inspects it
            results[i] = exc

    threads = [threading.Thread(target=run, args=(i, job)) for i, job in enumerate(jobs)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not any(t.is_alive() for t in threads), "a push hung"
    return results


# family: (pointers on the store before, {machine: pointers it moves}, log the promotion appends to)
V1 = "v0001-seed"
FAMILIES = {
    "same dataset champion": ({"models/champion": pointer(V1), "models/champions/d.json": pointer(V1)},
                              {"a": ["models/champions/d.json", "models/champion"],
                               "b": ["models/champions/d.json", "models/champion"]}, "promotions.jsonl"),
    "two datasets, one serving champion": (
        {"models/champion": pointer(V1), "models/champions/d.json": pointer(V1),
         "models/champions/e.json": pointer(V1, "e")},
        {"a": ["models/champions/d.json", "models/champion"], "b": ["models/champions/e.json", "models/champion"]},
        "promotions.jsonl"),
    "first champion of a fresh warehouse": ({}, {"a": ["models/champions/d.json", "models/champion"],
                                                 "b": ["models/champions/d.json", "models/champion"]},
                                            "promotions.jsonl"),
    "alias": ({"models/aliases/challenger.json": pointer(V1)},
              {"a": ["models/aliases/challenger.json"], "b": ["models/aliases/challenger.json"]}, "aliases.jsonl"),
}


def _move(mirror: Path, who: str, rels: list[str], log: str) -> str:
    """What a promotion does to a mirror: point ``rels`` at this machine's version, append a log line."""
    version = f"v0002-{who}"
    for rel in rels:
        (mirror / rel).parent.mkdir(parents=True, exist_ok=True)
        (mirror / rel).write_bytes(pointer(version, Path(rel).stem if "champions/" in rel else "d"))
    with open(mirror / "models" / log, "ab") as fh:
        fh.write(log_line(who, version))
    return version


@pytest.mark.slow
@pytest.mark.parametrize("family", FAMILIES)
def test_two_machines_moving_a_pointer_at_once_exactly_one_wins_every_time(bucket, tmp_path, family):
    before_pointers, moves, log = FAMILIES[family]
    for n in range(ROUNDS):
        uri, root = f"s3://{bucket}/round{n}/wh", tmp_path / f"round{n}"
        before = seed(uri, root / "seed", before_pointers)
        mirrors = {who: root / who for who in moves}
        for mirror in mirrors.values():
            pull(uri, mirror)
        versions = {who: _move(mirrors[who], who, rels, log) for who, rels in moves.items()}
        outcome = dict(zip(moves, race(*(lambda m=m, uri=uri: push(m, uri) for m in mirrors.values()))))

        refused = {who: r for who, r in outcome.items() if isinstance(r, BaseException)}
        assert len(refused) == 1, f"round {n}: {outcome}"
        (loser, error), = refused.items()
        (winner,) = set(moves) - {loser}
        assert isinstance(error, PublishConflict) and error.exit_code == EXIT_TEMPORARY, repr(error)
        text = str(error)
        assert "moved by another machine" in text and f"now names {versions[winner]}" in text, text
        assert "pull and retry" in text and uri in text and "\n" not in text

        after = store_tree(uri)
        expected = dict(before)
        for rel in moves[winner]:
            expected[rel] = (mirrors[winner] / rel).read_bytes()
            assert json.loads(after[rel])["version"] == versions[winner]
        expected[f"models/{log}"] = before.get(f"models/{log}", b"") + log_line(winner, versions[winner])
        assert after == expected, f"round {n}: the loser's moves or log line reached the store"
        touched = sorted(set(moves[loser] + moves[winner]) | {f"models/{log}"})
        on_store = {rel: after[rel] for rel in touched}
        assert held(mirrors[winner], touched) == on_store
        assert versions[loser].encode() not in b"".join(held(mirrors[loser], touched).values()), \
            "the loser's mirror still claims its refused move"
        assert push(mirrors[loser], uri).transferred == []  # nothing refused is left pending in the loser's mirror
        pull(uri, mirrors[loser])
        assert held(mirrors[loser], touched) == on_store
        assert store_tree(uri) == after


@pytest.mark.slow
def test_machines_appending_to_a_log_at_once_all_keep_their_lines(bucket, tmp_path):
    for n in range(ROUNDS):
        uri, root = f"s3://{bucket}/round{n}/wh", tmp_path / f"round{n}"
        seed(uri, root / "seed", {})
        mirrors = [root / f"m{i}" for i in range(4)]
        mine = {}
        for i, mirror in enumerate(mirrors):
            pull(uri, mirror)
            mine[mirror] = [log_line(f"m{i}", f"v{k}") for k in range(3)]
            with open(mirror / "models/promotions.jsonl", "ab") as fh:
                fh.write(b"".join(mine[mirror]))
        outcome = race(*(lambda m=m, uri=uri: push(m, uri) for m in mirrors))
        assert not [r for r in outcome if isinstance(r, BaseException)], outcome

        lines = store_tree(uri)["models/promotions.jsonl"].splitlines(keepends=True)
        assert lines[0] == SEED_LOG and len(lines) == 1 + 4 * 3
        assert sorted(lines[1:]) == sorted(line for ls in mine.values() for line in ls)
        for mirror in mirrors:                 # each mirror keeps its lines, and holds at least what it sent
            assert set(mine[mirror]) <= set((mirror / "models/promotions.jsonl").read_bytes().splitlines(True))


@pytest.mark.parametrize("case", ["create over an existing key", "replace with a stale etag",
                                  "replace a key removed since it was read", "create a new key",
                                  "replace with the current etag"])
def test_the_conditional_put_refuses_whatever_is_not_what_was_read(bucket, case):
    fs, path = _fs(), f"{bucket}/cond/{uuid.uuid4().hex}"
    old = fs.pipe_file(path, b"old")["ETag"].strip('"')
    fs.pipe_file(path, b"moved by someone else")
    now = read_object(fs, path)
    assert now == (b"moved by someone else", hashlib.md5(b"moved by someone else").hexdigest())
    if case == "create over an existing key":
        assert put_if(fs, path, b"mine", None) is None
    elif case == "replace with a stale etag":
        assert put_if(fs, path, b"mine", old) is None
    elif case == "replace a key removed since it was read":
        fs.rm(path)
        assert put_if(fs, path, b"mine", now[1]) is None and read_object(fs, path) is None
        return
    elif case == "create a new key":
        fresh = f"{path}-new"
        assert put_if(fs, fresh, b"mine", None) == hashlib.md5(b"mine").hexdigest()
        assert read_object(fs, fresh) == (b"mine", hashlib.md5(b"mine").hexdigest())
        return
    else:
        assert put_if(fs, path, b"mine", now[1]) == hashlib.md5(b"mine").hexdigest()
        assert fs.cat_file(path) == b"mine"
        return
    assert fs.cat_file(path) == b"moved by someone else"      # refused: the store is untouched


def test_a_refused_push_that_created_a_pointer_says_it_stays(bucket, tmp_path):
    uri = f"s3://{bucket}/wh"
    before = seed(uri, tmp_path / "seed", {"models/champion": pointer(V1)})
    a, b = tmp_path / "a", tmp_path / "b"
    pull(uri, a)
    pull(uri, b)
    _move(a, "a", ["models/champion"], "promotions.jsonl")
    push(a, uri)
    _move(b, "b", ["models/champions/e.json", "models/champion"], "promotions.jsonl")
    with pytest.raises(PublishConflict, match="now names v0002-a.*models/champions/e.json could not be put back"):
        push(b, uri)
    after = store_tree(uri)            # nothing is deleted on the store: the new dataset pointer stays, and says so
    assert json.loads(after["models/champions/e.json"])["version"] == "v0002-b"
    assert after["models/promotions.jsonl"] == before["models/promotions.jsonl"] + log_line("a", "v0002-a")
    assert (b / "models/champion").read_bytes() == after["models/champion"]


class Verifier:
    """The registry's hook, as the registry layer would pass it: records what it was asked, refuses some."""

    def __init__(self, refuse: set[str] = frozenset()):
        self.asked, self.refuse = [], set(refuse)

    def __call__(self, version: str) -> None:
        self.asked.append(version)
        if version in self.refuse:
            raise NotFoundError(f"model version {version!r} named by a pointer is not in the registry")


def test_every_pointer_pulled_passes_the_callers_verification_first(bucket, tmp_path):
    uri = f"s3://{bucket}/wh"
    seed(uri, tmp_path / "seed", {"models/champion": pointer(V1), "models/champions/d.json": pointer(V1),
                                  "models/aliases/challenger.json": pointer("v0009-alias"),
                                  "models/aliases/gone.json": b'{"alias": "gone", "version": null}'})
    hook = Verifier()
    pull(uri, tmp_path / "m", verify_pointer_target=hook)
    assert sorted(hook.asked) == sorted([V1, V1, "v0009-alias"])      # not the removed alias's tombstone
    pull(uri, tmp_path / "m", verify_pointer_target=hook)
    assert len(hook.asked) == 3                                       # an unchanged pointer is not taken again


@pytest.mark.parametrize("stored", [pointer("v0404-missing"), b"not json", b'{"no": "version"}',
                                    b'{"version": 5}', b"", b"[]"], ids=repr)
def test_a_pointer_that_fails_verification_never_replaces_the_mirrors(bucket, tmp_path, stored):
    uri = f"s3://{bucket}/wh"
    seed(uri, tmp_path / "seed", {"models/champion": pointer(V1)})
    mirror = tmp_path / "m"
    pull(uri, mirror, verify_pointer_target=Verifier())
    state_before = (mirror / objectstore.STATE_FILE).read_bytes()
    _fs().pipe_file(f"{uri[5:]}/models/champion", stored)             # another machine (or damage) moved it
    with pytest.raises((NotFoundError, IntegrityError), match="v0404-missing|models/champion is damaged"):
        pull(uri, mirror, verify_pointer_target=Verifier(refuse={"v0404-missing"}))
    assert (mirror / "models/champion").read_bytes() == pointer(V1)
    assert (mirror / objectstore.STATE_FILE).read_bytes() == state_before    # the next pull tries again
    _fs().pipe_file(f"{uri[5:]}/models/champion", pointer("v0003-good"))
    pull(uri, mirror, verify_pointer_target=Verifier())
    assert (mirror / "models/champion").read_bytes() == pointer("v0003-good")


def test_a_refused_push_leaves_out_a_winner_pointer_that_fails_verification(bucket, tmp_path):
    uri = f"s3://{bucket}/wh"
    seed(uri, tmp_path / "seed", {"models/champion": pointer(V1)})
    a, b = tmp_path / "a", tmp_path / "b"
    pull(uri, a)
    pull(uri, b)
    _move(a, "a", ["models/champion"], "promotions.jsonl")
    push(a, uri)
    _move(b, "b", ["models/champion"], "promotions.jsonl")
    with pytest.raises(PublishConflict, match="failed verification"):
        push(b, uri, verify_pointer_target=Verifier(refuse={"v0002-a"}))
    assert not (b / "models/champion").exists()             # neither b's refused move nor an unverified one
    pull(uri, b, verify_pointer_target=Verifier())
    assert (b / "models/champion").read_bytes() == (a / "models/champion").read_bytes()
