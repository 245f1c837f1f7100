"""First wins: drop repeated review_ids inside one source, and refuse an id reused for another review.

A repeat of the *same* review (same text, label, rating and split as the id's first row) is a harmless
duplicate: it is dropped and counted. The ``group_id`` is metadata, not content: a repeat that names
another group is still the same review, and the first row's group is kept. A repeat with *different*
content is an error naming the ids, since one of the two reviews would be lost. Rows are compared by a
hash, so memory stays at the ids plus 8 bytes per distinct id, across every batch of the source.
"""

from __future__ import annotations

import pyarrow as pa

from pipeline.core.errors import InputError

CONFLICTS_SHOWN = 5  # review_ids named in a "same id, different content" error


def _row_keys(batch: pa.RecordBatch | pa.Table) -> list[int]:
    """One hash per row of everything a review is (text, label, rating, split): equal keys = the same review.

    A 64-bit hash, so two *different* reviews under one id pass as the same with odds of about 1 in
    10^19 per pair; keeping the hash instead of the text keeps memory to ids + 8 bytes per row."""
    cols = [batch.column(c).to_pylist() for c in ("text", "label", "rating", "split")]
    return [hash(row) for row in zip(*cols)]


class Deduper:
    """Keeps the first row of each review_id across the batches of one source (named ``where``, of ``kind``)."""

    def __init__(self, where: str, kind: str):
        self.where, self.kind = where, kind
        self.seen: dict[str, int] = {}  # review_id -> _row_keys hash of its first row
        self.repeats = 0

    def keep_mask(self, batch: pa.RecordBatch | pa.Table) -> list[bool]:
        """True for each row whose id is new; repeats of the same review are counted and dropped."""
        keep, conflicts = [], []
        for rid, key in zip(batch.column("review_id").to_pylist(), _row_keys(batch)):
            first = self.seen.get(rid)
            if first is None:
                self.seen[rid] = key
                keep.append(True)
                continue
            keep.append(False)
            self.repeats += 1
            if first != key:
                conflicts.append(rid)
        if conflicts:
            raise self._conflict(list(dict.fromkeys(conflicts)))
        return keep

    def first_rows(self, batch: pa.RecordBatch | pa.Table) -> pa.RecordBatch | pa.Table:
        """``batch`` without the rows ``keep_mask`` drops (the same object when it drops none)."""
        keep = self.keep_mask(batch)
        return batch if all(keep) else batch.filter(pa.array(keep, pa.bool_()))

    def _conflict(self, ids: list[str]) -> InputError:
        shown = ", ".join(repr(i) for i in ids[:CONFLICTS_SHOWN])
        more = f" (and {len(ids) - CONFLICTS_SHOWN} more)" if len(ids) > CONFLICTS_SHOWN else ""
        if self.kind.startswith("aclimdb"):
            fix = ("aclImdb ids come from <split>/<pos|neg|unsup>/<id>_<rating>.txt, so two files with the same "
                   "<id> (like 7_9.txt and 007_10.txt, or the same path twice in a tarball) are one id: "
                   "remove or renumber one of them")
        else:
            fix = "give each review its own id, or drop the id column (or --id-col) to use content hashes"
        which = f"review_id {shown} is" if len(ids) == 1 else f"review_ids {shown}{more} are"
        return InputError(f"{which} used by rows with different content (text, label, rating or split), so a "
                          f"review would be lost: {fix}; nothing was ingested", path=self.where)
