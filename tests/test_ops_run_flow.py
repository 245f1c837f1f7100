"""The main job `reviewflow run`: one flow, the others as subflows, a summary artifact, cheap re-runs;
and a fail-fast network check when the source is a URL that cannot be reached."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from pathlib import Path

import duckdb
import pytest

from synthetic import make_reviews, write_aclimdb_folder

REVIEWFLOW = str(Path(sys.executable).with_name("reviewflow"))


@pytest.mark.prefect
def test_run_flow_end_to_end_then_cached(prefect_harness, warehouse, tmp_path):
    from prefect.client.orchestration import get_client

    from flows.run import run_flow

    src = write_aclimdb_folder(tmp_path / "src", n_per_class=60)
    unlabelled = tmp_path / "unlabelled.csv"       # --also: more text for the word vectors `default` pretrains
    make_reviews(50, seed=9, split="unsup", id_prefix="extra").select(["review_id", "text", "split"]).to_pandas(
    ).to_csv(unlabelled, index=False)
    # `default`, not the lineage's `baseline`: an Elman RNN over 512 front-padded tokens does not learn from
    # 108 training reviews (it stays near 0.5), so only a model that can learn makes the quality check mean much
    first = run_flow(source=str(src), dataset="acl", preset="default", warehouse=str(warehouse.root),
                     also=[str(unlabelled)])
    assert first["rows_added"] == 240 + 50 and first["table"] == "acl_test_scored"
    assert first["rows_scored"] == 120 and first["model_version"] and first["champion"] == first["model_version"]
    assert not first["train_cached"]
    assert first["db_path"] == str(warehouse.duckdb_path)
    # the synthetic reviews carry a learnable signal (cue words): a broken or untrained model stays near 0.5
    # on the 12 validation and 120 test reviews, a working one is right on nearly all of them
    assert first["val_accuracy"] >= 0.9
    with duckdb.connect(first["db_path"], read_only=True) as con:
        assert con.execute("SELECT count(*), count(sentiment_score), count(*) FILTER (WHERE split <> 'test') "
                           "FROM acl_test_scored").fetchone() == (120, 120, 0)
        agreement = con.execute("SELECT avg(CASE WHEN (sentiment_score >= 0.5) = (label = 1) THEN 1 ELSE 0 END) "
                                "FROM acl_test_scored").fetchone()[0]
    assert agreement >= 0.9, agreement
    card = (warehouse.models / first["model_version"] / "MODEL_CARD.md").read_text()
    assert "initialised from word2vec vectors" in card            # the pretrain task ran inside the run flow

    again = run_flow(source=str(src), dataset="acl", preset="default", warehouse=str(warehouse.root),
                     also=[str(unlabelled)])
    assert again["rows_added"] == 0 and again["prep_cached"] and again["train_cached"]
    assert again["model_version"] == first["model_version"] and again["rows_scored"] == 0
    assert again["rows_up_to_date"] == 120

    import asyncio

    async def artifact():
        async with get_client() as client:
            return await client.read_latest_artifacts()
    keys = {a.key for a in asyncio.run(artifact())}
    assert {"run-acl-summary", "run-acl-progress", "pretrain-acl"} <= keys, keys


@pytest.mark.subprocess
def test_cli_fails_fast_without_network(tmp_path):
    with socket.socket() as s:  # a loopback port nobody listens on stands in for "no network"
        s.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{s.getsockname()[1]}/aclImdb_v1.tar.gz"
    t0 = time.monotonic()
    r = subprocess.run([REVIEWFLOW, "run", "--source", url, "--warehouse", str(tmp_path / "wh"),
                        "--probe-timeout", "2"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 2, r.stderr
    assert "--source ../shared/data/imdb/train.parquet" in r.stderr and "Traceback" not in r.stderr
    assert time.monotonic() - t0 < 30
    assert not (tmp_path / "wh").exists(), "nothing may be written before the check"


@pytest.mark.subprocess
def test_cli_missing_local_source(tmp_path):
    r = subprocess.run([REVIEWFLOW, "run", "--source", str(tmp_path / "nope.parquet"), "--warehouse",
                        str(tmp_path / "wh")], capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "does not exist" in r.stderr
