"""`reviewflow inbox status|retry`, and the watcher that starts an inbox pass only when a file lands.

Real folders and files; the CLI through Typer's runner; the watcher loop with a trigger that records what it
was asked to start (the Prefect side, ``run_deployment``, is exercised by serving, not here).
"""

from __future__ import annotations

import json
import os
import threading
import time

import pytest
from typer.testing import CliRunner

from flows.cli import app
from flows.serve import watch_inbox
from pipeline.core.errors import InputError, NotFoundError
from pipeline.ops import inbox

OLD = 3600.0


def _drop(wh, name, text="id,review\n1,a fine product\n", age_s=OLD, folder=""):
    p = wh.inbox / folder / name
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(text)
    old = time.time() - age_s
    os.utime(p, (old, old))
    return p


def _failed(wh, name="bad.csv", why="InputError: column 'text' not found"):
    """A file as ``inbox.fail`` leaves it: in failed/ with its .error.txt (and here a sidecar)."""
    c = inbox.claim(wh, _drop(wh, name))
    inbox.sidecar_of(c.path).write_text('{"text": "review"}')
    return inbox.fail(wh, inbox.Claim(c.name, c.path, c.sha256, c.size, inbox.sidecar_of(c.path)), why)


def test_listing_shows_every_folder_with_size_age_and_reason(warehouse):
    _drop(warehouse, "waiting.csv")
    done = inbox.claim(warehouse, _drop(warehouse, "done.csv", "id,review\n2,ok\n"))
    inbox.complete(warehouse, done)
    _failed(warehouse)
    rows = {f.name: f for f in inbox.listing(warehouse)}
    assert set(rows) == {"waiting.csv", "done.csv", "bad.csv"}       # no .error.txt, no sidecar, no ledger
    assert rows["waiting.csv"].folder == "waiting" and rows["waiting.csv"].age_s > OLD - 60
    assert rows["done.csv"].folder == "processed" and rows["done.csv"].size == len("id,review\n2,ok\n")
    bad = rows["bad.csv"]
    assert bad.folder == "failed" and bad.reason == "InputError: column 'text' not found" and bad.sidecar


def test_retry_moves_the_file_and_its_sidecar_back_and_keeps_the_error(warehouse):
    f = _failed(warehouse)
    back = inbox.retry(warehouse, "bad.csv")
    assert back == warehouse.inbox / "bad.csv" and back.read_text().startswith("id,review")
    assert not f.exists() and inbox.sidecar_of(back).read_text() == '{"text": "review"}'
    kept = list((warehouse.inbox / "failed" / ".retried").iterdir())
    assert len(kept) == 1 and "column 'text' not found" in kept[0].read_text()
    assert inbox.status(warehouse) == {"waiting": 1, "processing": 0, "processed": 0, "failed": 0, "ledger": 0}
    # it fails again: it gets its old name in failed/ (the old .error.txt is out of the way)
    c = inbox.claim(warehouse, back)
    assert inbox.fail(warehouse, c, "again").name == "bad.csv"


def test_retry_by_path_inside_failed(warehouse):
    f = _failed(warehouse)
    assert inbox.retry(warehouse, str(f)) == warehouse.inbox / "bad.csv"


@pytest.mark.parametrize("name", ["../waiting.csv", "bad.csv.error.txt", "bad.csv.reviewflow.json", "/etc/passwd",
                                  "processed/done.csv", ".ledger"])
def test_retry_refuses_anything_but_a_failed_review_file(warehouse, name):
    _failed(warehouse)
    _drop(warehouse, "waiting.csv")
    with pytest.raises(InputError, match="is not a file in .*failed: retry takes the name of a failed review file"):
        inbox.retry(warehouse, name)
    assert (warehouse.inbox / "failed" / "bad.csv").exists()


def test_retry_of_a_missing_file_lists_the_failed_ones(warehouse):
    _failed(warehouse)
    with pytest.raises(NotFoundError, match="no failed file 'nope.csv' .*failed files: bad.csv"):
        inbox.retry(warehouse, "nope.csv")


def test_retry_never_overwrites_a_waiting_or_processing_file(warehouse):
    f = _failed(warehouse)
    newer = _drop(warehouse, "bad.csv", "id,review\n9,the fixed file\n")
    with pytest.raises(InputError, match="already exists .* retry refused so it is not overwritten"):
        inbox.retry(warehouse, "bad.csv")
    assert newer.read_text() == "id,review\n9,the fixed file\n" and f.exists()
    inbox.claim(warehouse, newer)                                      # now being processed
    with pytest.raises(InputError, match="'bad.csv' is being processed now"):
        inbox.retry(warehouse, "bad.csv")
    assert f.exists() and not (warehouse.inbox / "bad.csv").exists()


