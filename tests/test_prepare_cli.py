"""``reviewflow prepare`` as users run it: a real CLI process (``--no-prefect``), its output, its exit codes,
and option defaults that are ``PrepareConfig``'s (written once)."""

from __future__ import annotations

import dataclasses
import inspect
import json
import os
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pytest

from pipeline.core.errors import EXIT_USER_ERROR
from pipeline.prepare.config import PrepareConfig
from pipeline.prepare.job import compute_prep_id, dataset_fingerprint
from pipeline.prepare.manifest import verify_prep
from synthetic import make_reviews, with_groups, write_lake_dataset

ROOT = Path(__file__).resolve().parents[1]
REVIEWFLOW = [sys.executable, "-c", "from flows.cli import main; main()"]

pytestmark = pytest.mark.subprocess      # every test runs the CLI in a process


def _cli(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, PREFECT_HOME=str(tmp_path / "prefect-home"))
    env.pop("REVIEWFLOW_DEBUG", None)
    return subprocess.run(REVIEWFLOW + ["prepare", *args], capture_output=True, text=True, cwd=ROOT, env=env,
                          timeout=300)


def _lake(warehouse):
    t = pa.concat_tables([make_reviews(300, 0, "train"), make_reviews(80, 1, "test", id_prefix="te")])
    write_lake_dataset(warehouse, "syn", t)
    return t


def test_prepare_cli_builds_then_reuses_the_prep(warehouse, tmp_path):
    _lake(warehouse)
    wh = str(warehouse.root)
    first = _cli(tmp_path, "--dataset", "syn", "--max-len", "12", "--min-freq", "1", "--no-prefect", "--json",
                 "--warehouse", wh)
    assert first.returncode == 0, first.stderr
    summary = json.loads(first.stdout)
    cfg = PrepareConfig(max_len=12, min_freq=1)
    assert summary["prep_id"] == compute_prep_id("syn", dataset_fingerprint(warehouse, "syn"), cfg)
    assert not summary["cached"] and summary["counts"] == {"train": 224, "val": 76, "test": 80, "unsup": 0}
    assert summary["lengths"]["kept"]["max"] <= 12 and set(summary["unk_rate"]) == {"train", "val", "test", "unsup"}
    manifest = verify_prep(summary["prep_dir"])          # a complete prep, every checksum right
    assert manifest["params"] == cfg.identity()
    again = _cli(tmp_path, "-d", "syn", "--max-len", "12", "--min-freq", "1", "--no-prefect", "-w", wh)
    assert again.returncode == 0, again.stderr
    assert f"prep {summary['prep_id']} (cache hit: nothing recomputed)" in again.stdout
    assert "test 80, train 224, unsup 0, val 76" in again.stdout and "length_hist.png" in again.stdout


def test_prepare_cli_defaults_are_the_configs(warehouse, tmp_path):
    _lake(warehouse)
    run = _cli(tmp_path, "--dataset", "syn", "--no-prefect", "--json", "--warehouse", str(warehouse.root))
    assert run.returncode == 0, run.stderr
    assert json.loads(run.stdout)["prep_id"] == compute_prep_id("syn", dataset_fingerprint(warehouse, "syn"),
                                                                PrepareConfig())
    from flows.prepare import prepare_flow

    flow_defaults = {k: p.default for k, p in inspect.signature(prepare_flow.fn).parameters.items()}
    for f in dataclasses.fields(PrepareConfig):
        assert flow_defaults[f.name] == f.default, f.name


def test_prepare_cli_refuses_bad_options_and_data_with_one_line(warehouse, tmp_path):
    t = _lake(warehouse)
    wh = str(warehouse.root)
    bad = _cli(tmp_path, "--dataset", "syn", "--truncate", "middle", "--no-prefect", "-w", wh)
    assert bad.returncode == EXIT_USER_ERROR and "truncate" in bad.stderr and "Traceback" not in bad.stderr
    one_class = t.filter(pc.equal(t["label"], 1))
    write_lake_dataset(warehouse, "pos", one_class)
    refused = _cli(tmp_path, "--dataset", "pos", "--no-prefect", "-w", wh)
    assert refused.returncode == EXIT_USER_ERROR and "class 0: 0" in refused.stderr
    assert "Traceback" not in refused.stderr and not list(warehouse.shards.iterdir())
    missing = _cli(tmp_path, "--dataset", "nope", "--no-prefect", "-w", wh)
    assert missing.returncode == EXIT_USER_ERROR and "nope" in missing.stderr


def test_prepare_cli_split_by_group(warehouse, tmp_path):
    t = make_reviews(300, 0, "train")
    write_lake_dataset(warehouse, "films", with_groups(t, [f"m{i % 40}" for i in range(t.num_rows)]))
    wh = str(warehouse.root)
    run = _cli(tmp_path, "-d", "films", "--split-by", "group", "--val-fraction", "0.2", "--min-freq", "1",
               "--no-prefect", "-w", wh)
    assert run.returncode == 0, run.stderr
    assert "validation" in run.stdout and "by group:" in run.stdout and "(none in both)" in run.stdout
    as_json = json.loads(_cli(tmp_path, "-d", "films", "--split-by", "group", "--val-fraction", "0.2",
                              "--min-freq", "1", "--no-prefect", "--json", "-w", wh).stdout)
    assert as_json["cached"] and as_json["groups"]["train_groups"] + as_json["groups"]["val_groups"] == 40
    bad = _cli(tmp_path, "-d", "films", "--split-by", "movie", "--no-prefect", "-w", wh)
    assert bad.returncode == EXIT_USER_ERROR and "split_by" in bad.stderr and "review, group" in bad.stderr
    assert "Traceback" not in bad.stderr
