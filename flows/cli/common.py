"""Options and helpers shared by every CLI command."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Annotated, Iterable, Iterator, Optional

import typer

from pipeline.core import objectstore
from pipeline.core.config import Warehouse
from pipeline.core.errors import InputError

WarehouseOption = Annotated[
    Optional[str],      # a str, not a Path: Path("s3://b/p") would collapse the "//"
    typer.Option(
        "--warehouse",
        "-w",
        help="Warehouse root (lake, shards, models, reviews.duckdb): a folder, or s3://bucket/prefix worked on "
             "through a local mirror ($REVIEWFLOW_CACHE, else ~/.cache/reviewflow). "
             "Default: $REVIEWFLOW_WAREHOUSE, else ./warehouse",
        show_default=False,
    ),
]

CACHE_ENV = "REVIEWFLOW_CACHE"


def warehouse_location(option: str | None) -> str | None:
    """The warehouse as given: the flag, else ``$REVIEWFLOW_WAREHOUSE`` (read raw here, so an ``s3://`` URL keeps
    its ``//``), else None (./warehouse)."""
    return option if option is not None else (os.environ.get("REVIEWFLOW_WAREHOUSE") or None)


def remote_store(option: str | None) -> str | None:
    """The warehouse's object-store URL, or None for a local warehouse."""
    location = warehouse_location(option)
    return location if objectstore.is_remote(location) else None


def remote_scratch(option: str | None) -> str | None:
    """``<store>/scratch`` for a warehouse on an object store (scoring partitions where every worker sees them),
    else None (the local default)."""
    location = warehouse_location(option)
    return f"{location.rstrip('/')}/scratch" if objectstore.is_remote(location) else None


def warehouse_from(option: str | None, reads: Iterable[str] = objectstore.SYNCED, *,
                   long_running: bool = False) -> Warehouse:
    """The flag if given, else ``$REVIEWFLOW_WAREHOUSE`` (read by ``pipeline.core.settings``), else ./warehouse.

    An object store URL (``s3://bucket/prefix``) gives the Warehouse of its local mirror: ``reads`` (the folders
    this command reads, see :data:`pipeline.core.objectstore.SYNCED`) are pulled now, and everything the command
    wrote is pushed when it returns successfully (nothing when it fails). ``long_running`` commands (``serve``)
    never return to push, so they are refused one."""
    location = warehouse_location(option)
    if not objectstore.is_remote(location):
        return Warehouse.from_env(option).ensure()
    if long_running:
        raise InputError(f"this command runs until stopped and would never publish to {location}: give it a local "
                         f"warehouse folder (a mounted volume), or run ingest/prepare/train/score commands on the "
                         f"object store warehouse from a scheduler")
    ctx = _current_context()
    if ctx is None:
        raise RuntimeError("warehouse_from(s3://...) pushes when the command ends: call it inside a CLI command")
    cache = os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "reviewflow"
    mirror = objectstore.mirror_dir(location, cache)
    objectstore.pull(location, mirror, reads, verify_pointer_target=pointer_verifier(mirror))
    wh = Warehouse.from_env(mirror).ensure()
    ctx.with_resource(_push_after_success(wh.root, location))
    return wh


def pointer_verifier(mirror: Path) -> objectstore.VerifyPointer:
    """The registry's check of the version a pointer pulled from the store names, in the mirror ``mirror``: a
    pointer onto a damaged or altered version is not taken (``IntegrityError``). A version registered before
    checksums passes here (it was pointed at before; scoring with it works as it always did)."""
    def verify(version: str) -> None:
        from pipeline.registry import verify_version    # deferred: the registry loads torch

        verify_version(Warehouse.from_env(mirror), version, unchecked_ok=True)

    return verify


def _current_context():
    """The running command's Click context (Typer >= 0.2x runs on its own copy of Click, ``typer._click``, and
    exports no accessor for it), or None outside a command."""
    try:
        from typer._click.globals import get_current_context
    except ImportError:         # Typer on the click package
        from click import get_current_context
    return get_current_context(silent=True)


@contextlib.contextmanager
def _push_after_success(mirror: Path, uri: str) -> Iterator[None]:
    """Around the rest of a command: push the mirror to ``uri`` if the command ends without an error."""
    try:
        yield
    except typer.Exit as done:
        if done.exit_code == 0:
            objectstore.push(mirror, uri, verify_pointer_target=pointer_verifier(mirror))
        raise
    objectstore.push(mirror, uri, verify_pointer_target=pointer_verifier(mirror))


def echo_kv(title: str, pairs: dict) -> None:
    """Print a small aligned key/value block."""
    typer.secho(title, bold=True)
    width = max((len(str(k)) for k in pairs), default=0)
    for k, v in pairs.items():
        typer.echo(f"  {str(k).ljust(width)}  {v}")
