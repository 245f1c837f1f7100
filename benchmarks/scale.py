"""Benchmark: scoring at scale — one process against Dask workers, int8 against fp32, and an Amdahl projection.

All in one run, on DuckDB tables of IMDb reviews replicated from ../shared/data/imdb/{train,unsup}.parquet with
fresh ids, with one registered model (``--warehouse``, ``--model``):

* ``local``: :func:`pipeline.score.writeback.score_table` in one process, torch on ``--threads`` threads;
* ``dask``: ``reviewflow score --workers N`` (the Prefect flow on a LocalCluster of N processes x 1 thread: the
  committer plans id ranges and snapshots the database file, workers read their range from the snapshot and
  write scored parts, the committer stages them and folds them all into the table in one transaction);
* each at ``--small-rows`` and ``--rows``, every measurement in its own process on a fresh table, local and Dask
  interleaved (``--repeat K`` more pairs at ``--rows``: the ratio is their median, so a neighbour's load hits both
  sides alike); it reports rows/s of the scoring run (claim to audit row, what the ratio compares), the
  process's wall time (Python, Prefect and cluster start-up included), the peak RSS of the committer and of every
  worker, and the committer's serial steps (start, plan + snapshot, fold) and its staging;
* ``--int8-model``: the same local run with that model in fp32 and in static int8 (ranges fixed at
  registration), at ``--int8-rows``;
* CUDA when there is one (else said so).

From the large Dask run it projects rows/s and the committer's busy share for 8, 32 and 128 workers (Amdahl, with
the measured serial and staging costs per row) and names what binds. The host's load average is printed with the
numbers (other jobs on a shared host slow both sides).

    python benchmarks/scale.py --warehouse W --model champion --rows 100000 --small-rows 20000 --repeat 2
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
    t_load = time.perf_counter()          # torch's import and the model load: a Dask worker pays them in its run
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
    load_s = time.perf_counter() - t_load
    rep = score_table(db, "reviews", predictor)
    return {"rows_per_s": rep.rows_per_s, "seconds": rep.seconds, "rows": rep.rows_scored, "load_s": load_s,
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


def child_committer(args) -> dict:
    """The committer alone: the partitioned run with a stub model that costs nothing (seeded random scores), its
    parts scored in this process: start, plan + snapshot, staging and fold measured without workers importing
    torch on the same cores (on a cluster they run elsewhere)."""
    import numpy as np

    from pipeline.score.partitioned import score_table_partitioned, serial_map

    class Stub:
        version, accepts_arrow = "stub-model", True

        def predict_proba(self, texts):
            return np.random.default_rng(len(texts)).random(len(texts))

    rep = score_table_partitioned(Path(args.db), "reviews", Stub.version, serial_map(Stub(), 0.5),
                                  scratch=str(SCRATCH / "parts"), rows_per_part=args.rows_per_part, engine="serial",
                                  workers=1)
    return {"rows_per_s": rep.rows_per_s, "seconds": rep.seconds, "rows": rep.rows_scored,
            "committer_rss_mib": vmhwm_mib(), "engine": rep.engine}


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


def amdahl(eng: dict, rows: int, seconds: float, workers: int, serial_eng: dict | None = None) -> tuple[dict, list[tuple]]:
    """Projected rows/s and committer busy share for W workers, from one measured Dask run of ``rows`` rows.

    The committer's serial steps (start: checks, audit row, counts; plan + snapshot; the fold) cost ``s`` per row;
    while the workers score (``c`` worker-seconds per row in all), the committer stages parts (``g`` per row,
    overlapped); the rest of the measured run is fixed start-up (the workers' model loads not hidden behind the
    committer, the audit row's completion): T(W, N) = fixed + N*s + max(N*c/W, N*g). The committer is busy
    (s + g) / (s + max(c/W, g)) of a long run's time (fixed start-up amortised), and (N*(s+g)) / T at ``rows``.
    ``serial_eng``: take s and g from that run (the committer measured alone, per row) instead of ``eng``.
    -> (the measured terms, [(W, rows/s at ``rows``, rows/s at 100M, busy % at ``rows``, busy % long run, binds)])."""
    se = serial_eng or eng
    serial_rows = se["rows_staged"] if serial_eng else rows
    s = (se["start_seconds"] + se["plan_seconds"] + se["fold_seconds"]) / max(serial_rows, 1)
    g, c = se["stage_seconds"] / max(serial_rows, 1), eng["score_seconds_total"] / rows
    serial_s = s * rows
    fixed = max(0.0, seconds - (serial_s + max(rows * c / workers, rows * g)))
    out = []
    for w in (workers, 8, 32, 128):
        def t(n):
            return fixed + n * s + max(n * c / w, n * g)
        busy_n = 100 * rows * (s + g) / t(rows)
        busy_long = 100 * (s + g) / (s + max(c / w, g))
        binds = "the committer (serial steps + staging)" if s + g > c / w else "scoring (the workers)"
        out.append((w, rows / t(rows), 1e8 / t(1e8), busy_n, busy_long, binds))
    terms = {"serial_s": serial_s, "stage_s": g * rows, "score_worker_s": eng["score_seconds_total"],
             "fixed_s": fixed, "committer_rows_per_s": 1 / (s + g) if s + g else float("inf"),
             "per_worker_rows_per_s": 1 / c if c else float("inf")}
    return terms, out


def loadavg() -> str:
    try:
        return " ".join(open("/proc/loadavg").read().split()[:3])
    except OSError:
        return "n/a"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--warehouse", default=str(ROOT / "warehouse"))
    ap.add_argument("--model", default="champion")
    ap.add_argument("--rows", type=int, default=100_000)
    ap.add_argument("--small-rows", type=int, default=20_000)
    ap.add_argument("--repeat", type=int, default=1, help="more interleaved local/Dask pairs at --rows")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--rows-per-part", type=int, default=10_000)
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
        print(json.dumps({"local": child_local, "dask": child_dask, "committer": child_committer}[args.child](args)))
        return
    skip = set(filter(None, args.skip.split(",")))
    print(f"# scale benchmark: model {args.model} of {args.warehouse}; {os.cpu_count()} cores")
    results, pairs = {}, []
    print(f"load average before: {loadavg()}")
    for n in (args.small_rows, args.rows):
        source_parquet(n)
        if "local" not in skip:
            results[("local", n)] = run_child("local", args, n=n)
        if "dask" not in skip:
            results[("dask", n)] = run_child("dask", args, n=n)
    if ("local", args.rows) in results and ("dask", args.rows) in results:
        pairs.append((results[("local", args.rows)], results[("dask", args.rows)]))
        for _ in range(args.repeat):          # more interleaved pairs at the large size
            pairs.append((run_child("local", args, n=args.rows), run_child("dask", args, n=args.rows)))
    if "dask" not in skip:
        results[("committer", args.rows)] = run_child("committer", args, n=args.rows)
    print(f"load average after: {loadavg()}")
    print("\n| engine | rows | rows/s (run) | run s | process wall s | committer peak RSS MiB | worker peak RSS MiB | "
          "start s | plan + snapshot s | stage s | fold s | first part back s |")
    print("|---|---:|---:|---:|---:|---:|---|---:|---:|---:|---:|---:|")
    for (kind, n), r in results.items():
        eng = r.get("engine") or {}
        workers = ", ".join(f"{v:.0f}" for v in (eng.get("worker_peak_rss_mib") or {}).values()) or "-"
        label = {"local": f"1 process x {args.threads} threads", "dask": f"Dask {args.workers} workers x 1 thread",
                 "committer": "committer alone (stub model, parts in-process)"}[kind]
        print(f"| {label} | {n:,} | {r['rows_per_s']:,.0f} | {r['seconds']:.1f} | {r['wall_s']:.1f} | "
              f"{r['committer_rss_mib']:.0f} | {workers} | {eng.get('start_seconds', '-')} | {eng.get('plan_seconds', '-')} | "
              f"{eng.get('stage_seconds', '-')} | {eng.get('fold_seconds', '-')} | {eng.get('first_part_seconds', '-')} |")
    if pairs:
        import statistics

        def fmt(xs):
            return f"{', '.join(f'{x:.2f}' for x in xs)} -> median {statistics.median(xs):.2f}x"

        run_ratios = [d["rows_per_s"] / max(lo["rows_per_s"], 1e-9) for lo, d in pairs]
        # the workers import torch and load the model inside the Dask run; the one process before its run: add it
        loaded_ratios = [(lo["seconds"] + lo["load_s"]) / max(d["seconds"], 1e-9) for lo, d in pairs]
        wall_ratios = [lo["wall_s"] / max(d["wall_s"], 1e-9) for lo, d in pairs]
        print(f"\nDask {args.workers}x1 / one process x{args.threads} at {args.rows:,} rows, {len(pairs)} interleaved "
              f"pair(s) of this run (target >= 0.90x):\n"
              f"  scoring run (claim to audit row) rows/s: {fmt(run_ratios)}\n"
              f"  torch import + model load + scoring run (worker start-up counts on both sides): {fmt(loaded_ratios)}\n"
              f"  whole process (Python, Prefect's temporary server, cluster start included): {fmt(wall_ratios)}")
        for i, (lo, d) in enumerate(pairs):
            print(f"  pair {i}: one process {lo['rows_per_s']:,.0f} rows/s ({lo['load_s']:.1f} s load + {lo['seconds']:.1f} s "
                  f"run, {lo['wall_s']:.1f} s wall); Dask {d['rows_per_s']:,.0f} rows/s ({d['seconds']:.1f} s run, "
                  f"{d['wall_s']:.1f} s wall)")
    if ("dask", args.rows) in results:
        big = results[("dask", args.rows)]
        eng = big["engine"]
        alone = results.get(("committer", args.rows), {}).get("engine")
        for title, serial_eng in (("as measured in the Dask run (the committer shared the 2 cores with the workers' "
                                   "torch import and model load)", None),
                                  ("with the committer's costs measured alone (committer row above), as on a cluster "
                                   "whose workers run on other machines", alone)):
            if title.startswith("with") and not alone:
                continue
            src = serial_eng or eng
            terms, projection = amdahl(eng, big["rows"], big["seconds"], args.workers, serial_eng)
            print(f"\nAmdahl projection from the {args.rows:,}-row Dask run, {title}: committer serial "
                  f"{terms['serial_s']:.2f} s per {args.rows:,} rows (start {src['start_seconds']} + plan/snapshot "
                  f"{src['plan_seconds']} + fold {src['fold_seconds']} s, measured at {src['rows_staged']:,} rows), staging "
                  f"{terms['stage_s']:.2f} s (overlapped), scoring {terms['score_worker_s']:.1f} worker-s "
                  f"({terms['per_worker_rows_per_s']:,.0f} rows/s per worker), fixed start-up {terms['fixed_s']:.1f} s; "
                  f"the committer alone could carry {terms['committer_rows_per_s']:,.0f} rows/s:")
            print(f"| workers | rows/s at {args.rows:,} rows | rows/s at 100,000,000 rows | committer busy at {args.rows:,} "
                  f"| committer busy, long run | what binds |")
            print("|---:|---:|---:|---:|---:|---|")
            for w, small, large, busy_n, busy_long, binds in projection:
                print(f"| {w} | {small:,.0f} | {large:,.0f} | {busy_n:.0f} % | {busy_long:.0f} % | {binds} |")
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
