"""Benchmark: scoring at scale — one process against Dask workers, int8 against fp32, and an Amdahl projection.

All in one run, on DuckDB tables of IMDb reviews replicated from ../shared/data/imdb/{train,unsup}.parquet with
fresh ids, with one registered model (``--warehouse``, ``--model``):

* ``local``: :func:`pipeline.score.writeback.score_table` in one process, torch on ``--threads`` threads;
* ``dask``: ``reviewflow score --workers N`` (the Prefect flow on a LocalCluster of N processes x 1 thread:
  export to Parquet partitions, scored parts, one merge transaction per part);
* each at ``--small-rows`` and ``--rows``, every measurement in its own process on a fresh table; it reports
  rows/s (the scoring run, claim to audit row), the peak RSS of the committer and of every worker (flat
  from the small to the large table is the memory target), and the committer's export and merge throughput;
* ``--int8-model``: the same local run with that model in fp32 and in static int8 (ranges fixed at
  registration), at ``--int8-rows``;
* CUDA when there is one (else said so).

From the large Dask run it projects rows/s for 8, 32 and 128 workers (Amdahl, with the measured serial export
and merge costs) and names what binds.

    python benchmarks/scale.py --warehouse W --model champion --rows 1000000 --small-rows 100000
    python benchmarks/scale.py --warehouse W --rows 20000 --small-rows 5000        # quick
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from common import IMDB, ROOT, replicated

SCRATCH = Path(os.environ.get("REVIEWFLOW_BENCH_TMP", "/tmp/reviewflow-scale"))


def source_parquet(rows: int) -> Path:
    """``rows`` reviews (train + unsup, replicated with fresh ids) as one Parquet file, made once."""
    import pyarrow.parquet as pq

    path = SCRATCH / f"reviews-{rows}.parquet"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        writer = None
        for t in replicated([IMDB / "train.parquet", IMDB / "unsup.parquet"], rows):
            t = t.select(["review_id", "text"])
            writer = writer or pq.ParquetWriter(tmp, t.schema)
            writer.write_table(t)
        writer.close()
        os.replace(tmp, path)
    return path


def fresh_db(rows: int, name: str) -> Path:
    """A new DuckDB file holding table ``reviews`` (review_id, text) of ``rows`` rows (not timed)."""
    import duckdb

    db = SCRATCH / f"{name}-{rows}.duckdb"
    for p in (db, Path(f"{db}.wal")):
        p.unlink(missing_ok=True)
    con = duckdb.connect(str(db))
    con.execute("CREATE TABLE reviews AS SELECT * FROM read_parquet(?) ORDER BY review_id", [str(source_parquet(rows))])
    con.close()
    return db


def vmhwm_mib() -> float:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) / 1024.0 for line in f if line.startswith("VmHWM:"))


# --------------------------------------------------------------------------- children (one measurement each)


def child_local(args) -> dict:
    import torch

    from pipeline.core.config import Warehouse
    from pipeline.score.writeback import score_table
    from pipeline.serve.predictor import load_predictor

    torch.set_num_threads(args.threads)
    db = Path(args.db)
    kwargs = {} if args.precision in ("auto", "int8") else {"precision": args.precision}
    predictor = load_predictor(Warehouse(Path(args.warehouse)), args.model, device=args.device, **kwargs)
    if args.precision == "int8" and predictor.precision != "int8":
        # measured whatever the card decided: the static int8 registration measures (pipeline.model.quantize),
        # with the recorded ranges or ranges calibrated as registration does
        from pipeline.train.precision import int8_predictor

        predictor = int8_predictor(Warehouse(Path(args.warehouse)), args.model)
    rep = score_table(db, "reviews", predictor)
    return {"rows_per_s": rep.rows_per_s, "seconds": rep.seconds, "rows": rep.rows_scored,
            "committer_rss_mib": vmhwm_mib(), "precision": getattr(predictor, "precision", None),
            "device": str(getattr(predictor, "device", "cpu"))}


def child_dask(args) -> dict:
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "180")
    from flows.score import score_flow

    db = Path(args.db)
    rep = score_flow(table="reviews", db=str(db), warehouse=args.warehouse, model=args.model, workers=args.workers,
                     rows_per_part=args.rows_per_part, scratch=str(SCRATCH / "parts"), device="cpu")
    return {"rows_per_s": rep["rows_per_s"], "seconds": rep["seconds"], "rows": rep["rows_scored"],
            "committer_rss_mib": vmhwm_mib(), "engine": rep["engine"]}


def run_child(kind: str, args, **extra) -> dict:
    """One measurement in a fresh process: its JSON line."""
    db = fresh_db(extra["n"], f"{kind}-{extra.get('precision', 'auto')}")   # made here: not in the scorer's RSS
    cmd = [sys.executable, __file__, "--child", kind, "--db", str(db), "--warehouse", args.warehouse, "--model", args.model,
           "--threads", str(args.threads), "--workers", str(args.workers), "--rows-per-part", str(args.rows_per_part)]
    for k, v in extra.items():
        cmd += [f"--{k.replace('_', '-')}", str(v)]
    env = {**os.environ, "PREFECT_HOME": str(SCRATCH / "prefect-home"), "PYTHONPATH": str(ROOT)}
    t0 = time.perf_counter()
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, cwd=ROOT)
    if out.returncode != 0:
        raise SystemExit(f"{kind} {extra} failed:\n{out.stderr[-3000:]}")
    line = [x for x in out.stdout.splitlines() if x.startswith("{")][-1]
    return json.loads(line) | {"wall_s": time.perf_counter() - t0}


# --------------------------------------------------------------------------- report


def amdahl(eng: dict, rows: int, seconds: float, workers: int) -> tuple[float, list[tuple]]:
    """Projected rows/s for W workers. The committer exports (serial), the workers score (parallel), the committer
    merges while they score (serial, overlapped), plus a fixed start-up (cluster, model loads, Prefect: what the
    measured run took beyond the three): T(W, N) = fixed + N/export + max(N/(W * per_worker), N/merge).
    -> (fixed seconds, [(W, rows/s at ``rows``, rows/s at 100M rows, what binds at 100M)])."""
    export = rows / max(eng["export_seconds"], 1e-9)
    merge = eng["merge_rows_per_s"] or float("inf")
    per_worker = rows / max(eng["score_seconds_total"], 1e-9)
    fixed = max(0.0, seconds - (rows / export + max(rows / (workers * per_worker), rows / merge)))
    out = []
    for w in (workers, 8, 32, 128):
        def rate(n):
            return n / (fixed + n / export + max(n / (w * per_worker), n / merge))
        terms = {"scoring (workers)": 1 / (w * per_worker), "merge (committer UPDATE)": 1 / merge,
                 "export (committer read + Parquet write)": 1 / export}
        serial = terms["export (committer read + Parquet write)"] + max(terms["merge (committer UPDATE)"],
                                                                      terms["scoring (workers)"])
        binds = max(terms, key=terms.get)
        share = 100 * (terms["export (committer read + Parquet write)"] + terms["merge (committer UPDATE)"]) / serial
        out.append((w, rate(rows), rate(100_000_000), f"{binds}; committer busy {min(share, 100):.0f} % of the time"))
    return fixed, out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--warehouse", default=str(ROOT / "warehouse"))
    ap.add_argument("--model", default="champion")
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--small-rows", type=int, default=100_000)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--rows-per-part", type=int, default=50_000)
    ap.add_argument("--int8-model", default=None, help="a model version (e.g. a GRU) for the int8 vs fp32 rows")
    ap.add_argument("--int8-rows", type=int, default=20_000)
    ap.add_argument("--int8-warehouse", default=None, help="the warehouse of --int8-model (default --warehouse)")
    ap.add_argument("--skip", default="", help="comma-separated: local,dask,int8,cuda")
    ap.add_argument("--child", default=None)
    ap.add_argument("--n", type=int, default=0)
    ap.add_argument("--precision", default="auto")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--db", default=None)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(child_local(args) if args.child == "local" else child_dask(args)))
        return
    skip = set(filter(None, args.skip.split(",")))
    print(f"# scale benchmark: model {args.model} of {args.warehouse}; {os.cpu_count()} cores")
    results = {}
    for n in (args.small_rows, args.rows):
        source_parquet(n)
        if "local" not in skip:
            results[("local", n)] = run_child("local", args, n=n)
        if "dask" not in skip:
            results[("dask", n)] = run_child("dask", args, n=n)
    print(f"\n| engine | rows | rows/s | run s | committer peak RSS MiB | worker peak RSS MiB | merge rows/s | export s |")
    print("|---|---:|---:|---:|---:|---|---:|---:|")
    for (kind, n), r in results.items():
        eng = r.get("engine") or {}
        workers = ", ".join(f"{v:.0f}" for v in (eng.get("worker_peak_rss_mib") or {}).values()) or "-"
        label = f"1 process x {args.threads} threads" if kind == "local" else f"Dask {args.workers} workers x 1 thread"
        print(f"| {label} | {n:,} | {r['rows_per_s']:,.0f} | {r['seconds']:.1f} | {r['committer_rss_mib']:.0f} | "
              f"{workers} | {eng.get('merge_rows_per_s') or '-'} | {eng.get('export_seconds', '-')} |")
    if ("local", args.rows) in results and ("dask", args.rows) in results:
        ratio = results[("dask", args.rows)]["rows_per_s"] / results[("local", args.rows)]["rows_per_s"]
        print(f"\nDask {args.workers}x1 / one process x{args.threads} at {args.rows:,} rows: {ratio:.2f}x")
    if ("dask", args.rows) in results:
        big = results[("dask", args.rows)]
        eng = big["engine"]
        fixed, projection = amdahl(eng, big["rows"], big["seconds"], args.workers)
        print(f"\nAmdahl projection from the {args.rows:,}-row Dask run (export {eng['export_seconds']} s serial, "
              f"merge {eng['merge_rows_per_s']} rows/s serial, scoring {eng['score_seconds_total']} worker-s, "
              f"fixed start-up {fixed:.1f} s):")
        print(f"| workers | rows/s at {args.rows:,} rows | rows/s at 100,000,000 rows | largest term at 100M |")
        print("|---:|---:|---:|---|")
        for w, small, large, binds in projection:
            print(f"| {w} | {small:,.0f} | {large:,.0f} | {binds} |")
    if args.int8_model and "int8" not in skip:
        other = {"model": args.int8_model, "warehouse": args.int8_warehouse or args.warehouse}
        a = run_child("local", args, n=args.int8_rows, precision="fp32", **other)
        b = run_child("local", args, n=args.int8_rows, precision="int8", **other)
        print(f"\nint8 vs fp32, {args.int8_model}, {args.int8_rows:,} rows, one process x {args.threads} threads: "
              f"fp32 {a['rows_per_s']:,.0f} rows/s, int8 {b['rows_per_s']:,.0f} rows/s "
              f"({b['rows_per_s'] / a['rows_per_s']:.2f}x)")
    if "cuda" not in skip:
        import torch

        if torch.cuda.is_available():
            r = run_child("local", args, n=args.int8_rows, device="cuda")
            print(f"\nCUDA ({torch.cuda.get_device_name()}): {r['rows_per_s']:,.0f} rows/s on {args.int8_rows:,} rows")
        else:
            print("\nCUDA: not measured (no GPU on this host)")


if __name__ == "__main__":
    main()
