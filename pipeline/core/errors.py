"""Errors that carry enough context (file, row, column) for a user to fix their input.

The CLI turns each into one line on stderr and an exit code, without a traceback (``--debug`` keeps it):

* :class:`ReviewflowError` and its subclasses: exit code 2 (the user can act on it);
* :class:`TemporaryFailure` (a lock held too long, a network hiccup): exit code 75 (``EX_TEMPFAIL``),
  so a scheduler knows that the same command may succeed later.
"""

from __future__ import annotations

EXIT_USER_ERROR = 2
EXIT_TEMPORARY = 75     # sysexits.h EX_TEMPFAIL: try again later


class ReviewflowError(Exception):
    """Base class: a problem the user can act on. The CLI prints it without a traceback."""

    exit_code = EXIT_USER_ERROR


class InputError(ReviewflowError, ValueError):
    """Bad input data or options. Names the file, and where known the row and column.

    Also a ``ValueError``, so code that validated with ``ValueError`` before keeps working."""

    def __init__(self, message: str, *, path: str | None = None, row: int | None = None,
                 column: str | None = None):
        where = []
        if path is not None:
            where.append(f"file {path}")
        if row is not None:
            where.append(f"row {row}")
        if column is not None:
            where.append(f"column {column!r}")
        self.path, self.row, self.column = path, row, column
        super().__init__(f"{message} ({', '.join(where)})" if where else message)


class NotFoundError(ReviewflowError):
    """A dataset, prep, model version, table or column that does not exist."""


class IntegrityError(ReviewflowError):
    """A stored artifact (shard, weights, manifest) does not match what was recorded when it was written."""


class QueryRefused(ReviewflowError):
    """User SQL tried something the read-only query surface does not allow (writes, files, settings)."""


class TemporaryFailure(ReviewflowError):
    """A failure that may go away by itself: retry later (lock held too long, network)."""

    exit_code = EXIT_TEMPORARY
