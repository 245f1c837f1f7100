"""A small, REAL torch predictor for scoring/SQL tests (no registry needed).

``BowPredictor`` hashes word tokens into buckets and averages bucket weights with an
``nn.EmbeddingBag``; the weights are fixed and seeded, with the synthetic cue words
(tests/synthetic.py POSITIVE/NEGATIVE) pushed up/down so scores are meaningful. It follows the
Predictor duck type: ``.version``, ``.max_len``, ``.predict_proba(list[str|None]) -> float64``
with NaN for None/empty text, and truncates every text to ``max_len`` tokens without
materialising the whole text's token list (a 10 MB review costs max_len tokens).
"""

from __future__ import annotations

import itertools
import queue
import re
import sys
import threading
import time
import zlib
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from synthetic import NEGATIVE, POSITIVE  # noqa: E402

_TOKEN = re.compile(r"[a-z0-9']+")


class BowPredictor:
    def __init__(self, version: str = "bow-v1", seed: int = 0, buckets: int = 4096, max_len: int = 256,
                 delay: float = 0.0, batch_size: int = 256):
        self.version = version
        self.max_len = max_len
        self.delay = delay              # seconds slept per predict_proba call (slow-writer tests)
        self.batch_size = batch_size
        self.buckets = buckets
        g = torch.Generator().manual_seed(seed)
        self.bag = nn.EmbeddingBag(buckets, 1, mode="mean")
        with torch.no_grad():
            self.bag.weight.copy_(torch.randn(buckets, 1, generator=g) * 0.3)
            for w in POSITIVE:
                self.bag.weight[self._bucket(w)] = 3.0
            for w in NEGATIVE:
                self.bag.weight[self._bucket(w)] = -3.0
        self.bag.eval()
        self.calls = 0

    def _bucket(self, token: str) -> int:
        return zlib.crc32(token.encode()) % self.buckets

    def tokens(self, text: str) -> list[str]:
        return [m.group(0) for m in itertools.islice(_TOKEN.finditer(text.lower()), self.max_len)]

    def predict_proba(self, texts: Sequence[str | None]) -> np.ndarray:
        self.calls += 1
        if self.delay:
            time.sleep(self.delay)
        out = np.full(len(texts), np.nan, dtype=np.float64)
        rows, ids, offsets = [], [], []
        for i, t in enumerate(texts):
            if t is None or not t.strip():
                continue
            # the regex scans lazily; lower() on a cut prefix keeps huge texts cheap
            toks = self.tokens(t[: self.max_len * 64])
            if not toks:
                toks = ["<empty>"]
            rows.append(i)
            offsets.append(len(ids))
            ids.extend(self._bucket(w) for w in toks)
        if rows:
            with torch.inference_mode():
                logits = self.bag(torch.tensor(ids, dtype=torch.long), torch.tensor(offsets, dtype=torch.long))
            out[rows] = torch.sigmoid(logits.squeeze(1)).double().numpy()
        return out


def query_rows(db, sql: str, params=None) -> list[tuple]:
    """The rows of one read-only query on DuckDB file ``db`` (the connection is closed again at once)."""
    import duckdb

    con = duckdb.connect(str(db), read_only=True)
    try:
        return con.execute(sql, params or []).fetchall()
    finally:
        con.close()


def make_review_db(path, n: int = 200, *, table: str = "reviews", seed: int = 0, pk: bool = False,
                   id_type: str = "VARCHAR", extra_types: bool = False):
    """A DuckDB file with ``table`` (review_id, text, label, ...) built from tests/synthetic.py."""
    import duckdb
    from synthetic import make_reviews

    from pipeline.core.duck import quote_ident

    rows = make_reviews(n, seed=seed)
    con = duckdb.connect(str(path))
    try:
        con.register("src", rows)
        T = quote_ident(table)
        idexpr = "review_id" if id_type == "VARCHAR" else "CAST(split_part(review_id, '_', 2) AS INTEGER)"
        extra = ""
        if extra_types:
            extra = (", CAST(rating AS DECIMAL(6,2)) AS price, [rating, label] AS tags, "
                     "{'r': rating, 's': split} AS meta, ingested_at AS seen_at")
        con.execute(f"CREATE TABLE {T} AS SELECT {idexpr} AS review_id, text, label{extra} FROM src ORDER BY 1")
        if pk:
            con.execute(f"CREATE TABLE tmp_pk AS SELECT * FROM {T}")
            cols = con.execute("SELECT column_name, data_type FROM duckdb_columns() WHERE table_name = 'tmp_pk' "
                               "ORDER BY column_index").fetchall()
            defs = ", ".join(f"{quote_ident(c)} {t}" + (" PRIMARY KEY" if c == "review_id" else "") for c, t in cols)
            con.execute(f"DROP TABLE {T}")
            con.execute(f"CREATE TABLE {T} ({defs})")
            con.execute(f"INSERT INTO {T} SELECT * FROM tmp_pk")
            con.execute("DROP TABLE tmp_pk")
    finally:
        con.close()
    return path


class Lines:
    """The lines of a process's stdout or stderr, read by a thread: wait for a marker with a deadline
    (no sleeps)."""

    def __init__(self, stream):
        self.seen, self._q = [], queue.Queue()
        self._stream = stream
        threading.Thread(target=self._pump, daemon=True).start()

    def _pump(self) -> None:
        for line in self._stream:
            self._q.put(line.rstrip("\n"))
        self._q.put(None)

    def wait_for(self, marker: str, timeout: float = 120.0) -> str:
        while True:
            line = self._q.get(timeout=timeout)
            if line is None:
                raise AssertionError(f"process ended before {marker!r}; it said: {self.seen}")
            self.seen.append(line)
            if marker in line:
                return line


def _main(argv: list[str]) -> None:
    """``python tests/score_helpers.py DB TABLE CHUNK_ROWS DELAY [GATE [AT]]`` — a real scoring process for
    kill -9 / concurrency tests; prints ``chunk N`` after each committed chunk, and the claim/lock
    waiting messages. With GATE (a path), it pauses after chunk AT (default 1), still holding the table's
    claim, until that file exists (prints ``gated`` first): a test decides when it may go on. With AT
    ``each`` it pauses after every chunk N until ``GATE.N`` exists."""
    from pipeline.score.writeback import score_table

    db, table, chunk_rows, delay = argv[0], argv[1], int(argv[2]), float(argv[3])
    gate = Path(argv[4]) if len(argv) > 4 else None
    at = argv[5] if len(argv) > 5 else "1"

    def after_chunk(r) -> None:
        print(f"chunk {r.chunks} rows {r.rows_scored}", flush=True)
        if gate is None or (at != "each" and r.chunks != int(at)):
            return
        wait_for = Path(f"{gate}.{r.chunks}") if at == "each" else gate
        print("gated", flush=True)
        while not wait_for.exists():        # a file the test creates: no guess at how long anything takes
            time.sleep(0.01)

    rep = score_table(db, table, BowPredictor(delay=delay), chunk_rows=chunk_rows, batch_size=64,
                      after_chunk=after_chunk, on_wait=lambda m: print(m, flush=True))
    print(f"done {rep.rows_scored}", flush=True)


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    _main(sys.argv[1:])
