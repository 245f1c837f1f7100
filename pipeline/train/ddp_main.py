"""Multi-process training: the program ``torchrun`` starts on every rank, and :func:`launch`, which starts
``torchrun`` from the job or the Prefect task and reads back what the ranks did.

    python -m torch.distributed.run --standalone --nproc-per-node 2 -m pipeline.train.ddp_main --job '{...}'

Each rank joins the process group (gloo on CPU, nccl with one GPU per rank) and runs the one training loop
(:func:`pipeline.train.loop.train` with a ``DistContext``). Rank 0 alone writes the run directory:
checkpoints, best weights and ``result.json``, the same files a single-process run leaves, so the caller
registers the run exactly as it registers any other (once, from the launching process, which holds
the run directory's lock throughout). The ranks report to the launcher through their output:
an epoch's record is one line ``EPOCH_MARK <json>``; everything else is passed on as log lines. A rank
that fails on bad input writes its error (class and message) to the error folder the launcher gave it,
and :func:`launch` raises the same ``ReviewflowError``; any other failure raises
:class:`DistributedTrainingError` with the end of the ranks' output.

torchrun starts each rank in a session of its own, so killing torchrun (or the launcher, ``kill -9``) does
not kill the ranks: a rank ends itself once either is gone (:func:`watch_parents`), so that no orphan
keeps writing into a run directory that the next run resumes from. The launcher's liveness is its owner
lock (:mod:`pipeline.core.liveness`) in the error folder it hands the ranks: held while it runs, freed by
the kernel however it dies; never its PID (reused once it is gone).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import deque
from dataclasses import asdict
from pathlib import Path
from typing import Callable

from pipeline.core import errors, liveness
from pipeline.core.storage import write_json_atomic
from pipeline.train.config import TrainConfig, TrainResult
from pipeline.train.distributed import check_nproc, join_process_group, leave_process_group
from pipeline.train.loop import epoch_line, train
from pipeline.model.network import ModelConfig

EPOCH_MARK = "@reviewflow-epoch "
ENTRY = "pipeline.train.ddp_main"
TAIL_LINES = 40          # of the ranks' output, in the error of a failed run
WATCH_SECONDS = 0.5      # how often a rank checks that torchrun and the launcher are still there
STOP_SECONDS = 10        # torchrun's time to stop its ranks on SIGTERM, before SIGKILL
EXIT_ORPHANED = 70


class DistributedTrainingError(RuntimeError):
    """The ranks failed for a reason that is not a ``ReviewflowError`` (a crash, a killed process)."""


def torchrun_command(nproc: int, job: dict, error_dir: str | Path) -> list[str]:
    """The ``torchrun`` command line (as ``python -m torch.distributed.run``, so it is this interpreter's)."""
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(nproc),
            "-m", ENTRY, "--job", json.dumps(job), "--errors", str(error_dir)]


def rank_environment(nproc: int, device: str) -> dict:
    """The ranks' environment: on CPU, the cores shared out between them (OMP_NUM_THREADS = cores // nproc,
    at least 1), else every rank would start a thread per core and they would fight over the cores."""
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    if not device.startswith("cuda") and not (device == "auto" and _cuda()):
        env["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // nproc))
    return env


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def launch(prep_dir: str | Path, cfg: TrainConfig, out_dir: str | Path, *, nproc: int, device: str = "auto",
           model: ModelConfig | dict | None = None, vectors: str | Path | None = None,
           on_epoch: Callable[[dict], None] | None = None, log: Callable[[str], None] = print) -> TrainResult:
    """Train on ``nproc`` processes through ``torchrun`` and return the result rank 0 wrote to ``out_dir``.

    The caller holds the run directory (:func:`pipeline.train.rundir.run_lock`) and has built the word
    vectors already (``vectors``: once, not once per rank). ``on_epoch(record)`` gets each epoch's record
    (without it the epoch's line goes to ``log``); ``log(line)`` every other line of the ranks' output. The
    process group is killed if the caller is interrupted (a task timeout), so no rank outlives it."""
    check_nproc(nproc, cfg.optimizer, device)
    model = model.to_dict() if isinstance(model, ModelConfig) else model
    job = {"prep_dir": str(prep_dir), "out_dir": str(out_dir), "device": device, "train": asdict(cfg),
           "model": model, "vectors": None if vectors is None else str(vectors)}
    Path(out_dir).mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="reviewflow-ddp-") as error_dir, liveness.holding(error_dir) as tag:
        job["launcher"] = {"owner": tag, "dir": error_dir}
        proc = subprocess.Popen(torchrun_command(nproc, job, error_dir), stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True, bufsize=1, start_new_session=True,
                                env=rank_environment(nproc, device))
        tail = _follow(proc, on_epoch, log)
        if proc.returncode != 0:
            _raise_failure(proc.returncode, Path(error_dir), tail)
    return TrainResult.load(out_dir)


