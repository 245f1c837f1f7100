"""``reviewflow inbox status|retry``: what the inbox holds, and a failed file sent back for another pass.

The inbox itself (folders, ledger, atomic moves) is ``pipeline/ops/inbox.py``; these commands only read it
and move one file, so they need neither Prefect nor a server.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from typing import Annotated

import typer

from flows.cli.common import WarehouseOption, warehouse_from


def register(app: typer.Typer) -> None:
    inbox = typer.Typer(help="The inbox of `reviewflow serve`: files waiting, processed and failed.\n\n"
                             "\b\nExamples:\n  reviewflow inbox status\n  reviewflow inbox status --json\n"
                             "  reviewflow inbox retry reviews.csv      # after fixing what .error.txt says",
                        no_args_is_help=True)
    app.add_typer(inbox, name="inbox")
    inbox.command("status")(status)
    inbox.command("retry")(retry)


def _size(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


def _age(s: float) -> str:
    if s < 120:
        return f"{s:.0f} s"
    if s < 7200:
        return f"{s / 60:.0f} min"
    return f"{s / 3600:.1f} h" if s < 172800 else f"{s / 86400:.1f} d"


def status(
    processed: Annotated[int, typer.Option(help="How many of the newest processed files to list (all: -1).")] = 10,
    as_json: Annotated[bool, typer.Option("--json", help="Every file as JSON lines, for scripts.")] = False,
    warehouse: WarehouseOption = None,
) -> None:
    """List the inbox's files: waiting, being processed, processed and failed (with why), each with its size
    and age (since it was dropped, claimed or moved on)."""
    from pipeline.ops import inbox as box

    wh = warehouse_from(warehouse, reads=())
    files = box.listing(wh)
    if as_json:
        for f in files:
            typer.echo(json.dumps(asdict(f)))
        return
    counts = box.status(wh)
    typer.echo(f"inbox {wh.inbox}: {counts['waiting']} waiting, {counts['processing']} processing, "
               f"{counts['processed']} processed, {counts['failed']} failed")
    done = [f for f in files if f.folder == box.PROCESSED]
    shown = set(map(id, done[-processed:] if processed >= 0 else done)) if processed else set()
    rows = [f for f in files if f.folder != box.PROCESSED or id(f) in shown]
    if not rows:
        typer.echo("  (nothing to list)")
    for f in rows:
        side = " +sidecar" if f.sidecar else ""
        typer.echo(f"  {f.folder:<10} {f.name:<40} {_size(f.size):>10} {_age(f.age_s):>8}{side}")
        if f.reason:
            typer.secho(f"  {'':<10} why: {f.reason}", fg=typer.colors.RED)
    if counts["failed"]:
        typer.echo("fix a failed file (its .error.txt in inbox/failed/ says what), then `reviewflow inbox retry NAME`")


def retry(
    file: Annotated[str, typer.Argument(help="A failed file: its name (reviews.csv) or its path in inbox/failed/.")],
    warehouse: WarehouseOption = None,
) -> None:
    """Move a failed file (and its sidecar) back into the inbox, so the next pass takes it again.

    \b
    The move is atomic and never overwrites: it is refused when a file of the same name is waiting or
    being processed, and for anything that is not a review file in inbox/failed/. The old .error.txt is
    kept in inbox/failed/.retried/."""
    from pipeline.ops import inbox as box

    wh = warehouse_from(warehouse, reads=())
    back = box.retry(wh, file)
    typer.echo(f"{file} -> {back}: the next inbox pass takes it (within seconds under `reviewflow serve`)")
