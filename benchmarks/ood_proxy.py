"""The out-of-domain proxy: every model on single sentences, short spans and agreement-labelled sentences.

    python benchmarks/ood_proxy.py --warehouse warehouse                      # the champion, cap 5000 per set
    python benchmarks/ood_proxy.py --warehouse warehouse --models champion,v0002-fast-... --cap 2000

The sets (:mod:`pipeline.train.proxy`, which documents them and the agreement rule) are cut from our own
data only: ``reviews`` / ``sentences`` / ``spans`` from the labelled reviews of ``--source`` whose ids are in
the validation set of the models (``models/<v>/eval_set.parquet``; with several models, the reviews in all
their validation sets, so no model has trained on a proxy review; ``--val-ids V`` takes one version's), and
``unsup_agree`` from the unlabelled reviews of ``--unsup``, labelled by the agreement of ``--teacher`` (on
the whole review) and a word-polarity lexicon fitted on the other labelled reviews (on the sentence).

One row per model per set: rows, accuracy (unscored texts count as wrong), ECE (15 bins, scored rows),
mean confidence, share of confident scores (p > 0.9 or < 0.1) and their accuracy. The JSON
(``--out``, default ``benchmarks/out/ood_proxy.json``) adds the per-length-band figures and how the sets
were built. Scoring is on CPU, each version at the precision its registration chose.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from common import IMDB, ROOT

from pipeline import registry
from pipeline.core.config import Warehouse
from pipeline.serve.predictor import load_predictor
from pipeline.train import proxy

COLUMNS = ("n", "accuracy", "ece", "mean_confidence", "confident_share", "confident_accuracy")


def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--warehouse", type=Path, required=True)
    ap.add_argument("--models", default="champion", help="comma-separated versions, aliases or 'champion'")
    ap.add_argument("--source", type=Path, default=IMDB / "train.parquet", help="labelled reviews (parquet)")
    ap.add_argument("--unsup", type=Path, default=IMDB / "unsup.parquet", help="unlabelled reviews (parquet)")
    ap.add_argument("--val-ids", default=None, help="the version whose eval_set.parquet picks the validation "
                                                    "reviews (default: those in every listed model's)")
    ap.add_argument("--teacher", default=None, help="the model labelling unsup_agree (default: the first model)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--cap", type=int, default=proxy.DEFAULT_CAP, help="rows per set at most")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "out" / "ood_proxy.json")
    return ap.parse_args(argv)


def validation_ids(wh: Warehouse, versions: list[str], one: str | None) -> pa.Array:
    """The review ids in ``one``'s validation set, or in every listed version's."""
    ids = None
    for v in ([one] if one else versions):
        these = proxy.validation_ids(wh, v).column("review_id").combine_chunks()
        ids = these if ids is None else ids.filter(pc.is_in(ids, value_set=these))
    return ids


def check_rule(labelled: pa.Table, val_ids: pa.Array, teacher, sets: proxy.ProxySets, seed: int) -> dict:
    """The agreement rule run on the *labelled* validation reviews as if unlabelled: the share of the
    sentences it keeps whose label is the review's true one (its label precision, where truth is known)."""
    val = proxy.validation_reviews(labelled, val_ids)
    judge = proxy.default_judge(labelled, val)
    rule = proxy.AgreementRule(**sets.notes["rule"])
    kept, counts = proxy.agreement_set(val, teacher, judge, rule, cap=None, seed=seed)
    truth = dict(zip(val.column("review_id").to_pylist(), val.column("label").to_pylist()))
    right = sum(truth[r] == y for r, y in zip(kept.column("review_id").to_pylist(), kept.column("label").to_pylist()))
    return {**counts, "kept": kept.num_rows, "label_precision": right / kept.num_rows if kept.num_rows else None}


def main(argv=None) -> dict:
    args = parse_args(argv)
    wh = Warehouse(args.warehouse.resolve())
    versions = [registry.get(wh, m.strip()).version for m in args.models.split(",") if m.strip()]
    teacher_version = registry.get(wh, args.teacher).version if args.teacher else versions[0]
    started = time.perf_counter()
    labelled = pq.read_table(args.source, columns=["review_id", "text", "label"])
    unlabelled = pq.read_table(args.unsup, columns=["review_id", "text"])
    val_ids = validation_ids(wh, versions, args.val_ids)
    teacher = load_predictor(wh, teacher_version)
    sets = proxy.build_proxy_sets(labelled, val_ids, unlabelled=unlabelled, teacher=teacher, cap=args.cap,
                                  seed=args.seed)
    built = time.perf_counter() - started
    rule_check = check_rule(labelled, val_ids, teacher, sets, args.seed)
    results = {v: proxy.evaluate(load_predictor(wh, v), sets) for v in versions}
    report = {"command": " ".join([Path(sys.argv[0]).name, *(argv if argv is not None else sys.argv[1:])]),
              "host": {"node": platform.node(), "cpus": os.cpu_count(), "python": platform.python_version()},
              "warehouse": str(wh.root), "teacher": teacher_version, "sets": sets.notes,
              "sizes": {k: t.num_rows for k, t in sets.items()}, "rule_check": rule_check, "seconds": {"build": round(built, 1),
              "total": round(time.perf_counter() - started, 1)}, "results": results}
    print_table(results, teacher_version)
    print(f"\nagreement rule on labelled validation reviews (truth known): {rule_check['kept']} sentences kept, "
          f"{100 * rule_check['label_precision']:.1f}% carry their review's true label")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"\nsets built in {built:.1f} s, all in {report['seconds']['total']:.1f} s; wrote {args.out}")
    return report


def _fmt(key: str, value) -> str:
    if value is None:
        return "-"
    return str(value) if key == "n" else f"{100 * value:.1f}"


def print_table(results: dict, teacher: str) -> None:
    print("| model | set | " + " | ".join(COLUMNS) + " |")
    print("|---|---|" + "---:|" * len(COLUMNS))
    for version, per_set in results.items():
        for name, m in per_set.items():
            note = " (teacher)" if name == "unsup_agree" and version == teacher else ""
            print(f"| {version} | {name}{note} | " + " | ".join(_fmt(k, m[k]) for k in COLUMNS) + " |")
    print("\n(accuracy, ECE, confidence and shares in %; per length band in the JSON)")


if __name__ == "__main__":
    main()
