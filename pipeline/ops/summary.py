"""The main job's closing summary: what ran, what it produced, and SQL to look at it."""

from __future__ import annotations

import shlex


def example_sql(table: str) -> list[str]:
    t = f'"{table}"'
    return [
        f"SELECT sentiment_label, count(*) AS reviews, round(avg(sentiment_score), 3) AS mean_score "
        f"FROM {t} GROUP BY 1 ORDER BY 1",
        f"SELECT round(avg(CASE WHEN (sentiment_score >= 0.5) = (label = 1) THEN 1 ELSE 0 END), 4) "
        f"AS agreement_with_label FROM {t} WHERE label IS NOT NULL AND sentiment_label IS NOT NULL",
        f"SELECT review_id, sentiment_score, left(text, 80) AS text FROM {t} "
        f"ORDER BY sentiment_score DESC LIMIT 5",
        "SELECT sentiment('an absolute masterpiece, I loved it') AS score",
    ]


def build_summary(*, source: str, dataset: str, warehouse: str, db_path: str, table: str, scored_what: str,
                  ingest: dict, prepare: dict, train: dict, score: dict, seconds: float | None = None) -> dict:
    """Flatten the step reports into one small JSON-able dict (the flow's return value)."""
    counts = prepare.get("counts") or {}
    return {
        "source": source,
        "dataset": dataset,
        "warehouse": warehouse,
        "rows_added": ingest.get("rows_added"),
        "duplicates": ingest.get("duplicates"),
        "prep_id": prepare.get("prep_id"),
        "prep_cached": prepare.get("cached"),
        "split_rows": {k: v for k, v in counts.items() if isinstance(v, int)} if isinstance(counts, dict) else counts,
        "model_version": train.get("version"),
        "val_accuracy": train.get("val_accuracy"),
        "train_cached": bool(train.get("skipped", False)),
        "promoted": train.get("promoted"),
        "champion": train.get("champion"),
        "db_path": db_path,
        "table": table,
        "scored_what": scored_what,
        "rows_scored": score.get("rows_scored"),
        "rows_up_to_date": score.get("rows_up_to_date"),
        "label_counts": score.get("label_counts"),
        "seconds": round(seconds, 1) if seconds is not None else None,
        "example_sql": example_sql(table),
    }


def _fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:.4f}"
    return "—" if v is None else str(v)


def _rows(s: dict) -> list[tuple[str, str]]:
    return [
        ("source", s["source"]), ("dataset", s["dataset"]),
        ("rows added / duplicates skipped", f"{_fmt(s['rows_added'])} / {_fmt(s['duplicates'])}"),
        ("prepared shards", f"{_fmt(s['prep_id'])} ({'cached' if s['prep_cached'] else 'built'})"),
        ("rows per split", ", ".join(f"{k} {v}" for k, v in (s["split_rows"] or {}).items()) or "—"),
        ("model version", f"{_fmt(s['model_version'])}" + (" (already trained: reused)" if s.get("train_cached") else "")),
        ("validation accuracy", _fmt(s["val_accuracy"])),
        ("champion", f"{_fmt(s['champion'])} (promoted this run: {_fmt(s['promoted'])})"),
        ("scored", s["scored_what"]),
        ("rows scored now / already up to date",
         f"{_fmt(s['rows_scored'])} / {_fmt(s['rows_up_to_date'])}"),
        ("labels (this run)", ", ".join(f"{k} {v}" for k, v in (s["label_counts"] or {}).items()) or "—"),
        ("DuckDB file", f"{s['db_path']}  (table {s['table']})"),
        ("wall time", f"{s['seconds']} s" if s.get("seconds") is not None else "—"),
    ]


def summary_markdown(s: dict) -> str:
    lines = ["# reviewflow run summary", "", "| | |", "|---|---|"]
    lines += [f"| {k} | {v} |" for k, v in _rows(s)]
    lines += ["", "## Query it", "", "```sql"] + [q + ";" for q in s["example_sql"]] + ["```", "",
              f"From the shell: `reviewflow sql {shlex.quote(s['example_sql'][0])}`"]
    return "\n".join(lines) + "\n"


def summary_text(s: dict) -> str:
    """The same, for the terminal."""
    rows = _rows(s)
    width = max(len(k) for k, _ in rows)
    lines = ["reviewflow run summary", ""] + [f"  {k.ljust(width)}  {v}" for k, v in rows]
    lines += ["", "Query it:"] + [f"  reviewflow sql {shlex.quote(q)}" for q in s["example_sql"]]
    return "\n".join(lines) + "\n"
