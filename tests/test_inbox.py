"""The inbox's file life cycle (pipeline/ops/inbox.py): claim once, never lose, never redo."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pipeline.ops import inbox

TESTS = Path(__file__).parent
FRESH_FOR = 600.0     # min_age_s of these tests: a file younger than this is "still being copied"


def _drop(wh, name, text="review_id,text\n1,great\n", age_s=2 * FRESH_FOR):
    """Drop ``name`` with its mtime set ``age_s`` in the past (explicitly: no test waits for a clock)."""
    p = wh.inbox / name
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(text)
    old = time.time() - age_s
    os.utime(p, (old, old))
    return p


def test_pending_ignores_hidden_unknown_and_fresh_files(warehouse):
    _drop(warehouse, "a.csv")
    _drop(warehouse, "b.parquet", age_s=3 * FRESH_FOR)
    _drop(warehouse, ".c.csv")                   # being written
    _drop(warehouse, "notes.txt")                # unknown suffix
    _drop(warehouse, "fresh.jsonl", age_s=0)     # still being copied
    names = [p.name for p in inbox.pending(warehouse, min_age_s=FRESH_FOR)]
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


RACER = """
import os, sys, time
from pathlib import Path
from pipeline.core.config import Warehouse
from pipeline.ops import inbox
wh, go = Warehouse(Path(sys.argv[1])), Path(sys.argv[2])
Path(f"{go}.ready-{os.getpid()}").touch()
while not go.exists():          # every racer is loaded: start together
    time.sleep(0.001)
for name in sys.argv[3:]:
    c = inbox.claim(wh, wh.inbox / name)
    print(name, c.sha256 if c else "-", flush=True)
"""


@pytest.mark.subprocess
def test_racing_claimers_in_separate_processes_each_file_claimed_once(warehouse, tmp_path):
    """Four real processes claim the same 25 files at the same moment: every file has exactly one winner,
    the losers get None (no exception), and every file sits in processing/ unchanged."""
    names = [f"r{i:02d}.csv" for i in range(25)]
    for i, name in enumerate(names):
        _drop(warehouse, name, f"review_id,text\n{i},review {i}\n")
    go = tmp_path / "go"
    env = dict(os.environ, PYTHONPATH=f"{TESTS.parent}{os.pathsep}{TESTS}")
    racers = [subprocess.Popen([sys.executable, "-c", RACER, str(warehouse.root), str(go), *order],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
              for order in (names, names[::-1], names, names[::-1])]
    deadline = time.monotonic() + 120
    while len(list(tmp_path.glob("go.ready-*"))) < len(racers) and time.monotonic() < deadline:
        assert all(r.poll() is None for r in racers), [r.communicate() for r in racers]
        time.sleep(0.01)
    go.touch()
    outs = [r.communicate(timeout=120) for r in racers]
    assert all(r.returncode == 0 for r in racers), [err for _, err in outs]
    winners: dict[str, list[str]] = {name: [] for name in names}
    for out, _ in outs:
        for line in out.splitlines():
            name, sha = line.split()
            if sha != "-":
                winners[name].append(sha)
    assert all(len(w) == 1 for w in winners.values()), winners
    processing = warehouse.inbox / "processing"
    assert sorted(p.name for p in processing.iterdir()) == names
    for i, name in enumerate(names):
        assert (processing / name).read_text() == f"review_id,text\n{i},review {i}\n"
    assert inbox.pending(warehouse, min_age_s=0) == []
