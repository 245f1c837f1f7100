"""Scoring on the device that is there: ``--device auto|cpu|cuda`` for score and predict, bf16 on CUDA."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from pipeline.core.errors import InputError
from pipeline.score.writeback import score_table
from pipeline.serve.predictor import load_predictor
from score_helpers import make_review_db, query_rows
from synthetic import make_reviews

REVIEWFLOW = str(Path(sys.executable).with_name("reviewflow"))


@pytest.fixture(scope="module")
def wh(model_shelf, tmp_path_factory):
    from model_helpers import gru

    return model_shelf.copy(gru, tmp_path_factory.mktemp("device") / "wh").wh


def texts() -> list[str]:
    return make_reviews(40, seed=4).column("text").to_pylist()


def test_auto_picks_what_is_here_and_scores_as_cpu_does(wh):
    cpu = load_predictor(wh, device="cpu")
    auto = load_predictor(wh, device="auto")
    assert auto.device == ("cuda" if torch.cuda.is_available() else "cpu") and cpu.device == "cpu"
    assert auto.precision == ("bf16" if torch.cuda.is_available() else cpu.precision)
    tol = 0.02 if auto.device == "cuda" else 1e-6              # bf16 on CUDA
    np.testing.assert_allclose(auto.predict_proba(texts()), cpu.predict_proba(texts()), atol=tol)


def test_a_device_that_is_not_here_is_refused_naming_the_ones_that_are(wh):
    bad = ["gpu", "tpu", "cuda:7"] + ([] if torch.cuda.is_available() else ["cuda"])
    for device in bad:
        with pytest.raises(InputError, match="cpu"):
            load_predictor(wh, device=device)


@pytest.mark.subprocess
def test_cli_refuses_a_missing_device_before_touching_the_table(wh, tmp_path):
    db = tmp_path / "r.duckdb"
    make_review_db(db, n=30)
    before = query_rows(db, "SELECT * FROM reviews ORDER BY review_id")
    for args in (["--no-prefect"], []):          # the direct path and the Prefect path
        out = subprocess.run([REVIEWFLOW, "score", "--table", "reviews", "--db", str(db), "--device", "tpu",
                              "-w", str(wh.root), *args], capture_output=True, text=True, timeout=300)
        assert out.returncode == 2 and "tpu" in out.stderr and out.stderr.count("\n") <= 2, out.stderr
    assert query_rows(db, "SELECT * FROM reviews ORDER BY review_id") == before
    ok = subprocess.run([REVIEWFLOW, "score", "--table", "reviews", "--db", str(db), "--device", "cpu",
                         "--no-prefect", "-w", str(wh.root)], capture_output=True, text=True, timeout=300)
    assert ok.returncode == 0, ok.stderr
    assert query_rows(db, "SELECT count(sentiment_score) FROM reviews") == [(30,)]


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU; this machine has none")
def test_scoring_a_table_on_cuda_matches_cpu_within_bf16(wh, tmp_path):
    cpu_db, gpu_db = tmp_path / "cpu.duckdb", tmp_path / "gpu.duckdb"
    for db in (cpu_db, gpu_db):
        make_review_db(db, n=200)
    score_table(cpu_db, "reviews", load_predictor(wh, device="cpu"))
    score_table(gpu_db, "reviews", load_predictor(wh, device="cuda"))
    sql = "SELECT review_id, sentiment_score FROM reviews ORDER BY review_id"
    a, b = query_rows(cpu_db, sql), query_rows(gpu_db, sql)
    assert [r[0] for r in a] == [r[0] for r in b]
    np.testing.assert_allclose([r[1] for r in a], [r[1] for r in b], atol=0.02)


def test_cpu_batches_run_in_parallel_one_core_each_with_the_same_scores(wh):
    """Whole batches on separate cores (the default) score exactly as one batch at a time on all threads, and
    the caller's torch thread count is left as it was."""
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        p = load_predictor(wh, device="cpu", batch_size=8)
        assert p._batch_workers() == 2
        assert p._batches(np.arange(10), 2) == [slice(0, 5), slice(5, 10)]     # a few rows: one batch per core
        assert p._batches(np.arange(20), 2) == [slice(0, 8), slice(8, 16), slice(16, 24)]
        parallel = p.predict_proba(texts())
        assert torch.get_num_threads() == 2
        p.parallel_batches = False
        assert p._batch_workers() == 1
        np.testing.assert_allclose(p.predict_proba(texts()), parallel, atol=1e-5)
        torch.set_num_threads(1)                   # one thread given: one batch at a time, no pool
        p.parallel_batches = True
        assert p._batch_workers() == 1
        np.testing.assert_allclose(p.predict_proba(texts()), parallel, atol=1e-5)
    finally:
        torch.set_num_threads(threads)
