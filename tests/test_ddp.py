"""Multi-process training (issue 12 part 4): the distributed sampler, and real torchrun runs of 2 gloo
processes on the CPU that register a model by the single-process rules and resume after a kill."""

from __future__ import annotations

import contextlib
import io
import logging
import os
import signal
import subprocess
import time
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from synthetic import make_reviews, write_lake_dataset
from train_helpers import TINY_OVERRIDES
from typer.testing import CliRunner

from flows.cli import app
from pipeline.core import liveness
from pipeline.core.config import Warehouse
from pipeline.core.errors import InputError
from pipeline.core.storage import read_json
from pipeline.prepare.config import PrepareConfig
from pipeline.prepare.job import prepare
from pipeline import registry
from pipeline.train import job
from pipeline.train.config import CHECKPOINT, RESULT
from pipeline.train.ddp_main import launch, rank_environment, torchrun_command
from pipeline.train.loader import batch_order, iter_batches, load_split, rank_batch_order, steps_per_rank
from pipeline.serve.predictor import load_predictor
from pipeline.train.presets import resolve_preset

# 180 training rows in batches of 8: 23 batches, 12 steps per rank (one batch repeated to pad); dropout on,
# so a resume is bit-exact only if every rank draws its masks again as it would have
DDP = TINY_OVERRIDES | dict(epochs=8, batch_size=8, patience=None, select="val_loss", dropout=0.2, threads=1)
LBFGS = dict(encoder="none", ngram_pool="binary", optimizer="lbfgs")


# ------------------------------------------------------------------------------------------ sampler
def test_each_rank_takes_an_equal_disjoint_share_of_the_same_bucketed_batches():
    lengths = np.random.default_rng(1).integers(1, 400, 1000)
    whole = batch_order(lengths, 32, shuffle=True, seed=7, bucket=True, window_batches=50)   # 32 batches
    shares = [rank_batch_order(lengths, 32, r, 4, shuffle=True, seed=7, bucket=True) for r in range(4)]
    assert [len(s) for s in shares] == [8] * 4 == [steps_per_rank(1000, 32, 4)] * 4
    rows = np.concatenate([b for s in shares for b in s])
    assert len(rows) == len(set(rows.tolist())) == 1000              # disjoint, and every row once
    # bucketing kept: every rank's batch is one of the single-process batches, whole and in its order
    as_keys = {tuple(b) for b in whole}
    assert all(tuple(b) in as_keys for s in shares for b in s)
    assert [tuple(b) for s in zip(*shares) for b in s] == [tuple(b) for b in whole]
    spread = [int(np.ptp(lengths[b])) for s in shares for b in s]
    assert np.median(spread) < 40                                     # similar lengths within a batch


def test_the_share_is_deterministic_by_seed_and_padded_so_no_rank_starves():
    lengths = np.random.default_rng(2).integers(1, 100, 180)          # 23 batches of 8 over 2 ranks
    a = rank_batch_order(lengths, 8, 1, 2, shuffle=True, seed=3)
    assert all(np.array_equal(x, y) for x, y in zip(a, rank_batch_order(lengths, 8, 1, 2, shuffle=True, seed=3)))
    assert not all(np.array_equal(x, y) for x, y in zip(a, rank_batch_order(lengths, 8, 1, 2, shuffle=True,
                                                                              seed=4)))
    r0, r1 = (rank_batch_order(lengths, 8, r, 2, shuffle=True, seed=3) for r in (0, 1))
    assert len(r0) == len(r1) == 12 == steps_per_rank(180, 8, 2)
    whole = batch_order(lengths, 8, shuffle=True, seed=3)
    assert np.array_equal(r1[-1], whole[0])                            # the one padding batch repeats the first
    assert len(np.unique(np.concatenate(r0 + r1[:-1]))) == 180
    assert rank_batch_order(lengths[:0], 8, 0, 2) == []
    with pytest.raises(ValueError, match="rank 2"):
        rank_batch_order(lengths, 8, 2, 2)