def test_cli_status_and_retry(warehouse):
    _failed(warehouse)
    _drop(warehouse, "waiting.csv")
    w = ["--warehouse", str(warehouse.root)]
    r = CliRunner().invoke(app, ["inbox", "status", *w])
    assert r.exit_code == 0, r.output
    lines = r.output.splitlines()
    assert lines[0].endswith("1 waiting, 0 processing, 0 processed, 1 failed")
    assert lines[1].split() == ["waiting", "waiting.csv", "27", "B", "60", "min"]
    assert lines[2].split()[:2] == ["failed", "bad.csv"] and lines[2].endswith("+sidecar")
    assert lines[3].strip() == "why: InputError: column 'text' not found"
    r = CliRunner().invoke(app, ["inbox", "status", "--json", *w])
    assert [json.loads(x)["folder"] for x in r.output.splitlines()] == ["waiting", "failed"]
    r = CliRunner().invoke(app, ["inbox", "retry", "bad.csv", *w])
    assert r.exit_code == 0 and "the next inbox pass takes it" in r.output
    r = CliRunner().invoke(app, ["inbox", "retry", "bad.csv", *w])
    assert r.exit_code != 0 and isinstance(r.exception, NotFoundError)


def test_watcher_sees_only_new_complete_files(warehouse):
    new, seen = inbox.new_complete_files(warehouse, {})
    assert new == [] and seen == {}                                    # empty inbox: nothing to start
    _drop(warehouse, "copying.csv", age_s=0)                           # still being written
    _drop(warehouse, ".hidden.csv")
    _drop(warehouse, "a.csv.reviewflow.json", '{"text": "review"}')    # a sidecar alone is no work
    new, seen = inbox.new_complete_files(warehouse, seen, min_age_s=60)
    assert new == []
    a = _drop(warehouse, "a.csv")
    new, seen = inbox.new_complete_files(warehouse, seen, min_age_s=60)
    assert new == ["a.csv"] and set(seen) == {"a.csv"}
    assert inbox.new_complete_files(warehouse, seen, min_age_s=60)[0] == []     # seen: no second run
    old = time.time() - OLD / 2                                        # replaced by another version
    a.write_text("id,review\n1,changed\n")
    os.utime(a, (old, old))
    assert inbox.new_complete_files(warehouse, seen, min_age_s=60)[0] == ["a.csv"]
    c = inbox.claim(warehouse, a)                                      # processed, then failed, then retried
    new, seen = inbox.new_complete_files(warehouse, seen, min_age_s=60)
    assert new == [] and seen == {}
    inbox.fail(warehouse, c, "boom")
    back = inbox.retry(warehouse, "a.csv")
    os.utime(back, (old, old))                                         # (its mtime is its claim time)
    assert inbox.new_complete_files(warehouse, seen, min_age_s=60)[0] == ["a.csv"]


class _Looks(threading.Event):
    """The watcher's stop event as a script, not a clock: ``wait`` (called once after every look) records how
    many runs were triggered so far, runs the test's next step instead of sleeping, and ends the watch when the
    steps run out, so the test knows exactly how many looks happened whatever the host's speed."""

    def __init__(self, calls: list, steps: list):
        super().__init__()
        self.calls, self.steps, self.runs_after_look = calls, list(steps), []

    def wait(self, timeout=None) -> bool:
        self.runs_after_look.append(len(self.calls))
        if self.steps:
            self.steps.pop(0)()
        return not self.steps


def test_watch_loop_triggers_once_per_new_file_and_retries_a_failed_trigger(warehouse):
    calls: list[tuple[list[str], str]] = []
    failures = [RuntimeError("API not up yet")]

    def trigger(names, signature):
        if failures:
            raise failures.pop()
        calls.append((names, signature))

    _drop(warehouse, "a.csv")
    # look 1: the trigger fails; look 2: a.csv again; then b.csv appears; look 3: b.csv; looks 4-13: no further runs
    looks = _Looks(calls, [lambda: None, lambda: _drop(warehouse, "b.csv")] + [lambda: None] * 11)
    watch_inbox(str(warehouse.root), 0.0, looks, trigger)         # in this thread: returns when the script ends
    assert looks.runs_after_look == [0, 1] + [2] * 11 and not failures
    assert [names for names, _ in calls] == [["a.csv"], ["b.csv"]]
    assert len({sig for _, sig in calls}) == 2
