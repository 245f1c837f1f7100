"""Stage 2, prepare: normalise and tokenize lake text, build the vocabulary, split, pad into tensor shards."""
