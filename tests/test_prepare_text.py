"""Normalisation / tokenisation rules and truncation / padding (pipeline.prepare.text)."""

from __future__ import annotations

import string

import numpy as np
import pyarrow as pa
import pytest

from pipeline.prepare.text import kept_positions, normalise, pad_rows, tokenize, tokenize_reference


def baseline_tokens(text: str) -> list[str]:
    """The lineage baseline's rule, verbatim."""
    return "".join(c for c in text.lower() if c not in string.punctuation).split()


def test_html_punctuation_and_case():
    texts = ["Great movie!<br /><br />Loved it.", "Don't STOP... <i>ever</i>", "a < b > c", "e-mail: x@y.com"]
    assert tokenize(texts, strip_html=True).to_lists() == [
        ["great", "movie", "loved", "it"], ["dont", "stop", "ever"], ["a", "b", "c"], ["email", "xycom"]]
    # strip_html=False is exactly the baseline: '<br />' -> 'br' glued to its neighbours
    assert tokenize(texts, strip_html=False).to_lists() == [baseline_tokens(t) for t in texts]
    assert tokenize(["Movie.<br /><br />Bad"], strip_html=False).to_lists() == [["moviebr", "br", "bad"]]


def test_normalise_matches_regex_rule():
    arr = pa.array(["A<b>B</b>, c!", "ÉCOLE d'été"])
    assert normalise(arr, True).to_pylist() == ["a b  c", "école dété"]


def test_whitespace_and_empty_like_str_split():
    texts = ["  lead and trail  ", "", "   ", None, "tab\tnew\nline", "nbsp\u00a0thin\u2009ideo\u3000x",
             "sep\x1cchars\x85here", "!!! ... ---", "é café ÉLAN ß", "emoji 😀ok “quoted”"]
    got = tokenize(texts, strip_html=True).to_lists()
    assert got == [baseline_tokens(t or "") for t in texts]
    assert got[1] == got[2] == got[3] == got[7] == []


def test_matches_baseline_on_random_text():
    rng = np.random.default_rng(0)
    alphabet = list(string.ascii_letters + string.digits + string.punctuation + " \t\n") + ["é", "Ü", "\u00a0", "’", "😀"]
    texts = ["".join(rng.choice(alphabet, size=int(rng.integers(0, 80)))) for _ in range(300)]
    assert tokenize(texts, strip_html=False).to_lists() == [baseline_tokens(t) for t in texts]
    assert tokenize(texts, strip_html=True).to_lists() == [tokenize_reference(t, True) for t in texts]


def test_counts_and_sliced_input():
    arr = pa.array(["x y", "a b c", "d", "", "e f"])
    tok = tokenize(arr.slice(1, 3))
    assert tok.counts.tolist() == [3, 1, 0]
    assert tok.values.to_pylist() == ["a", "b", "c", "d"]


@pytest.mark.parametrize("truncate,expected", [
    ("head", [0, 1, 2, 3, 4, 5]),
    ("tail", [4, 5, 6, 7, 8, 9]),
    ("head+tail", [0, 1, 6, 7, 8, 9]),          # max_len 6: first 6//3 = 2, last 4
])
def test_truncation_modes(truncate, expected):
    counts = np.array([10, 3, 0, 6])
    src, kept = kept_positions(counts, 6, truncate)
    assert kept.tolist() == [6, 3, 0, 6]
    assert src[:6].tolist() == expected
    assert src[6:9].tolist() == [10, 11, 12]            # short rows are untouched
    assert src[9:].tolist() == [13, 14, 15, 16, 17, 18]


def test_pad_sides():
    flat = np.array([5, 6, 7, 8, 9])
    kept = np.array([3, 0, 2])
    right = pad_rows(flat, kept, 4, "right")
    left = pad_rows(flat, kept, 4, "left")
    assert right.tolist() == [[5, 6, 7, 0], [0, 0, 0, 0], [8, 9, 0, 0]]
    assert left.tolist() == [[0, 5, 6, 7], [0, 0, 0, 0], [0, 0, 8, 9]]
    assert right.dtype == np.int32
    with pytest.raises(ValueError):
        pad_rows(flat, kept, 4, "middle")
    with pytest.raises(ValueError):
        kept_positions(kept, 4, "middle")