def _follow(proc: subprocess.Popen, on_epoch: Callable[[dict], None] | None,
            log: Callable[[str], None]) -> deque:
    """Pass the ranks' output on, line by line, until they exit; the last lines, for an error message."""
    tail: deque = deque(maxlen=TAIL_LINES)
    try:
        for line in proc.stdout:
            line = line.rstrip("\n")
            if line.startswith(EPOCH_MARK):
                record = json.loads(line[len(EPOCH_MARK):])
                if on_epoch is not None:
                    on_epoch(record)
                else:
                    log(epoch_line(record))
                continue
            tail.append(line)
            log(line)
        proc.wait()
    except BaseException:
        _kill_group(proc)
        raise
    return tail


def _kill_group(proc: subprocess.Popen) -> None:
    """Stop torchrun (SIGTERM: it stops its ranks), or kill it after ``STOP_SECONDS``; its ranks, in sessions
    of their own, then end themselves (:func:`watch_parents`)."""
    for sig, wait in ((signal.SIGTERM, STOP_SECONDS), (signal.SIGKILL, None)):
        try:
            os.killpg(proc.pid, sig)
            proc.wait(timeout=wait)
            return
        except ProcessLookupError:
            proc.wait()
            return
        except subprocess.TimeoutExpired:
            continue


def _raise_failure(code: int, error_dir: Path, tail: deque) -> None:
    """The first rank's ``ReviewflowError`` as that same class, else a ``DistributedTrainingError``."""
    for path in sorted(error_dir.glob("rank*.json")):
        info = json.loads(path.read_text())
        cls = getattr(errors, info.get("type", ""), None)
        if isinstance(cls, type) and issubclass(cls, errors.ReviewflowError):
            raise cls(info["message"])
    raise DistributedTrainingError(f"multi-process training failed (torchrun exit code {code}); last output:\n"
                                   + "\n".join(tail))


# ------------------------------------------------------------------------------- the program on each rank
def watch_parents(launcher: dict | None) -> None:
    """End this rank (exit code ``EXIT_ORPHANED``) as soon as torchrun (its parent) or the launching process
    is gone: killed with ``kill -9``, they cannot stop it, and an orphan would go on writing checkpoints.
    ``launcher``: ``{"owner": tag, "dir": folder}``, the launcher's owner lock (module docstring)."""
    parent = os.getppid()

    def launcher_gone() -> bool:
        return launcher is not None and not liveness.owner_alive(launcher["owner"], launcher["dir"])

    def watch() -> None:
        while True:
            time.sleep(WATCH_SECONDS)
            if os.getppid() != parent or launcher_gone():
                os._exit(EXIT_ORPHANED)     # nothing half-written is left: every file is published atomically

    threading.Thread(target=watch, name="reviewflow-orphan-watch", daemon=True).start()


def run_rank(job: dict, error_dir: Path) -> None:
    """Join the group, train (rank 0 writes the run directory), leave; a ``ReviewflowError`` is written to
    ``error_dir/rank<r>.json`` for the launcher before it ends this rank."""
    watch_parents(job.get("launcher"))
    ctx = join_process_group(job["device"])
    try:
        writer = ctx.writer

        def report(record: dict) -> None:
            print(EPOCH_MARK + json.dumps(record), flush=True)

        if writer:
            print(f"torchrun: {ctx.world} processes ({ctx.backend}, {ctx.device.type}), rank 0 writes "
                  f"{job['out_dir']}", flush=True)
        train(job["prep_dir"], TrainConfig.from_dict(job["train"]), job["out_dir"], progress=writer,
              model=job["model"], on_epoch=report if writer else None, lock=False, vectors=job["vectors"],
              dist=ctx)
    except errors.ReviewflowError as exc:
        write_json_atomic(error_dir / f"rank{ctx.rank}.json", {"type": type(exc).__name__, "message": str(exc)})
        raise
    finally:
        leave_process_group()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog=f"python -m {ENTRY}",
                                     description="one rank of `reviewflow train --nproc N` (started by torchrun)")
    parser.add_argument("--job", required=True, help="JSON: prep_dir, out_dir, device, train, model, vectors")
    parser.add_argument("--errors", required=True, help="folder for a failing rank's error (read by launch)")
    args = parser.parse_args(argv)
    try:
        run_rank(json.loads(args.job), Path(args.errors))
    except errors.ReviewflowError as exc:
        print(f"rank {os.environ.get('RANK', '?')}: {type(exc).__name__}: {exc}", file=sys.stderr, flush=True)
        return exc.exit_code
    return 0


def end_rank(code: int) -> None:
    """End this rank now, with ``code``, once its output is flushed: ``os._exit``, not interpreter shutdown. Its
    work is on disk by then (rank 0 wrote the run directory atomically; the others write nothing), and under load
    a rank that left the group was seen to abort (SIGABRT, "terminate called without an active exception") in the
    C++ teardown that a normal exit runs (the process group's threads), failing a run that had succeeded."""
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


if __name__ == "__main__":
    end_rank(main())
