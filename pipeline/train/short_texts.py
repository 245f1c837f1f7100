"""Short texts from long ones: how a model does on a one-liner, measured on the validation reviews.

A model trained on 230-word reviews meets one-line product reviews and tweet-sized snippets in the wild.
:func:`shorten` keeps each review's first ``head`` and last ``tail`` *real* tokens (pads are never counted)
and pads the result again the way the split is padded, so the same evaluation code runs on it. A review
no longer than ``head + tail`` tokens is kept whole. The default (20 + 20) is the cut the model card
reports as ``val_accuracy_short``, next to the full-review accuracy.

    >>> short = shorten(load_split(prep_dir, "val"))        # SplitData, each row <= 40 tokens
"""

from __future__ import annotations

import dataclasses

import numpy as np

from pipeline.core.errors import InputError
from pipeline.train.loader import SplitData

SHORT_HEAD = SHORT_TAIL = 20    # tokens kept from the start and from the end of each review


def shorten(data: SplitData, head: int = SHORT_HEAD, tail: int = SHORT_TAIL) -> SplitData:
    """``data`` with every row cut to its first ``head`` and last ``tail`` real tokens, re-padded on the
    split's pad side to the split's width (labels and review ids unchanged). Vectorised: one gather."""
    if head < 0 or tail < 0 or head + tail < 1:
        raise InputError(f"short texts need head >= 0, tail >= 0 and head + tail >= 1 tokens, got {head} + {tail}")
    ids, lengths = np.asarray(data.ids), np.asarray(data.lengths, np.int64)
    width = ids.shape[1]
    keep = head + tail
    new_len = np.minimum(lengths, keep)[:, None]
    column = np.arange(width)[None, :]
    # for every output column: its position j in the short text, then that token's column in the input
    j = column - (width - new_len) if data.pad_side == "left" else column
    real = (j >= 0) & (j < new_len)
    from_tail = (lengths[:, None] > keep) & (j >= head)
    position = np.where(from_tail, lengths[:, None] - keep + j, j)          # among the review's real tokens
    first_real = (width - lengths)[:, None] if data.pad_side == "left" else 0
    source = np.where(real, position + first_real, 0)
    out = np.where(real, np.take_along_axis(ids, source, axis=1), 0).astype(ids.dtype)
    return dataclasses.replace(data, ids=out, lengths=new_len[:, 0].astype(np.asarray(data.lengths).dtype))