def test_iter_batches_yields_the_ranks_share(tmp_path):
    wh = Warehouse(tmp_path / "wh").ensure()
    write_lake_dataset(wh, "syn", make_reviews(240, seed=1, max_words=30))
    data = load_split(prepare(wh, "syn", PrepareConfig(**resolve_preset("default", TINY_OVERRIDES).prepare))
                      .prep_dir, "train")
    got = [b.index for b in iter_batches(data, 16, shuffle=True, seed=5, rank=1, world=2)]
    want = rank_batch_order(data.lengths, 16, 1, 2, shuffle=True, seed=5)
    assert len(got) == len(want) and all(np.array_equal(g, w) for g, w in zip(got, want))


# ------------------------------------------------------------------------------------------ refusals
def test_nproc_above_one_is_refused_with_lbfgs_and_bad_counts_before_any_data_is_read(warehouse):
    with pytest.raises(InputError, match="nproc.*lbfgs"):
        job.plan("default", LBFGS, "cpu", nproc=2)
    job.plan("default", LBFGS, "cpu", nproc=1)                         # one process: L-BFGS as today
    for bad in (0, -1, 1.5, True):
        with pytest.raises(InputError, match="nproc"):
            job.plan("default", {}, "cpu", nproc=bad)
    r = CliRunner().invoke(app, ["train", "--dataset", "nothing", "--no-prefect", "--warehouse", str(warehouse.root),
                                 "--nproc", "2", "--encoder", "none", "--set", "ngram_pool=binary",
                                 "--set", "optimizer=lbfgs"])
    said = r.output + str(r.exception)
    assert r.exit_code != 0 and "invalid nproc (--nproc): must be 1 with optimizer 'lbfgs'" in said, said
    assert not list(warehouse.models.glob("v*")) and not list(warehouse.root.glob("lake/nothing*"))


