"""Issue #9, finding 8b as a class: whatever temp file or folder a killed process leaves (atomic writes, a
half-built prep or model version, prepare's scratch), the next run removes it; a live owner's temp is kept,
and a reused pid does not pass for the dead owner."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from pipeline.core.storage import owner_tag, sweep_dead
from train_helpers import TINY_PREP
from synthetic import make_reviews, write_lake_dataset

TESTS = Path(__file__).parent
ROOT = TESTS.parent


def run_and_get_killed(code: str) -> None:
    """Run ``code`` in a child Python that SIGKILLs itself where the code says ``die()``."""
    prelude = "import os, signal\ndef die():\n    os.kill(os.getpid(), signal.SIGKILL)\n"
    proc = subprocess.run([sys.executable, "-c", prelude + textwrap.dedent(code)], cwd=ROOT, timeout=300,
                          env=dict(os.environ, PYTHONPATH=f"{ROOT}:{TESTS}"), capture_output=True, text=True)
    assert proc.returncode == -9, proc.stderr


@pytest.mark.subprocess
@pytest.mark.parametrize("kind", ["atomic_path", "atomic_dir"])
def test_temps_of_a_killed_writer_are_swept_live_ones_kept(tmp_path, kind):
    target = tmp_path / "thing"
    run_and_get_killed(f"""
        from pipeline.core.storage import {kind}
        with {kind}({str(target)!r}) as tmp:
            die()
    """)
    leftovers = [p.name for p in tmp_path.iterdir() if p.name != ".rf-owners"]     # and its (free) lock
    assert len(leftovers) == 1 and leftovers[0].startswith(".thing.rf-")
    assert len(list((tmp_path / ".rf-owners").iterdir())) == 1
    mine = tmp_path / f".other.{owner_tag()}.x.tmp"          # a live writer's temp (this process)
    mine.write_text("in progress")
    plain = tmp_path / ".no-owner.tmp"                        # not ours to judge
    plain.write_text("?")
    assert sweep_dead(tmp_path) == leftovers
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([mine.name, plain.name])


def test_a_reused_pid_does_not_pass_for_the_dead_owner(tmp_path):
    """Same host and pid as this (live) process, another nonce: another process, whose lock is not held."""
    host_pid = owner_tag().rsplit("-", 1)[0]
    stale = tmp_path / f".x.{host_pid}-n{'0' * 12}.abc.tmp"
    stale.mkdir()
    assert sweep_dead(tmp_path) == [stale.name]


@pytest.mark.subprocess
def test_a_killed_prepare_leaves_nothing_after_the_next_run(warehouse):
    write_lake_dataset(warehouse, "syn", make_reviews(240, seed=1, max_words=30))
    run_and_get_killed(f"""
        from pipeline.core.config import Warehouse
        from pipeline.prepare.config import PrepareConfig
        from pipeline.prepare.job import prepare
        def progress(stage, done, total):
            if stage == "encode":
                die()
        prepare(Warehouse.from_env({str(warehouse.root)!r}), "syn", PrepareConfig(**{TINY_PREP!r}), progress=progress)
    """)
    debris = [p for d in (warehouse.tmp, warehouse.shards) for p in d.iterdir() if p.name.startswith(".")]
    assert debris, "the killed prepare should have left its scratch behind"
    from pipeline.prepare.config import PrepareConfig
    from pipeline.prepare.job import prepare

    res = prepare(warehouse, "syn", PrepareConfig(**TINY_PREP))
    assert res.counts["train"] + res.counts["val"] == 240
    assert not [p for p in debris if p.exists()]
    assert [p.name for p in warehouse.shards.iterdir()] == [res.prep_id]
