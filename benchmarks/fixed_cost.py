"""Benchmark: the fixed cost of a scoring run, i.e. a re-run of ``reviewflow score`` with nothing left to score.

All measured in this one run, each command in its own fresh process (the way a scheduler starts it), on a table
of --rows IMDb reviews (fresh ids) in a scratch DuckDB file, scored once first:

* ``floor``: a process that only imports the CLI (``python -c "import flows.cli"``), the cost no command avoids;
* ``full``: the first run, which scores every row (``--no-prefect``);
* ``no-op``: the re-run, which finds nothing to score (``--no-prefect``), median of --repeat;
* with ``--prefect-api URL`` (a running Prefect server, as ``serve`` and compose run it): the no-op through the
  score flow; with ``--ephemeral``: the same with no ``PREFECT_API_URL`` (Prefect starts a temporary server);
* with ``--baseline-tree DIR`` (a checkout of an older commit, e.g. ``git worktree add /tmp/base f5a2e2d``): every
  no-op again with that tree's code, interleaved with this one's, and the ratio.

Targets (issue 21): no-op <= 1.5 s without Prefect, <= 3 s against a running server.

    python benchmarks/fixed_cost.py --warehouse warehouse --rows 25000 --repeat 5 --baseline-tree /tmp/base \
        --prefect-api http://127.0.0.1:4200/api
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import IMDB, ROOT


def timed(cmd: list[str], tree: Path, env: dict[str, str]) -> float:
    """Seconds of one process running ``cmd`` with ``tree``'s code first on its path; a failure stops the run."""
    env = os.environ | env | {"PYTHONPATH": str(tree), "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=tree, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - t0
    if proc.returncode != 0:
        sys.exit(f"{' '.join(cmd)} failed in {tree}:\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}")
    return seconds


def build_table(src: str, db: Path, rows: int) -> None:
    import duckdb

    with duckdb.connect(str(db)) as con:
        con.execute("CREATE TABLE reviews AS SELECT printf('r%03d_%s', rep, review_id) AS review_id, text, label "
                    "FROM range(?) AS r(rep), read_parquet(?) ORDER BY rep, review_id LIMIT ?",
                    [-(-rows // 25_000), src, rows])


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--warehouse", default=str(ROOT / "warehouse"), help="warehouse with a champion model")
    p.add_argument("--source", default=str(IMDB / "train.parquet"))
    p.add_argument("--rows", type=int, default=25_000)
    p.add_argument("--repeat", type=int, default=5)
    p.add_argument("--baseline-tree", type=Path, default=None, help="an older checkout to compare with")
    p.add_argument("--prefect-api", default=None, help="PREFECT_API_URL of a running Prefect server")
    p.add_argument("--ephemeral", action="store_true", help="also the no-op with Prefect's temporary server")
    args = p.parse_args(argv)

    work = Path(tempfile.mkdtemp(prefix="fixed-cost-"))
    db = work / "reviews.duckdb"
    build_table(args.source, db, args.rows)
    score = [sys.executable, "-m", "flows.cli", "score", "--table", "reviews", "--db", str(db),
             "--warehouse", str(Path(args.warehouse).resolve())]
    trees = {"now": ROOT} | ({"baseline": args.baseline_tree.resolve()} if args.baseline_tree else {})
    home = {"PREFECT_HOME": str(work / "prefect")}
    print(f"table: {args.rows:,} reviews; {len(trees)} tree(s): " + ", ".join(f"{k} {v}" for k, v in trees.items()))
    print(f"floor (import flows.cli): {timed([sys.executable, '-c', 'import flows.cli'], ROOT, home):.2f} s")
    print(f"full run (--no-prefect): {timed(score + ['--no-prefect'], ROOT, home):.2f} s")

    modes = {"no-op --no-prefect": (["--no-prefect"], home)}
    if args.prefect_api:
        modes["no-op via running server"] = ([], home | {"PREFECT_API_URL": args.prefect_api})
    if args.ephemeral:
        modes["no-op via temporary server"] = ([], {"PREFECT_HOME": str(work / "prefect-ephemeral"),
                                                   "PREFECT_API_URL": ""})
    for mode, (flags, env) in modes.items():
        runs: dict[str, list[float]] = {name: [] for name in trees}
        for _ in range(args.repeat):            # interleaved: both trees see the same machine load
            for name, tree in trees.items():
                runs[name].append(timed(score + flags, tree, env))
        med = {name: statistics.median(v) for name, v in runs.items()}
        line = f"{mode}: now {med['now']:.2f} s (runs {', '.join(f'{x:.2f}' for x in runs['now'])})"
        if "baseline" in med:
            line += f"; baseline {med['baseline']:.2f} s; now/baseline {med['now'] / med['baseline']:.2f}x"
        print(line)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
