"""The lake's row schema: one contract shared by ingest (writer) and prepare/score (readers)."""

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

SPLITS = ("train", "test", "unsup")
