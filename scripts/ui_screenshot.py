#!/usr/bin/env python
"""Look at the Prefect UI as a person would: headless Chromium screenshots the flow-runs page.

Self-contained by default: starts a real `prefect server` (SQLite, temp PREFECT_HOME) on a free
loopback port, runs the real pipeline against it on small synthetic data (`reviewflow run`, then one
inbox pass), screenshots the Runs page and stops everything.

    .venv/bin/python scripts/ui_screenshot.py                       # -> docs/prefect-ui-flow-runs.png
    .venv/bin/python scripts/ui_screenshot.py --api-url http://127.0.0.1:4200/api --no-run   # existing server

Needs Debian's `chromium` (apt-get install -y chromium).
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))


def chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable"):
        exe = shutil.which(name)
        if exe:
            return exe
    raise SystemExit("chromium not found: apt-get install -y chromium")


def screenshot(url: str, out: Path, *, size: str = "1400,1300", budget_ms: int = 40000, timeout: float = 180) -> Path:
    """Render ``url`` in headless Chromium and save a PNG; returns ``out``."""
    out.parent.mkdir(parents=True, exist_ok=True)
    profile = tempfile.mkdtemp(prefix="reviewflow-chromium-")
    tmp_png = Path(profile) / "shot.png"
    cmd = [chromium(), "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
           "--disable-background-networking", "--disable-component-update", "--disable-sync", "--no-first-run",
           "--hide-scrollbars", f"--user-data-dir={profile}", f"--window-size={size}",
           f"--virtual-time-budget={budget_ms}", f"--screenshot={tmp_png}", url]
    try:
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
        if r.returncode != 0 or not tmp_png.exists() or tmp_png.stat().st_size < 10_000:
            raise RuntimeError(f"chromium failed ({r.returncode}):\n{r.stderr[-2000:]}")
        shutil.copyfile(tmp_png, out)
    finally:
        shutil.rmtree(profile, ignore_errors=True)
    return out


def run_pipeline(api_url: str, home: Path, work: Path) -> None:
    """A small real pipeline against the server: `reviewflow run` on synthetic CSV, then an inbox pass."""
    from serverkit import client_env
    from synthetic import make_reviews

    import pyarrow.csv as pacsv

    src = work / "reviews.csv"
    t = make_reviews(400, seed=1, split=None)
    pacsv.write_csv(t.select(["review_id", "text", "label"]), src)
    wh = work / "warehouse"
    env = client_env(api_url, home, REVIEWFLOW_WAREHOUSE=str(wh))
    exe = str(Path(sys.executable).with_name("reviewflow"))
    subprocess.run([exe, "run", "--source", str(src), "--dataset", "demo", "--preset", "default"], env=env,
                   check=True, cwd=ROOT, timeout=900)
    (wh / "inbox").mkdir(parents=True, exist_ok=True)
    drop = make_reviews(50, seed=2, split=None, id_prefix="new")
    pacsv.write_csv(drop.select(["review_id", "text"]), wh / "inbox" / "new-reviews.csv")
    old = time.time() - 10
    os.utime(wh / "inbox" / "new-reviews.csv", (old, old))
    subprocess.run([sys.executable, "-m", "flows.inbox", "--warehouse", str(wh)], env=env, check=True, cwd=ROOT,
                   timeout=600)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--api-url", help="use this running server instead of starting one")
    ap.add_argument("--no-run", action="store_true", help="do not run the pipeline first")
    ap.add_argument("--out", type=Path, default=ROOT / "docs" / "prefect-ui-flow-runs.png")
    ap.add_argument("--page", default="/runs", help="UI path to capture (default: the flow runs page)")
    ap.add_argument("--budget-ms", type=int, default=40000, help="Chromium virtual time budget")
    a = ap.parse_args(argv)

    from serverkit import prefect_server

    work = Path(tempfile.mkdtemp(prefix="reviewflow-ui-"))
    try:
        if a.api_url:
            if not a.no_run:
                run_pipeline(a.api_url, work / "home", work)
            ui = a.api_url.rstrip("/").removesuffix("/api")
            print(screenshot(ui + a.page, a.out, budget_ms=a.budget_ms))
            return 0
        with prefect_server(work / "home") as srv:
            print(f"server up at {srv.ui_url}")
            if not a.no_run:
                run_pipeline(srv.api_url, work / "home", work)
            # the first load warms the server (a busy machine can leave the list still loading); keep the second
            screenshot(srv.ui_url + a.page, a.out, budget_ms=a.budget_ms)
            print(screenshot(srv.ui_url + a.page, a.out, budget_ms=a.budget_ms))
        return 0
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
