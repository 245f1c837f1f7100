"""The online transform: text -> padded ids exactly as a prep's shards hold them (for scoring and serving).

:class:`Preprocessor` runs the same code path as ``prepare`` (``pipeline.prepare.text`` tokenize,
truncate and pad, ``pipeline.prepare.vocab.Lookup``), so a text scored later gets the ids it would have
had in the shards. :func:`load_preprocessor` builds it from a prep (or model) directory's manifest.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import pyarrow as pa

from pipeline.prepare.manifest import read_manifest, verified_vocab
from pipeline.prepare.text import kept_mask, pad_rows, tokenize
from pipeline.prepare.vocab import Lookup


class Preprocessor:
    """The exact text -> ids transform of a prep (same code path as the shards)."""

    def __init__(self, vocab: Sequence[str], max_len: int, pad_side: str = "right", truncate: str = "head",
                 strip_html: bool = True):
        self.vocab = list(vocab)
        self.max_len, self.pad_side, self.truncate, self.strip_html = max_len, pad_side, truncate, strip_html
        self._lookup = Lookup(self.vocab)

    def tokenize(self, texts: Sequence[str] | pa.Array) -> list[list[str]]:
        return tokenize(texts, self.strip_html).to_lists()

    def encode(self, texts: Sequence[str] | pa.Array) -> tuple[np.ndarray, np.ndarray]:
        """-> (ids int32 [n, max_len], lengths int32 [n]); an empty/None text gives length 0."""
        flat, kept = self.encode_flat(texts)
        return pad_rows(flat, kept, self.max_len, self.pad_side), kept.astype(np.int32)

    def encode_flat(self, texts: Sequence[str] | pa.Array) -> tuple[np.ndarray, np.ndarray]:
        """The same ids unpadded: (ids int32 of the kept tokens, text after text in reading order, kept token
        count per text int64). ``encode`` is exactly these placed into padded rows."""
        tok = tokenize(texts, self.strip_html)
        keep = kept_mask(tok.counts, self.max_len, self.truncate)
        flat = self._lookup.ids(tok.values if keep is None else tok.values.filter(pa.array(keep)))
        return flat, np.minimum(tok.counts, self.max_len)


def load_preprocessor(prep_dir: str | Path) -> Preprocessor:
    """The transform of the prep in ``prep_dir`` (its vocabulary checked against the manifest first)."""
    manifest = read_manifest(prep_dir)
    p = manifest["params"]
    vocab = verified_vocab(Path(prep_dir), manifest)
    return Preprocessor(vocab, p["max_len"], p["pad_side"], p["truncate"], p["strip_html"])
