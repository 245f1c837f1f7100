"""Issue 18, item 7: whose temps may be swept is told by an owner lock (pipeline.core.liveness), never by a PID
or /proc. Real processes, real flock, real kill -9: a live owner's temps are kept, a killed one's removed
(with its lock files), a reused PID with another nonce is not the owner, another host's temps are never
touched, a forked child neither inherits the parent's tag nor keeps its lock alive, and owners and sweepers
racing on one directory lose nothing."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from pipeline.core import liveness
from pipeline.core.storage import atomic_path, owner_tag, sweep_dead, write_json_atomic

ROOT = Path(__file__).resolve().parents[1]

# A child that makes temps in two directories and keeps them until its stdin closes (or it is killed).
OWNER = """
import contextlib, os, sys, tempfile
from pathlib import Path
from pipeline.core.storage import atomic_dir, atomic_path, temp_prefix
d1, d2, fork = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3] == "fork"
scratch = tempfile.mkdtemp(prefix=temp_prefix("scratch", d1), dir=d1)
with atomic_path(d1 / "a.json") as a, atomic_dir(d2 / "b") as b, atomic_path(b / "inside.bin"):
    a.write_text("{}")
    if fork and os.fork() == 0:        # a forked child: its own tag and temp, none of the parent's locks
        with atomic_path(d1 / "child.json"):
            os.write(1, f"child {os.getpid()}\\n".encode())     # one write: the parent writes to this pipe too
            sys.stdin.read()
        os._exit(0)
    os.write(1, f"ready {os.getpid()}\\n".encode())
    sys.stdin.read()
