"""The lake's row schema: one contract shared by ingest (writer) and prepare/score (readers).

Two layers, so the lake can grow a column without rewriting a byte of what is already there:

* ``REVIEW_SCHEMA``: the columns every lake part has held since the first version. Tables built by
  hand (tests, benchmarks) may still carry exactly these.
* ``LAKE_SCHEMA``: ``REVIEW_SCHEMA`` plus ``OPTIONAL_FIELDS``, the columns added later. New parts are
  written with it, and every reader opens a dataset with it: a part written before a column existed
  reads that column as null (Arrow's dataset scanner fills a missing column with nulls).

``to_lake_table`` turns either shape into ``LAKE_SCHEMA`` rows.
"""

from __future__ import annotations

import pyarrow as pa

REVIEW_SCHEMA = pa.schema(
    [
        pa.field("review_id", pa.string(), nullable=False),   # stable: aclImdb path, id column, or content hash
        pa.field("text", pa.string(), nullable=False),
        pa.field("label", pa.int8()),                         # 1 positive, 0 negative, null unknown
        pa.field("rating", pa.int8()),                        # stars when known (aclImdb file names)
        pa.field("split", pa.string()),                       # train / test / unsup / null
        pa.field("source", pa.string(), nullable=False),      # where the row came from (path or URL)
        pa.field("ingested_at", pa.timestamp("us", tz="UTC"), nullable=False),
    ]
)

OPTIONAL_FIELDS = [
    # what the review is about (a movie, a product): ``prepare --split-by group`` keeps each group on one
    # side of the train/validation split. Metadata, not content: not part of a review's id or dedupe key.
    pa.field("group_id", pa.string()),
]

LAKE_SCHEMA = pa.schema([*REVIEW_SCHEMA, *OPTIONAL_FIELDS])

SPLITS = ("train", "test", "unsup")


def to_lake_table(table: pa.Table) -> pa.Table:
    """``table`` (``REVIEW_SCHEMA`` or ``LAKE_SCHEMA`` columns, any order) as ``LAKE_SCHEMA`` rows: optional
    columns it lacks are added as nulls, every column is cast to the lake's type."""
    for f in OPTIONAL_FIELDS:
        if f.name not in table.column_names:
            table = table.append_column(f, pa.nulls(table.num_rows, f.type))
    return table.select(LAKE_SCHEMA.names).cast(LAKE_SCHEMA)
