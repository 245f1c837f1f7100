"""The inbox's file life cycle (pipeline/ops/inbox.py): claim once, never lose, never redo."""

from __future__ import annotations

import os
import time

from pipeline.ops import inbox


def _drop(wh, name, text="review_id,text\n1,great\n", age_s=10.0):
    p = wh.inbox / name
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(text)
    old = time.time() - age_s
    os.utime(p, (old, old))
    return p


def test_pending_ignores_hidden_unknown_and_fresh_files(warehouse):
    _drop(warehouse, "a.csv")
    _drop(warehouse, "b.parquet", age_s=20)
    _drop(warehouse, ".c.csv")                   # being written
    _drop(warehouse, "notes.txt")                # unknown suffix
    _drop(warehouse, "fresh.jsonl", age_s=0)     # still being copied
    names = [p.name for p in inbox.pending(warehouse, min_age_s=2)]
    assert names == ["b.parquet", "a.csv"]       # oldest first
    assert "fresh.jsonl" in [p.name for p in inbox.pending(warehouse, min_age_s=0)]


def test_claim_is_exclusive_and_complete_moves_and_records(warehouse):
    p = _drop(warehouse, "a.csv")
    c = inbox.claim(warehouse, p)
    assert c is not None and c.path.parent.name == "processing" and not p.exists()
    assert inbox.claim(warehouse, p) is None     # second claimer loses, nothing raised
    assert inbox.ledger_entry(warehouse, c.sha256) is None
    done = inbox.complete(warehouse, c, {"rows_added": 1})
    assert done == warehouse.inbox / "processed" / "a.csv" and done.read_text().startswith("review_id")
    entry = inbox.ledger_entry(warehouse, c.sha256)
    assert entry["name"] == "a.csv" and entry["result"] == {"rows_added": 1}
    assert inbox.status(warehouse) == {"waiting": 0, "processing": 0, "processed": 1, "failed": 0, "ledger": 1}


def test_same_name_again_never_overwrites(warehouse):
    for text in ("review_id,text\n1,a\n", "review_id,text\n2,b\n"):
        c = inbox.claim(warehouse, _drop(warehouse, "a.csv", text))
        inbox.complete(warehouse, c)
    files = sorted(p.name for p in (warehouse.inbox / "processed").iterdir())
    assert files == ["a.1.csv", "a.csv"]
    assert len(inbox.ledger(warehouse)) == 2


def test_fail_writes_error_file_beside(warehouse):
    c = inbox.claim(warehouse, _drop(warehouse, "bad.jsonl", "{not json\n"))
    try:
        raise ValueError("line 1: not JSON")
    except ValueError as exc:
        target = inbox.fail(warehouse, c, exc)
    assert target == warehouse.inbox / "failed" / "bad.jsonl" and target.read_text() == "{not json\n"
    err = (warehouse.inbox / "failed" / "bad.jsonl.error.txt").read_text()
    assert "ValueError: line 1: not JSON" in err and c.sha256 in err and "Traceback" in err
    assert inbox.ledger_entry(warehouse, c.sha256) is None      # a failed file may be retried
    c2 = inbox.claim(warehouse, _drop(warehouse, "bad.jsonl", "{not json\n"))
    assert inbox.fail(warehouse, c2, "again").name == "bad.1.jsonl"


def test_duplicate_content_is_detected_by_hash(warehouse):
    c = inbox.claim(warehouse, _drop(warehouse, "a.csv"))
    inbox.complete(warehouse, c)
    c2 = inbox.claim(warehouse, _drop(warehouse, "copy-of-a.csv"))
    prev = inbox.ledger_entry(warehouse, c2.sha256)
    assert prev is not None and prev["name"] == "a.csv"
    inbox.complete(warehouse, c2, duplicate_of=prev)
    assert len(inbox.ledger(warehouse)) == 1                    # ledger keeps the first
    assert (warehouse.inbox / "processed" / "copy-of-a.csv").exists()


def test_recover_stale_returns_orphans_to_inbox(warehouse):
    c = inbox.claim(warehouse, _drop(warehouse, "a.csv"))
    assert inbox.recover_stale(warehouse, older_than_s=3600) == []   # just claimed: not stale
    old = time.time() - 7200
    os.utime(c.path, (old, old))
    moved = inbox.recover_stale(warehouse, older_than_s=3600)
    assert moved == [warehouse.inbox / "a.csv"] and moved[0].exists()
    assert inbox.status(warehouse)["processing"] == 0
