"""The ``reviewflow`` command line: one entry point for every step of the pipeline.

Each command lives in its own module of ``flows/cli/`` and adds itself to :data:`app` with ``register``.
Command modules import Prefect only inside their commands, so :func:`main` can set Prefect's environment
before Prefect reads it (once, at import).
"""

from __future__ import annotations

import atexit
import logging
import os
import sys
import traceback

import typer

from flows.cli import check, export, inbox, ingest, models, monitor, predict, prepare, pretrain, run, score, serve, sql, train
from pipeline.core.errors import EXIT_TEMPORARY, ReviewflowError, TemporaryFailure, classify_os_error
from pipeline.core.settings import env_help, load

HELP = """\
reviewflow: turn raw review text into sentiment columns you can query with SQL.

\b
The pipeline, step by step (each step is a Prefect flow; `run` chains them all):
  1. ingest   SOURCE --dataset NAME   aclImdb folder/tarball/URL, CSV, JSONL or Parquet -> Parquet lake
  2. prepare  --dataset NAME          normalise, tokenize, vocabulary, split, pad -> tensor shards
  3. pretrain --dataset NAME          word vectors from train + unlabelled text (train runs it when needed)
  4. train    --dataset NAME          train a recurrent (or Transformer) model, register a version
  5. score    --table NAME            write sentiment columns back into a DuckDB table
  6. sql      "SELECT ..."            query scored reviews (with a sentiment(text) function)

\b
Everything lives under the warehouse root: --warehouse DIR (or s3://bucket/prefix) or $REVIEWFLOW_WAREHOUSE (default ./warehouse).
Start with:  reviewflow run --source path/to/aclImdb_v1.tar.gz

\b
Errors are one line on stderr. Exit codes: 0 ok; 2 a problem with the input or options (the message says
what, where and what to do); 75 a temporary failure (lock held too long, network): the same command may
work later; 1 an internal error. Add --debug anywhere on the line (or REVIEWFLOW_DEBUG=1) for tracebacks.

\b
Environment (a flag on the command line wins over its variable; an empty variable counts as unset):
{env}
"""

app = typer.Typer(help=HELP.format(env=env_help()), no_args_is_help=True, rich_markup_mode=None, add_completion=False,
                  pretty_exceptions_enable=False,
                  context_settings={"help_option_names": ["-h", "--help"]})

# the order of --help
for _command in (ingest, prepare, pretrain, train, models, predict, score, monitor, check, sql, export, run, serve, inbox):
    _command.register(app)


@app.command("version")
def version() -> None:
    """Print the versions of reviewflow and the libraries it runs on."""
    from importlib.metadata import version as v

    for pkg in ("reviewflow", "torch", "prefect", "duckdb", "pyarrow", "pandas"):
        typer.echo(f"{pkg:<11} {v(pkg)}")


EXIT_INTERNAL = 1
EXIT_INTERRUPTED = 130
DEBUG_FLAG = "--debug"
_NETWORK_ERRORS = (ConnectionError, TimeoutError)   # OSError subclasses a retry may cure


class _UserErrorsWithoutTraceback(logging.Filter):
    """Prefect logs a failed task or flow run with the exception's traceback. For a user error the message is
    the whole story (the CLI prints it once more as its last line), so the traceback is dropped there;
    ``--debug`` keeps it."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if isinstance(_classified(exc), ReviewflowError):
            record.exc_info, record.exc_text = None, None
        return True


def _pop_debug(argv: list[str]) -> bool:
    """``--debug`` anywhere on the command line (removed from it), or ``REVIEWFLOW_DEBUG=1``."""
    found = DEBUG_FLAG in argv[1:]
    argv[1:] = [a for a in argv[1:] if a != DEBUG_FLAG]
    return found or load().debug


def _classified(exc: BaseException | None) -> BaseException | None:
    """An OS failure (full disk, read-only mount, no permission, descriptor limit) as the ReviewflowError it is for
    the user (pipeline.core.errors.classify_os_error); any other exception as it is. Looks through ``raise ...
    from`` chains of exceptions that are not ReviewflowErrors (a wrapper must not hide a full disk)."""
    seen, hops = exc, 0
    while seen is not None and not isinstance(seen, ReviewflowError) and hops < 16:   # hops: a cyclic chain
        found = classify_os_error(seen)
        if found is not None:
            return found
        seen, hops = seen.__cause__, hops + 1
    return exc


def _exit_code(exc: BaseException) -> int:
    exc = _classified(exc)
    if isinstance(exc, ReviewflowError):
        return exc.exit_code
    if isinstance(exc, _NETWORK_ERRORS) or type(exc).__module__.startswith("httpx"):
        return EXIT_TEMPORARY
    return EXIT_INTERNAL


def _message(exc: BaseException) -> str:
    exc = _classified(exc)
    if isinstance(exc, TemporaryFailure) or not isinstance(exc, ReviewflowError):
        kind = "temporary failure, retry later" if _exit_code(exc) == EXIT_TEMPORARY else "internal error"
        detail = str(exc) if isinstance(exc, ReviewflowError) else f"{type(exc).__name__}: {exc}"
        hint = "" if isinstance(exc, ReviewflowError) else f" (rerun with {DEBUG_FLAG} for the traceback)"
        return f"{kind}: {detail}{hint}"
    return str(exc)


def main() -> None:
    try:
        debug = _pop_debug(sys.argv)
    except ReviewflowError as exc:   # REVIEWFLOW_DEBUG itself is unreadable
        typer.secho(f"error: {exc}", fg=typer.colors.RED, err=True)
        sys.exit(exc.exit_code)
    # Prefect reads its settings once, when it is first imported: these lines run before any command imports it,
    # so they hold for every command. Its embedded API server can take >20 s (its default) to start on a busy
    # 2-core machine; this is the one start-up timeout the CLI sets.
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "180")
    if not debug:
        for name in ("prefect.flow_runs", "prefect.task_runs"):
            logging.getLogger(name).addFilter(_UserErrorsWithoutTraceback())
    from flows.localserver import ephemeral_server_dies_with_parent

    ephemeral_server_dies_with_parent()
    last_words: list[str] = []
    # registered before Prefect registers its own exit handlers (log flush, stopping its temporary server),
    # so it runs after them (atexit is last-in, first-out): the error stays the last line on the terminal
    atexit.register(lambda: [typer.secho(w, fg=typer.colors.RED, err=True) for w in last_words])
    try:
        app()
    except KeyboardInterrupt:
        last_words.append("interrupted")
        sys.exit(EXIT_INTERRUPTED)
    except Exception as exc:  # noqa: BLE001 - the one place every error becomes an exit code
        if debug:
            traceback.print_exc()
        last_words.append(f"error: {_message(exc)}")
        sys.exit(_exit_code(exc))


if __name__ == "__main__":
    main()