"""


def _start_owner(d1: Path, d2: Path, fork: bool = False) -> tuple[subprocess.Popen, dict[str, int]]:
    proc = subprocess.Popen([sys.executable, "-c", OWNER, str(d1), str(d2), "fork" if fork else "-"], cwd=ROOT,
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    said = {}
    while len(said) < (2 if fork else 1):
        line = proc.stdout.readline()
        assert re.fullmatch(r"(ready|child) \d+\n", line), (line, said)
        word, pid = line.split()
        said[word] = int(pid)
    return proc, said


def _kill(pid: int) -> None:
    os.kill(pid, signal.SIGKILL)


def _names(d: Path) -> list[str]:
    return sorted(p.name for p in d.iterdir())


def _sweep_elsewhere(*dirs: Path) -> list[str]:
    """sweep_dead in another process (this one's own tag would count as alive without a look at its lock)."""
    code = "import json, sys; from pipeline.core.storage import sweep_dead; print(json.dumps(sweep_dead(*sys.argv[1:])))"
    out = subprocess.run([sys.executable, "-c", code, *map(str, dirs)], cwd=ROOT, capture_output=True, text=True,
                         timeout=120, check=True)
    return json.loads(out.stdout)


@pytest.mark.subprocess
def test_a_live_owner_keeps_its_temps_in_every_directory_and_kill_9_frees_them(tmp_path):
    d1, d2 = tmp_path / "one", tmp_path / "two"
    d1.mkdir(), d2.mkdir()
    proc, said = _start_owner(d1, d2)
    try:
        temps = [p for d in (d1, d2) for p in d.iterdir() if p.name != liveness.OWNERS]
        assert len(temps) == 3 and all(f"-{said['ready']}-n" in p.name for p in temps)
        tag = re.search(liveness.TAG_PATTERN, temps[0].name).group(0)
        links = [d / liveness.OWNERS / f"{tag}.lock" for d in (d1, d2)]
        # one lock per process: the second directory's lock file is a hard link to the first one's inode
        assert os.stat(links[0]).st_ino == os.stat(links[1]).st_ino
        assert sweep_dead(d1, d2) == [] and all(p.exists() for p in temps)
        assert liveness.owner_alive(tag, d1) and liveness.owner_alive(tag, d2)
    finally:
        _kill(proc.pid)
        proc.wait(timeout=30)
    assert not liveness.owner_alive(tag, d1)
    assert sorted(sweep_dead(d1, d2)) == sorted(p.name for p in temps)
    assert _names(d1) == _names(d2) == []              # lock files and .rf-owners folders went too


@pytest.mark.subprocess
def test_an_owner_that_ends_cleanly_leaves_no_lock_behind(tmp_path):
    d1, d2 = tmp_path / "one", tmp_path / "two"
    d1.mkdir(), d2.mkdir()
    proc, _ = _start_owner(d1, d2)
    proc.stdin.close()                                 # its blocks end (the scratch folder stays: its to remove)
    assert proc.wait(timeout=30) == 0
    assert not (d1 / liveness.OWNERS).exists() and not (d2 / liveness.OWNERS).exists()
    (scratch,) = [p.name for p in d1.iterdir() if p.name.startswith(".scratch.")]
    assert _names(d1) == sorted([scratch, "a.json"]) and _names(d2) == ["b"] and _names(d2 / "b") == ["inside.bin"]   # no .rf-owners inside
    assert _sweep_elsewhere(d1) == [scratch]           # its owner has ended: a leftover


@pytest.mark.subprocess
def test_a_forked_child_has_its_own_tag_and_does_not_keep_the_parent_alive(tmp_path):
    d1, d2 = tmp_path / "one", tmp_path / "two"
    d1.mkdir(), d2.mkdir()
    proc, said = _start_owner(d1, d2, fork=True)
    child = said["child"]
    try:
        _kill(proc.pid)                                # the parent dies; its forked child lives on
        proc.wait(timeout=30)
        swept = sweep_dead(d1, d2)
        assert len(swept) == 3 and all(f"-{said['ready']}-n" in name for name in swept)
        (left,) = [p.name for p in d1.iterdir() if p.name != liveness.OWNERS]
        assert left.startswith(".child.json.") and f"-{child}-n" in left         # the child's own, kept
    finally:
        _kill(child)
    assert _wait_swept(d1) == [left]


def _wait_swept(d: Path) -> list[str]:
    """The killed child's temp is swept once the kernel has dropped its lock (it is not our child: no wait())."""
    for _ in range(500):
        swept = sweep_dead(d)
        if swept:
            return swept
        threading.Event().wait(0.02)
    return []


@pytest.mark.subprocess
def test_a_reused_pid_with_another_nonce_is_not_the_owner(tmp_path):
    me = owner_tag()
    host, pid, _ = me.removeprefix("rf-").rsplit("-", 2)
    impostor = f"rf-{host}-{pid}-n{'0' * 12}"          # this very PID, another process before us
    with liveness.holding(tmp_path) as tag:
        assert tag == me
        (tmp_path / f".x.{impostor}.1.tmp").mkdir()
        (tmp_path / liveness.OWNERS / f"{impostor}.lock").touch()     # its lock file, free
        (tmp_path / f".y.{me}.2.tmp").write_text("mine, in progress")
        assert sweep_dead(tmp_path) == [f".x.{impostor}.1.tmp"]
        assert _names(tmp_path / liveness.OWNERS) == [f"{me}.lock"]
        assert _sweep_elsewhere(tmp_path) == []        # another process sees our lock held
        (tmp_path / f".y.{me}.2.tmp").unlink()
    assert not (tmp_path / liveness.OWNERS).exists()


FOREIGN = [
    ".a.rf-otherhost-1-n0123456789ab.tmp",            # another machine: never ours to judge
    f".b.rf-{liveness.host()}x-{os.getpid()}-n0123456789ab.tmp",   # a host whose name extends ours
    ".c.rf-myhost-42-1234567.tmp",                     # an older version's tag (pid + start ticks): left alone
    ".d.no-owner.tmp",
    "plain-file",
]


def test_temps_of_another_host_or_without_a_tag_are_kept(tmp_path):
    for name in FOREIGN:
        (tmp_path / name).write_text("?")
    (tmp_path / liveness.OWNERS).mkdir()
    (tmp_path / liveness.OWNERS / "rf-otherhost-1-n0123456789ab.lock").touch()   # free, but not our host's
    assert sweep_dead(tmp_path) == []
    assert _names(tmp_path) == sorted(FOREIGN + [liveness.OWNERS])
    assert _names(tmp_path / liveness.OWNERS) == ["rf-otherhost-1-n0123456789ab.lock"]


@pytest.mark.subprocess
def test_a_removed_owners_folder_is_made_again_for_the_next_temp(tmp_path):
    with liveness.holding(tmp_path) as tag:
        shutil.rmtree(tmp_path / liveness.OWNERS)      # someone cleaned up behind our back
        with atomic_path(tmp_path / "x") as tmp:
            assert (tmp_path / liveness.OWNERS / f"{tag}.lock").exists()
            assert _sweep_elsewhere(tmp_path) == [] and tmp.exists()
            tmp.write_text("x")
    assert _names(tmp_path) == ["x"]


@pytest.mark.subprocess
def test_writers_and_a_sweeper_racing_on_one_directory_lose_nothing(tmp_path):
    """Another process sweeps (and removes the empty .rf-owners folder) in a loop while threads here keep
    making and publishing temps: no temp is taken from a live owner, no write fails."""
    stop = tmp_path / "stop"
    d = tmp_path / "d"
    d.mkdir()
    code = ("import sys, pathlib\nfrom pipeline.core.storage import sweep_dead\nn = 0\nprint('go', flush=True)\n"
            "while not pathlib.Path(sys.argv[2]).exists():\n    swept = sweep_dead(sys.argv[1])\n    n += 1\n"
            "    if swept:\n        print('swept', swept, flush=True)\n"
            "print(n)")
    sweeper = subprocess.Popen([sys.executable, "-c", code, str(d), str(stop)], cwd=ROOT, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
    assert sweeper.stdout.readline() == "go\n"
    errors: list[BaseException] = []

    def writer(k: int) -> None:
        try:
            for i in range(150):
                write_json_atomic(d / f"w{k}-{i}.json", {"k": k, "i": i})
        except BaseException as exc:           # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=writer, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    stop.touch()
    out, err = sweeper.communicate(timeout=60)
    assert sweeper.returncode == 0, err
    assert not errors and out.split() and int(out) > 0, (errors, out)
    assert _names(d) == sorted(f"w{k}-{i}.json" for k in range(4) for i in range(150))


def test_no_liveness_check_reads_proc():
    """Liveness is the owner lock everywhere: nothing in the library reads /proc (the one reading left is a
    memory figure, VmHWM, in partitioned scoring)."""
    hits = [f"{p.relative_to(ROOT)}:{n}" for p in sorted((ROOT / "pipeline").rglob("*.py"))
            for n, line in enumerate(p.read_text().splitlines(), 1) if re.search(r"[\"'/]proc/", line)]
    assert all(h.startswith("pipeline/score/partitioned.py:") for h in hits), hits
    assert not [p for p in (ROOT / "pipeline").rglob("*.py") if "os.kill(" in p.read_text()]


@pytest.mark.subprocess
def test_a_training_rank_ends_once_its_launcher_is_killed(tmp_path):
    """pipeline.train.ddp_main.watch_parents: the launcher's liveness is its owner lock, not its PID."""
    launcher = subprocess.Popen([sys.executable, "-c", "import sys\nfrom pipeline.core import liveness\n"
                                 "print(liveness.register(sys.argv[1]), flush=True)\nsys.stdin.read()", str(tmp_path)],
                                cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    tag = launcher.stdout.readline().strip()
    rank_code = ("import json, sys, time\nfrom pipeline.train.ddp_main import watch_parents\n"
                 "watch_parents(json.loads(sys.argv[1]))\nprint('watching', flush=True)\ntime.sleep(120)")
    rank = subprocess.Popen([sys.executable, "-c", rank_code, json.dumps({"owner": tag, "dir": str(tmp_path)})],
                            cwd=ROOT, stdout=subprocess.PIPE, text=True)
    try:
        assert rank.stdout.readline() == "watching\n"
        with pytest.raises(subprocess.TimeoutExpired):
            rank.wait(timeout=1.5)                     # the launcher lives: the rank goes on
        _kill(launcher.pid)
        launcher.wait(timeout=30)
        from pipeline.train.ddp_main import EXIT_ORPHANED

        assert rank.wait(timeout=30) == EXIT_ORPHANED
    finally:
        for p in (rank, launcher):
            if p.poll() is None:
                p.kill()
                p.wait()
