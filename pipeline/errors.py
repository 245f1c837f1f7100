"""Errors that carry enough context (file, row, column) for a user to fix their input."""

from __future__ import annotations


class ReviewflowError(Exception):
    """Base class: a problem the user can act on. The CLI prints it without a traceback."""


class InputError(ReviewflowError):
    """Bad input data. Names the file, and where known the row and column."""

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
