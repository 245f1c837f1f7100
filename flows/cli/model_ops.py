"""``reviewflow models alias ...`` and ``reviewflow models compare``: named versions and side-by-side checks."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Optional

import typer

from flows.cli.common import WarehouseOption, echo_kv, warehouse_from


def comparison(wh, a: str, b: str, table: str, db: Path | None, label_col: str | None, id_col: str, text_col: str,
               limit: int | None, top: int = 10) -> dict:
    """Models ``a`` and ``b`` (versions or aliases) side by side on ``table`` (nothing written)."""
    from pipeline.score.shadow import compare_models
    from pipeline.serve.predictor import load_predictor

    db_path = db if db is not None else wh.duckdb_path
    pa_, pb_ = (load_predictor(wh, m, device="cpu") for m in (a, b))
    return compare_models(db_path, table, pa_, pb_, id_col=id_col, text_col=text_col, label_col=label_col,
                          limit=limit, top=top)


def print_comparison(rep: dict) -> None:
    a, b = rep["models"]

    def pct(v):
        return "-" if v is None else f"{100 * v:.2f} %"

    echo_kv(f"{a}  vs  {b}  on {rep['table']}", {
        "rows compared": f"{rep['rows_both_scored']} of {rep['rows']} with text",
        "label agreement": pct(rep["agreement"]),
        "accuracy A": pct(rep["accuracy_a"]) + (f" on {rep['labelled']} labelled rows" if rep["labelled"] else ""),
        "accuracy B": pct(rep["accuracy_b"]),
    })
    if rep["disagreements"]:
        typer.echo("  largest disagreements (score A, score B, text):")
        for d in rep["disagreements"]:
            typer.echo(f"    {str(d['id'])[:16]:<16} {d['score_a']:.3f} {d['score_b']:.3f}  {d['text'][:80]!r}")


def register(models: typer.Typer) -> None:
    _alias_commands(models)
    _promote_and_compare(models)


def _alias_commands(models: typer.Typer) -> None:
    alias = typer.Typer(help="Named aliases for versions: champion, challenger, or any name.\n\n\b\nExamples:\n"
                             "  reviewflow models alias set challenger v0003-default-20260101120000\n"
                             "  reviewflow models alias list\n"
                             "  reviewflow score --table reviews --shadow challenger", no_args_is_help=True)
    models.add_typer(alias, name="alias")

    @alias.command("set")
    def alias_set(name: Annotated[str, typer.Argument(help="alias name, e.g. challenger")],
                  version: Annotated[str, typer.Argument(help="a version, or another alias")],
                  reason: Annotated[str, typer.Option("--reason", help="why (kept in models/aliases.jsonl)")] = "",
                  warehouse: WarehouseOption = None) -> None:
        """Point alias NAME at VERSION once VERSION verifies (every registered file against its SHA-256, its config;
        a damaged or altered version is refused, exit 2, nothing written). NAME: 1-64 ASCII letters, digits, '_',
        '-', '.', not `champion` or a version-like name; `champion` moves by promotion only:
        `reviewflow models promote`."""
        from pipeline import registry
        from pipeline.registry import aliases

        wh = warehouse_from(warehouse, reads=("models",))
        record = aliases.set_alias(wh, name, registry.get(wh, version).version, reason)
        typer.echo(f"{record['alias']} -> {record['version']}")

    @alias.command("list")
    def alias_list(warehouse: WarehouseOption = None) -> None:
        """Every alias and its version (champion first)."""
        from pipeline import registry
        from pipeline.registry import aliases

        wh = warehouse_from(warehouse, reads=("models",))
        champ = registry.champion(wh)
        rows = ({"champion": champ} if champ else {}) | aliases.list_aliases(wh)
        if not rows:
            typer.echo("no aliases yet")
        for name, version in rows.items():
            typer.echo(f"  {name:<20} {version}")

    @alias.command("rm")
    def alias_rm(name: Annotated[str, typer.Argument(help="alias name")], warehouse: WarehouseOption = None) -> None:
        """Remove alias NAME (the version stays)."""
        from pipeline.registry import aliases

        aliases.remove_alias(warehouse_from(warehouse, reads=("models",)), name)
        typer.echo(f"removed alias {name}")


def _promote_and_compare(models: typer.Typer) -> None:
    @models.command("promote")
    def promote_cmd(version: str = typer.Argument(..., help="the version (or alias) to make champion"),
                    compare_table: Optional[str] = typer.Option(None, "--compare-table", help="first compare it with "
                                                               "the champion on this DuckDB table; the comparison "
                                                               "is logged with the promotion"),
                    db: Optional[Path] = typer.Option(None, "--db", help="DuckDB file of --compare-table"),
                    label_col: Optional[str] = typer.Option(None, "--label-col", help="labels in --compare-table"),
                    warehouse: WarehouseOption = None) -> None:
        """Make VERSION the serving champion (scoring, predict and sql use it) and the champion of its dataset,
        whatever its accuracy: the explicit override of the automatic rule (a new version replaces the
        champion of its own dataset only when it is more accurate on the same evaluation data).
        With --compare-table, the side-by-side comparison (`reviewflow models compare`) is printed and kept in
        models/promotions.jsonl with the decision. VERSION must verify first (every registered file against its
        SHA-256, its config): a damaged or altered version is refused (exit 2) and no pointer moves."""
        from pipeline.train import promotion
        from pipeline import registry

        wh = warehouse_from(warehouse, reads=("models",) + (("lake",) if compare_table else ()))
        before = registry.champion(wh)
        version = registry.get(wh, version).version
        compared = None
        if compare_table and before:
            compared = comparison(wh, before, version, compare_table, db, label_col, "review_id", "text", None)
            print_comparison(compared)
        promotion.promote(wh, version, reason="explicit: reviewflow models promote", comparison=compared)
        typer.echo(f"champion: {before or 'none'} -> {version}")

    @models.command("compare")
    def compare_cmd(
        a: Annotated[str, typer.Argument(help="model A: version or alias (e.g. champion)")],
        b: Annotated[str, typer.Argument(help="model B: version or alias (e.g. challenger)")],
        table: Annotated[str, typer.Option("--table", "-t", help="DuckDB table whose texts both models score.")],
        db: Annotated[Optional[Path], typer.Option("--db", help="DuckDB file. Default: <warehouse>/reviews.duckdb")] = None,
        label_col: Annotated[Optional[str], typer.Option("--label-col", help="Column with true labels (0/1, pos/neg, positive/negative): accuracy of each.")] = None,
        id_col: Annotated[str, typer.Option("--id-col")] = "review_id",
        text_col: Annotated[str, typer.Option("--text-col")] = "text",
        limit: Annotated[Optional[int], typer.Option("--limit", min=1, help="Only the first N rows by id.")] = None,
        as_json: Annotated[bool, typer.Option("--json", help="Print the report as JSON.")] = False,
        warehouse: WarehouseOption = None,
    ) -> None:
        """Score TABLE's texts with models A and B (nothing is written) and compare: label agreement, each
        model's accuracy where TABLE has labels, and the rows where their scores differ most.

        \b
        Examples:
          reviewflow models compare champion challenger --table reviews --label-col label
          reviewflow models promote challenger --compare-table reviews --label-col label
        """
        wh = warehouse_from(warehouse, reads=("models", "lake"))
        rep = comparison(wh, a, b, table, db, label_col, id_col, text_col, limit)
        typer.echo(json.dumps(rep, indent=2, default=str)) if as_json else print_comparison(rep)
