"""Alerts end to end: `reviewflow server --webhook-url` on a real Prefect server (SQLite) creates the automations,
and a failing inbox file, a drifted scoring run and a failed flow run each deliver exactly one JSON notification
to a loopback HTTP receiver (the server's own triggers and actions services send them)."""

from __future__ import annotations

import ast
import contextlib
import json
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import SimpleNamespace
from typing import Iterator

import duckdb
import pyarrow as pa
import pytest

from flows.alerts import DRIFT_EVENT, FLOW_NAMES, WEBHOOK_JSON, ensure_alerts
from flows.localserver import free_port, is_healthy
from ops_helpers import drop_bad_csv, train_tiny_champion
from pipeline.core.config import Warehouse
from serverkit import ROOT, api, background, client_env, wait_for
from synthetic import make_reviews

REVIEWFLOW = str(Path(sys.executable).with_name("reviewflow"))


class _Hook(BaseHTTPRequestHandler):
    def do_POST(self):  # noqa: N802 - http.server's naming
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        self.server.received.append(json.loads(body or b"{}"))
        self.send_response(200)
        self.end_headers()

    def log_message(self, *_):
        pass


@contextlib.contextmanager
def webhook_receiver() -> Iterator[SimpleNamespace]:
    """A loopback HTTP server in a thread recording every POSTed JSON body, in order."""
    srv = ThreadingHTTPServer(("127.0.0.1", 0), _Hook)
    srv.received = []
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    try:
        yield SimpleNamespace(url=f"http://127.0.0.1:{srv.server_address[1]}/hook", received=srv.received)
    finally:
        srv.shutdown()
        srv.server_close()


def _drifted_table(db: Path) -> None:
    """One-line, product-style texts: far from the tiny model's validation reviews (as tests/test_drift.py)."""
    short = make_reviews(600, seed=7, min_words=1, max_words=3).column("text").to_pylist()
    with duckdb.connect(str(db)) as con:
        con.register("t", pa.table({"review_id": [f"r{i:05d}" for i in range(600)],
                                    "text": [f"{t} battery charger" for t in short]}))
        con.execute("CREATE TABLE shop_reviews AS SELECT * FROM t")


def _automations(api_url: str) -> list[str]:
    return sorted(a.name for a in api(api_url, lambda c: c.read_automations()))


def _run(cmd: list[str], env: dict, log: Path) -> None:
    r = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True, timeout=300)
    log.write_text(r.stdout + r.stderr)
    assert r.returncode == 0, f"{cmd} exited {r.returncode}:\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}"


def test_every_flow_is_covered_and_the_drift_event_is_the_flows_one():
    """A new @flow(name=...) in flows/ must be added to FLOW_NAMES, or its failures would go unreported."""
    import flows.drift

    names = set()
    for path in (ROOT / "flows").glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "flow":
                names |= {k.value.value for k in node.keywords if k.arg == "name"}
    assert names == set(FLOW_NAMES)
    assert flows.drift.EVENT == DRIFT_EVENT
    assert set(WEBHOOK_JSON) >= {"text", "subject", "body"}


@pytest.mark.server
@pytest.mark.slow
def test_failed_inbox_file_and_drift_each_notify_the_webhook_once(tmp_path):
    wh = Warehouse(tmp_path / "warehouse").ensure()
    home, port = tmp_path / "prefect-home", free_port()
    api_url = f"http://127.0.0.1:{port}/api"
    server_env = client_env(api_url, home)
    server_env.pop("PREFECT_API_URL")
    server_log = tmp_path / "server.log"
    logs = lambda: f"--- server log ---\n{server_log.read_text()[-6000:]}"  # noqa: E731
    with webhook_receiver() as hook, background(
            [REVIEWFLOW, "server", "--port", str(port), "--no-setup-limits", "--webhook-url", hook.url],
            server_env, server_log) as server_proc:
        train_tiny_champion(wh, n=800)               # while the server boots
        db = tmp_path / "shop.duckdb"
        _drifted_table(db)
        bad = drop_bad_csv(wh)
        wait_for(lambda: server_proc.poll() is None and is_healthy(api_url), 150, 1.0, "the server", logs)
        wait_for(lambda: "alerts: 3 automation(s)" in server_log.read_text(), 60, 1.0, "the automations", logs)
        names = _automations(api_url)
        assert len(names) == 3 and len(set(names)) == 3, names
        api(api_url, lambda c: ensure_alerts(c, hook.url))        # a second `reviewflow server`: no copies
        assert _automations(api_url) == names

        env = client_env(api_url, home, REVIEWFLOW_WAREHOUSE=str(wh.root))
        # (a) a file the inbox cannot read: the pass completes, the file goes to failed/, one notification
        _run([sys.executable, "-m", "flows.inbox", "--warehouse", str(wh.root)], env, tmp_path / "inbox.log")
        assert (wh.inbox / "failed" / bad.name).exists()
        inbox_msgs = lambda: [m for m in hook.received if bad.name in m["subject"]]  # noqa: E731
        wait_for(inbox_msgs, 90, 0.5, "the inbox notification (inbox_flow emits it through "
                 "flows.alerts.emit_inbox_failures)", lambda: f"{hook.received}\n{logs()}")
        assert "failed" in inbox_msgs()[0]["body"] and "text" in inbox_msgs()[0]["body"].lower()

        # (b) a real scoring run of short product-style texts: drift, one notification naming the table
        _run([REVIEWFLOW, "score", "--table", "shop_reviews", "--db", str(db), "--warehouse", str(wh.root),
              "--device", "cpu"], env, tmp_path / "score.log")
        drift_msgs = lambda: [m for m in hook.received if "drift" in m["subject"]]  # noqa: E731
        wait_for(drift_msgs, 90, 0.5, "the drift notification", lambda: f"{hook.received}\n{logs()}")
        msg = drift_msgs()[0]
        assert "shop_reviews" in msg["subject"] and "shop_reviews" in msg["body"] and "psi" in msg["body"].lower()
        assert msg["text"] == f"{msg['subject']}\n{msg['body']}"

        # (c) a reviewflow flow run that fails (a bad parameter): the flow-run automation
        r = subprocess.run([sys.executable, "-c", "from flows.inbox import inbox_flow; inbox_flow(workers=0)"],
                           env=env, cwd=ROOT, capture_output=True, text=True, timeout=300)
        assert r.returncode != 0 and "workers must be at least 1" in r.stdout + r.stderr, r.stderr[-3000:]
        failed_msgs = lambda: [m for m in hook.received if "Failed" in m["subject"]]  # noqa: E731
        wait_for(failed_msgs, 90, 0.5, "the failed-run notification", lambda: f"{hook.received}\n{logs()}")
        assert "ingest-and-score-inbox" in failed_msgs()[0]["subject"]
        assert "flow inbox entered Failed" in failed_msgs()[0]["body"] and "workers" in failed_msgs()[0]["body"]
        # exactly one each: the later runs gave the earlier alerts time to repeat; nothing else was sent
        assert (len(inbox_msgs()), len(drift_msgs()), len(failed_msgs()), len(hook.received)) == (1, 1, 1, 3), \
            hook.received
