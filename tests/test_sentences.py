"""Sentence splitting and span sampling (pipeline.prepare.sentences)."""

from __future__ import annotations

import ast
import inspect

import numpy as np
import pyarrow as pa
import pytest

from pipeline.prepare import sentences as S
from pipeline.prepare.sentences import sample_spans, split_sentences


def split(texts, min_words: int = 3) -> list[tuple[int, str]]:
    row, sents = split_sentences(texts, min_words=min_words)
    assert row.dtype == np.int64 and len(row) == len(sents)
    assert pa.types.is_string(sents.type) and sents.null_count == 0
    return list(zip(row.tolist(), sents.to_pylist()))


@pytest.mark.parametrize("text, expected", [
    ("The film is good. The cast is bad. I left early.", ["The film is good.", "The cast is bad.", "I left early."]),
    ("One two three<br /><br />four five six<br>seven eight nine<BR/>ten eleven twelve<Br / >x y z",
     ["One two three", "four five six", "seven eight nine", "ten eleven twelve", "x y z"]),
    ("line one here\nline two here\r\nline three here\rline four here",
     ["line one here", "line two here", "line three here", "line four here"]),
    ("It was <i>really</i> good, truly.<b>Bold</b> claim made here <p>para graph starts</p>",
     ["It was really good, truly.", "Bold claim made here para graph starts"]),
    ("Wow!?! What a film that was. Why?? Who knows why though!!!",
     ["What a film that was.", "Who knows why though!!!"]),
    ("Wait for it... and then it ends. Then… nothing happens here.",
     ["Wait for it...", "and then it ends.", "nothing happens here."]),
    ('He said "it is bad." Then he left (as expected.) And so did we all.',
     ['He said "it is bad."', "Then he left (as expected.)", "And so did we all."]),
    ("Rated 3.5 out of 10 by me. See e.g. the ending scene too.",           # documented: "e.g." ends one
     ["Rated 3.5 out of 10 by me.", "See e.g.", "the ending scene too."]),
    ("no punctuation at all in this one", ["no punctuation at all in this one"]),
    ("Ünïcode façade naïve — works fine. 日本語 の 文 です", ["Ünïcode façade naïve — works fine.", "日本語 の 文 です"]),
    ("  lots   of\t\tinner   space here.   ", ["lots of inner space here."]),
])
def test_families(text, expected):
    assert [s for _, s in split([text])] == expected
    assert all(r == 0 for r, _ in split([text]))


def test_abbreviations_split_and_are_dropped_when_short():
    # documented: no abbreviation list, so "Mr." ends a "sentence"; the one-word piece falls under min_words
    assert split(["Mr. Smith was very good here."]) == [(0, "Smith was very good here.")]
    assert split(["Mr. Smith was very good here."], min_words=1) == [(0, "Mr."), (0, "Smith was very good here.")]


def test_min_words_counts_runs_of_letters_and_digits():
    texts = ["a b.", "a b c.", "--- ... !!!", "x1 y2 z3 w4."]
    assert split(texts) == [(1, "a b c."), (3, "x1 y2 z3 w4.")]
    assert split(texts, min_words=4) == [(3, "x1 y2 z3 w4.")]
    assert split(texts, min_words=0) == [(0, "a b."), (1, "a b c."), (3, "x1 y2 z3 w4.")]   # never an empty one


def test_null_and_empty_give_nothing_and_rows_index_the_input():
    texts = [None, "", "   ", "First one is here. Second one is here.", None, "<br /><br />", "Third one here."]
    assert split(texts) == [(3, "First one is here."), (3, "Second one is here."), (6, "Third one here.")]
    assert split([]) == []
    assert split([None, None]) == []


def test_input_kinds_agree():
    texts = ["Alpha beta gamma. Delta epsilon zeta.", None, "Eta theta iota!"]
    want = split(texts)
    assert split(pa.array(texts)) == want
    assert split(pa.chunked_array([pa.array(texts[:2]), pa.array(texts[2:])])) == want
    assert split(pa.array(texts, pa.large_string())) == want


def test_very_long_text():
    text = " ".join(f"Sentence number {i} is here." for i in range(20000))
    row, sents = split_sentences([text, "Short one here."])
    assert len(sents) == 20001 and sents[19999].as_py() == "Sentence number 19999 is here."
    assert row[-1] == 1 and (row[:-1] == 0).all()


