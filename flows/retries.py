"""When a Prefect task retry is worth it: one rule for every task that has retries.

A retry helps with what may go away by itself (a DuckDB file kept locked, a network hiccup, an OS error on a
busy disk): :class:`pipeline.core.errors.TemporaryFailure`, a transient download error, or any exception that is
not one of ours. It never helps with a user's problem (bad input, a missing table, a refused query,
a damaged artifact: every other :class:`pipeline.core.errors.ReviewflowError`), which then fails at once, with
its one-line message, instead of running the same failing work again.
"""

from __future__ import annotations

from pipeline.core.errors import ReviewflowError, TemporaryFailure


def failure_of(state) -> BaseException | None:
    """The exception a failed task-run ``state`` holds (None if it holds none)."""
    try:
        state.result()
    except BaseException as exc:  # noqa: BLE001 - classified by the caller
        return exc
    return None


def is_worth_retrying(exc: BaseException | None) -> bool:
    if exc is None or isinstance(exc, TemporaryFailure) or getattr(exc, "transient", False):
        return True
    return not isinstance(exc, ReviewflowError)


def retry_unless_user_error(task, task_run, state) -> bool:
    """``retry_condition_fn`` for ``@task(retries=...)``: retry unless the failure is the user's to fix."""
    return is_worth_retrying(failure_of(state))
