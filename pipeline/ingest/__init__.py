"""Stage 1, ingest: read review sources (aclImdb folder/tarball/URL, CSV, JSONL, Parquet) into the Parquet lake."""