def test_deterministic_and_ascending():
    rng = np.random.default_rng(0)
    words = ["good", "bad", "film", "plot", "Mr.", "it", "was", "!", "?", "...", "<br />", "\n"]
    texts = [" ".join(rng.choice(words, size=rng.integers(0, 40))) for _ in range(500)]
    a, b = split_sentences(texts), split_sentences(texts)
    assert np.array_equal(a[0], b[0]) and a[1].equals(b[1])
    assert (np.diff(a[0]) >= 0).all()


def test_no_python_loop_over_rows():
    # vectorised: the module has no for/while loop and no comprehension at all (kernels do the work)
    tree = ast.parse(inspect.getsource(S))
    loops = (ast.For, ast.While, ast.ListComp, ast.GeneratorExp, ast.DictComp, ast.SetComp)
    assert not [n for n in ast.walk(tree) if isinstance(n, loops)]


# ------------------------------------------------------------------------------------------ spans
def sentences_of(counts: list[int]) -> tuple[np.ndarray, pa.Array]:
    row = np.repeat(np.arange(len(counts)), counts).astype(np.int64)
    text = [f"t{r}s{k}" for r, c in enumerate(counts) for k in range(c)]
    return row, pa.array(text, pa.string())


def test_spans_are_consecutive_runs_of_their_own_text():
    row, sents = sentences_of([5, 1, 0, 3, 8])
    srow, spans = sample_spans(row, sents, max_sentences=3, per_text=4, seed=1)
    assert srow.dtype == np.int64 and (np.diff(srow) >= 0).all()
    for r, span in zip(srow.tolist(), spans.to_pylist()):
        parts = span.split(" ")
        assert 1 <= len(parts) <= 3
        ks = [int(p.split("s")[1]) for p in parts]
        assert all(p.startswith(f"t{r}s") for p in parts) and ks == list(range(ks[0], ks[0] + len(ks)))
    assert set(srow.tolist()) == {0, 1, 3, 4}
    assert (np.bincount(srow) <= 4).all()
    assert srow.tolist().count(1) == 1                   # one sentence: every draw is the same span, kept once


def test_spans_min_sentences_and_single_sentence_picks():
    row, sents = sentences_of([1, 2, 3])
    srow, spans = sample_spans(row, sents, max_sentences=3, per_text=3, seed=0, min_sentences=2)
    assert 0 not in srow.tolist() and all(len(s.split(" ")) >= 2 for s in spans.to_pylist())
    srow, spans = sample_spans(row, sents, max_sentences=1, per_text=2, seed=0)
    assert all(len(s.split(" ")) == 1 for s in spans.to_pylist())
    assert len(set(zip(srow.tolist(), spans.to_pylist()))) == len(srow)      # distinct picks


def test_spans_deterministic_under_seed():
    row, sents = sentences_of(list(np.random.default_rng(0).integers(0, 9, size=300)))
    a = sample_spans(row, sents, max_sentences=3, per_text=2, seed=7)
    b = sample_spans(row, sents, max_sentences=3, per_text=2, seed=7)
    c = sample_spans(row, sents, max_sentences=3, per_text=2, seed=8)
    assert np.array_equal(a[0], b[0]) and a[1].equals(b[1])
    assert not a[1].equals(c[1])


def test_spans_from_split_sentences_and_checks():
    row, sents = split_sentences(["First is here. Second is here. Third is here.", None, "Only one here."])
    srow, spans = sample_spans(row, sents, max_sentences=3, per_text=1, seed=0, min_sentences=3)
    assert srow.tolist() == [0] and spans.to_pylist() == ["First is here. Second is here. Third is here."]
    assert len(sample_spans(np.zeros(0, np.int64), pa.array([], pa.string()), max_sentences=2, per_text=2,
                            seed=0)[1]) == 0
    with pytest.raises(ValueError):
        sample_spans(row, sents, max_sentences=0, per_text=1, seed=0)
    with pytest.raises(ValueError):
        sample_spans(row[::-1].copy(), sents, max_sentences=2, per_text=1, seed=0)
