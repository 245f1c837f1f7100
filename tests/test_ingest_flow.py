"""ingest_flow through real Prefect (artifacts, run name), the retry rule, and the CLI."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from synthetic import write_aclimdb_folder
from typer.testing import CliRunner

from pipeline.ingest.download import DownloadError
from pipeline.core.errors import InputError
from pipeline.ingest.lake import dataset_files, read_table


@pytest.mark.prefect
def test_ingest_flow_lands_rows_and_publishes_artifacts(prefect_harness, tmp_path):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    from flows.ingest import ingest_flow
    from pipeline.core.config import Warehouse

    csv = tmp_path / "shop reviews.csv"
    csv.write_text("id,body,verdict,product\n1,loved it,positive,p1\n2,hated it,negative,p1\n3,   ,positive,p2\n"
                   "1,loved it,pos,p1\n4,no verdict,,\n")
    wh = Warehouse(tmp_path / "wh")
    state = ingest_flow(source=str(csv), dataset="Shop_2026", warehouse=str(wh.root), text_col="body",
                        label_col="verdict", split="test", group_col="product", return_state=True)
    assert state.is_completed()
    rep = state.result()
    json.dumps(rep)  # small and JSON-able
    assert (rep["rows_read"], rep["rows_added"], rep["duplicates"]) == (5, 3, 1)
    assert rep["dropped"] == {"missing_text": 0, "empty_text": 1}
    rows = {r["review_id"]: (r["text"], r["label"], r["split"]) for r in read_table(wh, "Shop_2026").to_pylist()}
    assert rows == {"1": ("loved it", 1, "test"), "2": ("hated it", 0, "test"), "4": ("no verdict", None, "test")}
    assert {r["review_id"]: r["group_id"] for r in read_table(wh, "Shop_2026").to_pylist()} == {
        "1": "p1", "2": "p1", "4": None}

    with get_client(sync_client=True) as client:
        run = client.read_flow_run(state.state_details.flow_run_id)
        arts = client.read_artifacts(artifact_filter=ArtifactFilter(
            key=ArtifactFilterKey(any_=["ingest-shop-2026", "ingest-shop-2026-dropped"])))
        task_runs = client.read_task_runs()
    assert run.name == "ingest-Shop_2026"
    assert {t.name for t in task_runs} >= {"read-Shop_2026", "write-Shop_2026"}
    by_key = {a.key: a for a in arts}
    assert set(by_key) == {"ingest-shop-2026", "ingest-shop-2026-dropped"}
    table = by_key["ingest-shop-2026"].data
    table = json.loads(table) if isinstance(table, str) else table
    assert {(r["split"], r["label"], r["added"]) for r in table} == {("test", "pos", 1), ("test", "neg", 1),
                                                                   ("test", "unlabelled", 1)}
    dropped = by_key["ingest-shop-2026-dropped"].data
    dropped = json.loads(dropped) if isinstance(dropped, str) else dropped
    assert {r["reason"]: r["rows"] for r in dropped}["empty_text"] == 1
    assert {r["reason"]: r["rows"] for r in dropped}["duplicate_in_source"] == 1

    # bad input fails the flow with the user-facing error, lake untouched
    before = dataset_files(wh, "Shop_2026")
    bad = tmp_path / "bad.csv"
    bad.write_text("body,verdict\nfine,pos\nodd,sideways\n")
    with pytest.raises(InputError, match=r"unknown label value 'sideways'.*data row 2 at line 3, column 'verdict'"):
        ingest_flow(source=str(bad), dataset="Shop_2026", warehouse=str(wh.root), text_col="body",
                    label_col="verdict")
    assert dataset_files(wh, "Shop_2026") == before


def test_tasks_retry_only_what_a_retry_can_cure():
    from prefect.states import Failed

    from flows.ingest import READ_RETRIES, artifact_key, read_task
    from flows.retries import retry_unless_user_error
    from pipeline.core.duck import LockTimeout
    from pipeline.core.errors import IntegrityError, QueryRefused

    assert READ_RETRIES >= 2 and read_task.retries == READ_RETRIES
    assert read_task.retry_condition_fn is retry_unless_user_error
    retried = [DownloadError("HTTP 503", url="http://x", transient=True), LockTimeout("held"), OSError("disk busy")]
    not_retried = [DownloadError("HTTP 404", url="http://x", transient=False),
                   InputError("unknown label value", path="f.csv", row=2), QueryRefused("COPY"),
                   IntegrityError("weights modified")]
    assert all(retry_unless_user_error(None, None, Failed(data=exc)) for exc in retried)
    assert not any(retry_unless_user_error(None, None, Failed(data=exc)) for exc in not_retried)
    assert artifact_key("ingest", "My Data_set.v2") == "ingest-my-data-set-v2"


def test_cli_ingest_no_prefect(tmp_path):
    from flows.cli import app

    write_aclimdb_folder(tmp_path / "src", n_per_class=2, unsup=1)
    wh = tmp_path / "wh"
    runner = CliRunner()
    args = ["ingest", str(tmp_path / "src"), "--dataset", "imdb", "--warehouse", str(wh), "--no-prefect", "--no-progress"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "rows added      9" in result.output and "train    pos" in result.output
    again = runner.invoke(app, args + ["--json"])
    assert again.exit_code == 0, again.output
    rep = json.loads(again.output[again.output.index("{"):])
    assert (rep["rows_added"], rep["duplicates_in_lake"], rep["part_file"]) == (0, 9, None)


@pytest.mark.subprocess
def test_cli_reports_bad_input_without_traceback(tmp_path):
    bad = tmp_path / "bad.csv"
    bad.write_text("text,label\nok,pos\n")
    out = subprocess.run([str(Path(sys.executable).parent / "reviewflow"), "ingest", str(bad), "--dataset", "x",
                          "--text-col", "body", "--no-prefect", "--warehouse", str(tmp_path / "wh")],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 2
    assert "column 'body' not found; the file has columns: 'text', 'label'" in out.stderr
    assert "Traceback" not in out.stderr
