"""Stage 1, ingest: read review sources (aclImdb folder/tarball/URL, CSV, JSONL, Parquet) into the Parquet lake.

Modules, in the order data flows through them:

* ``detect``       what kind of source a path or URL is
* ``download``     streamed http(s) reads (httpx) with retry-aware errors
* ``readers``      one reader per kind, each a stream of ``SOURCE_SCHEMA`` batches (``read_source`` picks)
* ``columns``      a file's columns -> the lake's: mapping, coercion, UTF-8 repair
* ``labels``       every label spelling -> 1 / 0 / null
* ``dedupe``       first wins for a repeated review_id; a reused id with other content is refused
* ``lake``         the Parquet lake: read side, writer lock, part files, staging files
* ``job``          ``stage`` -> ``publish`` = ``ingest``, what the flow and ``--no-prefect`` both run
* ``connectivity`` a quick reachability probe before a job that needs the network
"""