def test_ranks_share_the_cpu_cores():
    env = rank_environment(2, "cpu")
    assert env["OMP_NUM_THREADS"] == str(max(1, (os.cpu_count() or 1) // 2))
    cmd = torchrun_command(2, {"x": 1}, "/tmp/e")
    assert cmd[1:7] == ["-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", "-m"]


# ----------------------------------------------------------------------------------- real 2-rank runs
@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """The same tiny GRU trained and registered twice from one lake: in one process, and by 2 gloo ranks."""
    out = {}
    for nproc in (1, 2):
        wh = Warehouse(tmp_path_factory.mktemp(f"nproc{nproc}") / "wh").ensure()
        write_lake_dataset(wh, "syn", make_reviews(240, seed=0, max_words=30))
        err = io.StringIO()           # the job streams the ranks' lines to stderr
        with contextlib.redirect_stderr(err):
            summary = job.train_dataset(wh, "syn", "default", DDP, device="cpu", nproc=nproc)
        out[nproc] = (wh, summary, err.getvalue().splitlines())
    return out


def _version_files(wh: Warehouse, version: str) -> dict:
    folder = wh.models / version
    return {name: read_json(folder / name) for name in ("config.json", "metrics.json", "environment.json")}


@pytest.mark.ddp
def test_two_gloo_ranks_register_one_model_by_the_single_process_rules(trained):
    wh1, one, _ = trained[1]
    wh2, two, lines = trained[2]
    assert [mv.version for mv in registry.list_versions(wh2)] == [two["version"]] and two["promoted"]
    assert two["val_accuracy"] > 0.8 and not [p for p in (wh2.tmp / "runs").iterdir() if p.is_dir()]
    assert sorted(p.name for p in (wh1.models / one["version"]).iterdir()) == sorted(
        p.name for p in (wh2.models / two["version"]).iterdir())
    a, b = _version_files(wh1, one["version"]), _version_files(wh2, two["version"])
    assert a["config.json"].keys() == b["config.json"].keys() and a["metrics.json"].keys() == b["metrics.json"].keys()
    assert a["metrics.json"]["final"].keys() == b["metrics.json"]["final"].keys()
    assert [r.keys() for r in a["metrics.json"]["history"]] == [r.keys() for r in b["metrics.json"]["history"]]
    assert all(b["config.json"][k] == a["config.json"][k] for k in ("train", "model", "prepare"))
    assert (b["environment.json"]["nproc"], b["environment.json"]["backend"]) == (2, "gloo")
    assert b["environment.json"].keys() - a["environment.json"].keys() == {"nproc", "backend"}
    # the best-validation-loss epoch is the one registered, and its metrics are those weights' own
    m = b["metrics.json"]
    hist = m["history"]
    best = min(hist, key=lambda r: r["val_loss"])
    assert len(hist) == 8 and m["final"]["best_epoch"] == best["epoch"]
    assert m["final"]["val_loss"] == pytest.approx(best["val_loss"], abs=1e-6)
    assert m["final"]["val_n"] == a["metrics.json"]["final"]["val_n"]             # rank 0 evaluated every row
    card = (wh2.models / two["version"] / "MODEL_CARD.md").read_text()
    assert [x for x in card.splitlines() if x.startswith("## ")] == [
        x for x in (wh1.models / one["version"] / "MODEL_CARD.md").read_text().splitlines() if x.startswith("## ")]
    assert f"best epoch {best['epoch']}," in card
    # each epoch's line came back from the ranks; the weights load with the predictor and score
    assert sum(x.startswith("epoch ") for x in lines) == 8, lines[-20:]
    p = load_predictor(wh2, two["version"])
    probs = p.predict_proba(["a wonderful, brilliant and moving masterpiece", "an awful, boring waste, the worst"])
    assert probs[0] > 0.5 > probs[1]


@pytest.mark.ddp
def test_two_ranks_resume_after_a_kill_and_match_the_uninterrupted_run(trained, tmp_path):
    wh, two, _ = trained[2]
    spec = resolve_preset("default", DDP)
    prep = prepare(wh, "syn", PrepareConfig(**spec.prepare))
    out = tmp_path / "run"
    (tmp_path / "errors").mkdir()
    job_spec = {"prep_dir": str(prep.prep_dir), "out_dir": str(out), "device": "cpu", "vectors": None,
                "train": asdict(spec.train), "model": spec.model.to_dict(),   # this process is the launcher
                "launcher": {"owner": liveness.register(tmp_path / "errors"), "dir": str(tmp_path / "errors")}}
    with open(tmp_path / "first.log", "wb") as log:      # a file, never a pipe nobody reads
        proc = subprocess.Popen(torchrun_command(2, job_spec, tmp_path / "errors"), stdout=log,
                                stderr=subprocess.STDOUT, start_new_session=True, env=rank_environment(2, "cpu"))
    _wait_for_epoch(out, proc, at_least=0)
    ranks = _children(proc.pid)
    assert len(ranks) == 2
    os.killpg(proc.pid, signal.SIGKILL)                  # torchrun, mid-run: its ranks have sessions of their own
    proc.wait()
    _wait_until(lambda: not any(os.path.exists(f"/proc/{pid}") for pid in ranks), 20, "the orphaned ranks to end")
    saved = torch.load(out / CHECKPOINT, weights_only=True)
    assert not (out / RESULT).exists() and saved["world_size"] == 2 and saved["epoch"] < 7
    lines, epochs = [], []
    res = launch(prep.prep_dir, spec.train, out, nproc=2, device="cpu", model=spec.model, log=lines.append,
                 on_epoch=epochs.append)
    assert f"resuming {out} at epoch {saved['epoch'] + 2}" in lines, [ln for ln in lines if "resum" in ln] or lines[-5:]
    assert [r["epoch"] for r in epochs] == list(range(saved["epoch"] + 2, 9))       # only the missing epochs
    assert res.history[:saved["epoch"] + 1] == saved["history"]
    registered = load_file(str(wh.models / two["version"] / "model.safetensors"))
    resumed = load_file(str(res.weights))
    assert all(torch.equal(registered[k], resumed[k]) for k in registered)        # bit-exact across the kill
    # a checkpoint of 2 ranks is not resumed by another count: its steps per epoch are not that count's
    (out / RESULT).unlink()
    with pytest.raises(InputError, match="2 training process"):
        job.run_training(prep.prep_dir, spec, out, device="cpu", nproc=1, progress=False)
    # the ranks' own error comes back as itself: here, the run dir holds another configuration's checkpoint
    other = replace(spec, train=replace(spec.train, lr=0.5))
    with pytest.raises(InputError, match="checkpoint of a different configuration"):
        job.run_training(prep.prep_dir, other, out, device="cpu", nproc=2, progress=False)


@pytest.mark.ddp
def test_a_time_budget_stops_every_rank_at_the_same_step_and_keeps_the_best_epoch(trained, tmp_path):
    wh, _, _ = trained[2]
    spec = resolve_preset("default", DDP | {"epochs": 50, "max_minutes": 1e-9})
    prep = prepare(wh, "syn", PrepareConfig(**spec.prepare))
    res = launch(prep.prep_dir, spec.train, tmp_path / "run", nproc=2, device="cpu", model=spec.model,
                 log=lambda line: None)
    assert res.stopped == "time_budget" and len(res.history) == 1 and res.history[0]["partial"]
    assert res.metrics["best_epoch"] == 1 and (tmp_path / "run" / "best.safetensors").exists()


def _children(pid: int) -> list[int]:
    """The processes whose parent is ``pid`` (Linux /proc)."""
    out = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            out.append(int(stat.parent.name))
    return out


def _wait_until(done, seconds: float, what: str) -> None:
    deadline = time.time() + seconds
    while not done():
        assert time.time() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def _wait_for_epoch(out, proc: subprocess.Popen, at_least: int) -> int:
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        if (out / CHECKPOINT).exists():
            try:
                epoch = torch.load(out / CHECKPOINT, weights_only=True)["epoch"]
            except Exception:  # noqa: BLE001 - being replaced right now
                epoch = -1
            if epoch >= at_least:
                return epoch
        time.sleep(0.02)
    raise AssertionError(f"no checkpoint of epoch {at_least + 1} while the ranks ran (exit {proc.poll()})")


@pytest.mark.ddp
@pytest.mark.prefect
def test_the_train_flow_launches_torchrun_inside_its_gpu_tagged_task_and_logs_the_ranks(prefect_harness, warehouse):
    import asyncio

    from prefect.client.orchestration import get_client
    from prefect.logging.handlers import APILogHandler

    from flows.train import train_flow

    # its own dataset name: the session's Prefect API is shared, and test_train_flow counts its "syn" task runs
    write_lake_dataset(warehouse, "ddp", make_reviews(240, seed=0, max_words=30))
    task_logger = logging.getLogger("prefect.task_runs")
    level = task_logger.level
    task_logger.setLevel(logging.INFO)        # the session runs Prefect at WARNING; the ranks' lines are INFO
    try:
        out = train_flow(dataset="ddp", preset="default", warehouse=str(warehouse.root), overrides=TINY_OVERRIDES,
                         device="cpu", nproc=2)
    finally:
        task_logger.setLevel(level)
    assert [mv.version for mv in registry.list_versions(warehouse)] == [out["version"]] and out["promoted"]
    assert read_json(warehouse.models / out["version"] / "environment.json")["nproc"] == 2
    APILogHandler().flush()

    async def task_runs_and_logs():
        async with get_client() as client:
            runs = [t for t in await client.read_task_runs() if t.name.startswith("train-ddp-default")]
            return runs, [log.message for log in await client.read_logs() if log.task_run_id == runs[-1].id]

    runs, logs = asyncio.run(task_runs_and_logs())
    assert "gpu" in runs[-1].tags
    assert any(m.startswith("torchrun: 2 processes (gloo, cpu)") for m in logs), logs   # a rank's own line
    assert sum(m.startswith("epoch ") and "/2: train loss" in m for m in logs) == 2, logs    # each epoch, once
