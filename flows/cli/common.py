"""Options and helpers shared by every CLI command."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from pipeline.core.config import Warehouse

WarehouseOption = Annotated[
    Optional[Path],
    typer.Option(
        "--warehouse",
        "-w",
        help="Warehouse root (lake, shards, models, reviews.duckdb). Default: $REVIEWFLOW_WAREHOUSE, else ./warehouse",
        show_default=False,
    ),
]


def warehouse_from(option: Path | None) -> Warehouse:
    """The flag if given, else ``$REVIEWFLOW_WAREHOUSE`` (read by ``pipeline.core.settings``), else ./warehouse."""
    return Warehouse.from_env(option).ensure()


def echo_kv(title: str, pairs: dict) -> None:
    """Print a small aligned key/value block."""
    typer.secho(title, bold=True)
    width = max((len(str(k)) for k in pairs), default=0)
    for k, v in pairs.items():
        typer.echo(f"  {str(k).ljust(width)}  {v}")
