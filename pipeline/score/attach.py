"""Open a DuckDB file for one short step, cheaply: ATTACH it to an in-memory database kept for the run.

Scoring opens the file once per chunk, so that other processes (``reviewflow sql``) get in between: DuckDB
lets no other process open a file while one has it open. ``duckdb.connect(path)`` builds a whole database
instance each time (its catalog of built-in functions, its threads): about 30 ms of CPU on a 2-core machine,
12 % of the time a 4,096-row chunk of the ``fast`` model may take at 20,000 rows/s. ATTACH of the same file to
one in-memory instance made at the start of the run takes about 1 ms, and DETACH closes the file as
``close()`` did: it checkpoints what was written and releases the lock (another process can open the file
at once).

:class:`Attached` steps behave as :func:`pipeline.core.duck.connection` does: the file is the default
database (``USE``), so unqualified names and ``current_database()`` mean it; a lock held by another process
is waited for with backoff, said once and then every ~5 s through ``on_wait``, and given up after
``timeout`` with :class:`pipeline.core.duck.LockTimeout`; a transaction an error left open is rolled back
when the step ends.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from pathlib import Path
from typing import Callable, Iterator

import duckdb

from pipeline.core.duck import LockTimeout, is_lock_error, quote_ident, quote_literal

log = logging.getLogger(__name__)

ALIAS = "__reviewflow_scoring"      # the attached file's catalog name while a step runs


class Attached:
    """One DuckDB file, opened step by step through an in-memory instance (see the module docstring).
    ``with Attached(path, ...) as db:`` then ``with db.step() as con:`` for each step."""

    def __init__(self, path: str | os.PathLike, *, timeout: float, on_wait: Callable[[str], None] | None,
                 first_delay: float = 0.05, max_delay: float = 2.0):
        self.path = Path(path)
        self.timeout, self.on_wait, self.first_delay, self.max_delay = timeout, on_wait, first_delay, max_delay
        self._mem: duckdb.DuckDBPyConnection | None = None

    def __enter__(self) -> "Attached":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        if self._mem is not None:
            self._mem.close()
            self._mem = None

    @contextlib.contextmanager
    def step(self) -> Iterator[duckdb.DuckDBPyConnection]:
        """The file, open for one step (the default database of the connection yielded), closed after."""
        if self._mem is None:
            self._mem = duckdb.connect(":memory:")
        con = self._mem
        self._attach(con)
        try:
            con.execute(f"USE {quote_ident(ALIAS)}")
            yield con
        finally:
            with contextlib.suppress(duckdb.Error):       # no transaction open: nothing to roll back
                con.execute("ROLLBACK")
            con.execute("USE memory")
            con.execute(f"DETACH {quote_ident(ALIAS)}")

    def _attach(self, con: duckdb.DuckDBPyConnection) -> None:
        """ATTACH the file, waiting (exponential backoff, bounded by ``timeout``) while another process holds
        its lock; the same messages and :class:`LockTimeout` as :func:`pipeline.core.duck.connect`."""
        start, delay, last_said = time.monotonic(), self.first_delay, None
        while True:
            try:
                con.execute(f"ATTACH {quote_literal(str(self.path))} AS {quote_ident(ALIAS)}")
                return
            except duckdb.Error as exc:
                if not is_lock_error(exc):
                    raise
                waited = time.monotonic() - start
                if waited >= self.timeout:
                    raise LockTimeout(
                        f"gave up after {waited:.1f} s waiting for the lock on {self.path}: another process "
                        f"(a scoring run or another writer) kept it. Retry later or raise the wait "
                        f"limit (--lock-timeout). DuckDB said: {exc}") from None
                if last_said is None or waited - last_said >= 5.0:
                    msg = (f"waiting for the writer… {self.path} is locked by another process "
                           f"(waited {waited:.1f} s, giving up after {self.timeout:.0f} s)")
                    log.info(msg)
                    if self.on_wait is not None:
                        self.on_wait(msg)
                    last_said = waited
                time.sleep(min(delay, max(0.0, self.timeout - waited)))
                delay = min(delay * 2, self.max_delay)
