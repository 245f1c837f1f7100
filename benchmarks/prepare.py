"""Benchmark: reviewflow prepare vs the baseline's pure-Python preprocessing, then 1M-review scale.

    .venv/bin/python benchmarks/prepare.py --data ../shared/data/imdb/train.parquet
    .venv/bin/python benchmarks/prepare.py --rows 5000 --skip-scale          # quick

Each phase runs in its own subprocess (imports excluded from the timing) so its peak RSS is clean.
(1) baseline: lowercase, ``''.join(c for c in text if c not in punctuation)``, ``.split()``, a
``Counter`` vocabulary sorted by count, list-comprehension id mapping, a Python pad loop to 512
front-padded with zeros. (2) ours: ``prepare()`` into a temp warehouse with the baseline's rule
(strip_html=False, max_len=512, pad_side=left, truncate=head, min_freq=1, val_fraction=0).
Both must give the same tokens for a sample of reviews (compared as token strings: the baseline breaks
count ties by first occurrence, ours by token string). (3) scale: train + unsup replicated to
``--scale`` reviews in a temp lake (written in parts by the lake's own writer), prepared in a subprocess.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import IMDB, SOURCE_COLUMNS, sample as seeded_sample, write_lake
from pipeline.core.config import Warehouse


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def cpu_seconds() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


# ------------------------------------------------------------------------------------------ phases
def phase_baseline(args) -> dict:
    import string
    from collections import Counter

    import numpy as np
    import pyarrow.parquet as pq

    # the same seeded sample as the lake (IMDb files are sorted by label: the first N rows hold one class)
    table = seeded_sample(pq.read_table(args.data, columns=SOURCE_COLUMNS), args.rows or None).select(["review_id", "text"])
    texts = table.column("text").to_pylist()
    rids = table.column("review_id").to_pylist()
    del table
    t0, c0 = time.perf_counter(), cpu_seconds()
    punctuation = string.punctuation
    reviews = [r.lower() for r in texts]
    all_text = ["".join(c for c in r if c not in punctuation) for r in reviews]
    words = [w for r in all_text for w in r.split()]
    counts = Counter(words)
    vocab = sorted(counts, key=counts.get, reverse=True)
    vocab_to_int = {w: i for i, w in enumerate(vocab, 1)}
    reviews_ints = [[vocab_to_int[w] for w in r.split()] for r in all_text]
    seq_len = 512
    features = np.zeros((len(reviews_ints), seq_len), dtype=int)
    for i, row in enumerate(reviews_ints):
        if len(row) != 0:
            features[i, -len(row):] = np.array(row)[:seq_len]
    seconds, cpu = time.perf_counter() - t0, cpu_seconds() - c0
    int_to_vocab = {i: w for w, i in vocab_to_int.items()}
    sample = {}
    for i in _sample_rows(len(texts), args.sample):
        sample[rids[i]] = [int_to_vocab[int(x)] for x in features[i] if x != 0]
    return {"seconds": seconds, "cpu": cpu, "rows": len(texts), "vocab": len(vocab) + 1, "rss_mib": peak_rss_mib(),
            "sample": sample}


def _sample_rows(n: int, k: int) -> list[int]:
    import numpy as np

    return sorted(np.random.default_rng(0).choice(n, size=min(k, n), replace=False).tolist())


def phase_ours(args) -> dict:
    import numpy as np

    import pipeline.core.plots  # noqa: F401  (imports excluded from the timing)
    from pipeline.core.config import Warehouse
    from pipeline.train.loader import load_split
    from pipeline.prepare.config import PrepareConfig
    from pipeline.prepare.job import prepare
    from pipeline.prepare.vocab import read_vocab

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot  # noqa: F401

    wh = Warehouse(Path(args.warehouse))
    cfg = PrepareConfig(max_len=512, min_freq=1, max_vocab=10**9, val_fraction=0.0, truncate="head",
                        pad_side="left", strip_html=False, include_unsup=args.include_unsup)
    t0, c0 = time.perf_counter(), cpu_seconds()
    res = prepare(wh, args.dataset, cfg, workers=args.workers)
    seconds, cpu = time.perf_counter() - t0, cpu_seconds() - c0
    out = {"seconds": seconds, "cpu": cpu, "rows": int(sum(res.counts.values())), "vocab": res.manifest["vocab_size"],
           "rss_mib": peak_rss_mib(), "timings": res.manifest["timings_s"], "prep_dir": str(res.prep_dir)}
    if args.sample:
        vocab = np.array(read_vocab(res.prep_dir / "vocab.txt"), dtype=object)
        data = load_split(res.prep_dir, "train")
        want = set(args.sample_ids or [])
        sample = {}
        for i, rid in enumerate(data.review_ids):
            if rid in want:
                row = data.ids[i][data.ids.shape[1] - data.lengths[i]:]
                sample[rid] = vocab[row].tolist()
        out["sample"] = sample
    return out


def run_phase(phase: str, args, extra: list[str], sample_ids=None) -> dict:
    with tempfile.NamedTemporaryFile("w+", suffix=".json", delete=False) as fh:
        out = fh.name
    cmd = [sys.executable, __file__, "--phase", phase, "--out", out, "--data", str(args.data),
           "--sample", str(args.sample), "--rows", str(args.rows or 0), "--workers", str(args.workers or 0)] + extra
    if sample_ids:
        ids_file = out + ".ids"
        Path(ids_file).write_text(json.dumps(sample_ids))
        cmd += ["--sample-ids-file", ids_file]
    subprocess.run(cmd, check=True)
    return json.loads(Path(out).read_text())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=IMDB / "train.parquet")
    ap.add_argument("--unsup", type=Path, default=None, help="default: unsup.parquet next to --data")
    ap.add_argument("--rows", type=int, default=0, help="use a seeded sample of N reviews (0 = all)")
    ap.add_argument("--scale", type=int, default=1_000_000)
    ap.add_argument("--skip-scale", action="store_true")
    ap.add_argument("--sample", type=int, default=500, help="reviews whose token ids are compared")
    ap.add_argument("--workers", type=int, default=0, help="prepare threads (0 = default: 2)")
    ap.add_argument("--phase", choices=["baseline", "ours"], help=argparse.SUPPRESS)
    ap.add_argument("--out", help=argparse.SUPPRESS)
    ap.add_argument("--warehouse", help=argparse.SUPPRESS)
    ap.add_argument("--dataset", default="bench", help=argparse.SUPPRESS)
    ap.add_argument("--include-unsup", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--sample-ids-file", help=argparse.SUPPRESS)
    args = ap.parse_args()
    args.workers = args.workers or None
    args.sample_ids = json.loads(Path(args.sample_ids_file).read_text()) if args.sample_ids_file else None

    if args.phase:
        res = phase_baseline(args) if args.phase == "baseline" else phase_ours(args)
        Path(args.out).write_text(json.dumps(res))
        return

    load0 = " ".join(f"{x:.2f}" for x in os.getloadavg())
    tmp = Path(tempfile.mkdtemp(prefix="reviewflow-bench-"))
    try:
        wh = tmp / "wh"
        n = write_lake(Warehouse(wh), "bench", [args.data], rows=args.rows or None)
        base = run_phase("baseline", args, [])
        ours = run_phase("ours", args, ["--warehouse", str(wh), "--dataset", "bench"],
                         sample_ids=list(base["sample"]))
        same = sum(base["sample"][k] == ours["sample"].get(k) for k in base["sample"])
        ratio = base["seconds"] / ours["seconds"]
        print(f"\n25k check: {same}/{len(base['sample'])} sampled reviews give identical tokens; "
              f"vocab sizes (incl. padding id 0): baseline {base['vocab']}, ours {ours['vocab'] - 1} + <unk>")
        print(f"ours timings: {ours['timings']}")
        rows = [("baseline (pure Python)", n, base["seconds"], base["cpu"], base["rss_mib"]),
                ("reviewflow prepare", n, ours["seconds"], ours["cpu"], ours["rss_mib"])]
        if not args.skip_scale:
            unsup = args.unsup or args.data.with_name("unsup.parquet")
            wh2 = tmp / "wh-scale"
            t0 = time.perf_counter()
            total = write_lake(Warehouse(wh2), "bench", [args.data, unsup], total=args.scale)
            print(f"wrote the {total:,}-review lake in {time.perf_counter() - t0:.1f} s")
            big = run_phase("ours", argparse.Namespace(**{**vars(args), "sample": 0}),
                            ["--warehouse", str(wh2), "--dataset", "bench", "--include-unsup"])
            rows.append((f"reviewflow prepare, {total:,} reviews", total, big["seconds"], big["cpu"], big["rss_mib"]))
            print(f"scale timings: {big['timings']}")
        print()
        print(f"load average before the run: {load0}")
        print("| run | reviews | wall s | CPU s | reviews/s (wall) | peak RSS (MiB) |")
        print("|---|---:|---:|---:|---:|---:|")
        for name, rws, sec, cpu, rss in rows:
            print(f"| {name} | {rws:,} | {sec:.2f} | {cpu:.2f} | {rws / sec:,.0f} | {rss:,.0f} |")
        print(f"\nspeed-up vs baseline at {n:,} reviews: **{ratio:.1f}x** by wall time, "
              f"{base['cpu'] / ours['cpu']:.1f}x by CPU time (target >= 5x); "
              f"token check {same}/{len(base['sample'])} identical")
        if not args.skip_scale:
            r25, r1m = n / ours["seconds"], rows[-1][1] / rows[-1][2]
            c25, c1m = n / ours["cpu"], rows[-1][1] / rows[-1][3]
            print(f"scale: {r1m / r25:.2f}x the {n:,}-review throughput by wall time, {c1m / c25:.2f}x by CPU time "
                  f"(target >= 1.0), peak RSS {rows[-1][4]:,.0f} MiB (target <= 2048)")
        if same != len(base["sample"]):
            sys.exit(1)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
