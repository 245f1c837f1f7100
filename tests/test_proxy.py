"""The out-of-domain proxy sets and their evaluation (pipeline.train.proxy)."""

from __future__ import annotations

import math

import numpy as np
import pyarrow as pa
import pytest
from synthetic import NEGATIVE, NEUTRAL, POSITIVE

from pipeline.core.errors import InputError
from pipeline.train import proxy
from pipeline.train.proxy import AgreementRule, LexiconJudge, build_proxy_sets, evaluate


def sentence(rng: np.random.Generator, label: int | None) -> str:
    words = list(rng.choice(NEUTRAL, size=int(rng.integers(3, 9))))
    if label is not None:
        words.insert(int(rng.integers(0, len(words) + 1)), str(rng.choice(POSITIVE if label else NEGATIVE)))
    return " ".join(words).capitalize() + str(rng.choice([".", "!", "...", "?"]))


def reviews(n: int, seed: int = 0, prefix: str = "r", labelled: bool = True) -> pa.Table:
    """Multi-sentence synthetic reviews: 1-6 sentences, most carrying a cue of the review's label."""
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % 2
    texts = [" ".join(sentence(rng, int(y) if rng.random() < 0.8 else None) for _ in range(int(rng.integers(1, 7))))
             for y in labels]
    cols = {"review_id": [f"{prefix}{i}" for i in range(n)], "text": texts}
    if labelled:
        cols["label"] = pa.array(labels, pa.int8())
    return pa.table(cols)


class Table:
    """A stand-in scorer: known scores by text (a plain object with predict_proba, as a Predictor has)."""

    def __init__(self, scores: dict[str, float], default: float = 0.5):
        self.scores, self.default, self.calls = scores, default, 0

    def predict_proba(self, texts) -> np.ndarray:
        self.calls += 1
        texts = texts.to_pylist() if hasattr(texts, "to_pylist") else list(texts)
        return np.array([self.scores.get(t, self.default) for t in texts], np.float64)


class Cue:
    """Scores by cue words: positive cue 0.99, negative cue 0.01, neither 0.5."""

    def predict_proba(self, texts) -> np.ndarray:
        out = []
        for t in (texts.to_pylist() if hasattr(texts, "to_pylist") else texts):
            words = set(t.lower().replace(".", " ").replace("!", " ").replace("?", " ").split())
            pos, neg = bool(words & set(POSITIVE)), bool(words & set(NEGATIVE))
            out.append(0.5 if pos == neg else (0.99 if pos else 0.01))
        return np.array(out)


@pytest.fixture(scope="module")
def data():
    labelled = reviews(300, seed=1)
    val_ids = pa.array([f"r{i}" for i in range(0, 300, 3)])
    return labelled, val_ids, reviews(200, seed=2, prefix="u", labelled=False)


def build(data, **kw):
    labelled, val_ids, unlabelled = data
    return build_proxy_sets(labelled, val_ids, unlabelled=unlabelled, teacher=Cue(), **kw)


def test_sets_are_deterministic_under_seed(data):
    a, b, c = build(data, seed=5), build(data, seed=5), build(data, seed=6)
    assert list(a.sets) == list(proxy.SET_NAMES)
    for name in proxy.SET_NAMES:
        assert a[name].equals(b[name]) and a[name].schema == proxy.PROXY_SCHEMA
    assert a.notes == b.notes
    assert not a["sentences"].equals(c["sentences"])


def test_labels_and_ids_come_from_the_right_review(data):
    labelled, val_ids, _ = data
    by_id = {r["review_id"]: r for r in labelled.to_pylist()}
    sets = build(data, seed=0)
    for name in ("reviews", "sentences", "spans"):
        t = sets[name].to_pylist()
        assert t, name
        for row in t:
            src = by_id[row["review_id"]]
            assert row["review_id"] in set(val_ids.to_pylist())      # never a training review
            assert row["label"] == src["label"] and row["text"] in src["text"]
            assert row["words"] == len(row["text"].replace(".", " ").replace("!", " ").replace("?", " ").split())
    assert len(sets["reviews"]) == len(val_ids)


def test_sentence_and_span_shapes(data):
    sets = build(data, seed=0)
    sent, spans = sets["sentences"].to_pylist(), sets["spans"].to_pylist()
    assert all(r["words"] >= 4 for r in sent)
    per_review = np.unique([r["review_id"] for r in sent], return_counts=True)[1]
    assert per_review.max() <= 2 and (per_review == 2).any()
    n_sent = [sum(r["text"].count(p) for p in ("...", "!", "?")) + r["text"].replace("...", "").count(".")
              for r in spans]
    assert min(n_sent) >= 2 and max(n_sent) <= 3
    assert len({r["review_id"] for r in spans}) == len(spans)              # one span per review


def test_caps_are_seeded_samples_in_order(data):
    sets = build(data, seed=0, cap=10)
    full = build(data, seed=0, cap=None)
    for name in proxy.SET_NAMES:
        assert len(sets[name]) == min(10, len(full[name]))
    t = pa.table({"x": np.arange(100)})
    a = proxy.cap_rows(t, 7, seed=3).column("x").to_pylist()
    assert a == sorted(a) and a == proxy.cap_rows(t, 7, seed=3).column("x").to_pylist()
    assert proxy.cap_rows(t, 200, seed=3).equals(t)
    assert build(data, seed=0, cap=10).notes["unsup_agree"]["reviews_scored"] == 40      # 4 x cap reviews scored


def test_agreement_rule_exactly():
    texts = {"u0": "Great film with great acting here. The plot was awful and long. It was a film of time.",
             "u1": "Awful boring worst film ever made. Great music in it though honestly.",
             "u2": "Great great great and wonderful too. Loved it and really loved it.",
             "u3": "Wonderful film but not sure at all."}
    unlabelled = pa.table({"review_id": list(texts), "text": list(texts.values())})
    teacher = Table({texts["u0"]: 0.98, texts["u1"]: 0.02, texts["u2"]: 0.96, texts["u3"]: 0.999})
    judge = Table({"Great film with great acting here.": 0.8, "The plot was awful and long.": 0.1,
                   "Awful boring worst film ever made.": 0.2, "Great music in it though honestly.": 0.9,
                   "Wonderful film but not sure at all.": 0.74})
    rule = AgreementRule(per_review=10)
    table, counts = proxy.agreement_set(unlabelled, teacher, judge, rule, cap=None, seed=0)
    assert table.select(["text", "label", "review_id"]).to_pylist() == [
        {"text": "Great film with great acting here.", "label": 1, "review_id": "u0"},
        {"text": "Awful boring worst film ever made.", "label": 0, "review_id": "u1"}]
    assert counts == {"reviews_scored": 4, "reviews_confident": 3, "candidate_sentences": 6, "agreeing_sentences": 2}
    with pytest.raises(InputError):
        AgreementRule(review_confidence=0.4)


def test_lexicon_judge(data):
    labelled = data[0]
    judge = LexiconJudge.fit(labelled.column("text"), labelled.column("label").to_numpy(), min_count=3)
    p = judge.predict_proba(["A great and wonderful film", "An awful boring mess", "zzz qqq", None, ""])
    assert p[0] > 0.9 and p[1] < 0.1 and np.isnan(p[2:]).all()
    again = LexiconJudge.fit(labelled.column("text"), labelled.column("label").to_numpy(), min_count=3)
    assert np.array_equal(again.predict_proba(labelled.column("text")), judge.predict_proba(labelled.column("text")))
    with pytest.raises(InputError):
        LexiconJudge.fit(["a b c"], [1])


def test_needs_validation_reviews(data):
    with pytest.raises(InputError):
        build_proxy_sets(data[0], ["nope"])
    sets = build_proxy_sets(data[0], pa.table({"review_id": ["r0", "r1"], "label": [0, 1]}))
    assert "unsup_agree" not in sets.sets and len(sets["reviews"]) == 2


def test_evaluate_numbers_on_known_scores():
    texts = ["one two three", " ".join(["w"] * 12), " ".join(["w"] * 30), " ".join(["x"] * 70)]
    sets = {"s": pa.table({"text": texts, "label": pa.array([1, 0, 0, 1], pa.int8())})}
    stub = Table(dict(zip(texts, [0.95, 0.95, 0.2, math.nan])))
    m = evaluate(stub, sets)["s"]
    assert m["n"] == 4 and m["unscored"] == 1
    assert m["accuracy"] == pytest.approx(0.5) and m["accuracy_scored"] == pytest.approx(2 / 3)
    # bins: confidence 0.95 (2 rows, 1 right) and 0.8 (1 row, right): 2/3 * 0.45 + 1/3 * 0.2
    assert m["ece"] == pytest.approx(2 / 3 * 0.45 + 1 / 3 * 0.2)
    assert m["confident_share"] == pytest.approx(0.5) and m["confident_accuracy"] == pytest.approx(0.5)
    assert m["mean_confidence"] == pytest.approx(0.9) and m["positive_share"] == pytest.approx(0.5)
    bands = m["bands"]
    assert list(bands) == ["1-10", "11-25", "26-60", "61+"]
    assert bands["1-10"] == {"n": 1, "accuracy": 1.0, "ece": pytest.approx(0.05)}
    assert bands["11-25"] == {"n": 1, "accuracy": 0.0, "ece": pytest.approx(0.95)}
    assert bands["61+"] == {"n": 1, "accuracy": 0.0, "ece": None}


def test_end_to_end_on_the_tiny_model(tiny_champion):
    from pipeline.ingest import lake
    from pipeline.serve.predictor import load_predictor

    wh = tiny_champion.wh
    labelled = lake.read_table(wh, "tiny", columns=["review_id", "text", "label"])
    val = proxy.validation_ids(wh, tiny_champion.champion)
    predictor = load_predictor(wh, tiny_champion.champion)
    unlabelled = reviews(60, seed=4, prefix="u", labelled=False)
    sets = build_proxy_sets(labelled, val, unlabelled=unlabelled, teacher=predictor, cap=30, seed=0,
                            rule=AgreementRule(review_confidence=0.6, sentence_margin=0.05))
    assert len(sets["reviews"]) == min(30, len(val)) and len(sets["sentences"]) > 0
    report = evaluate(predictor, sets)
    assert set(report) == set(sets.sets)
    for name, m in report.items():
        assert m["n"] == len(sets[name])
        if m["n"]:
            assert 0 <= m["accuracy"] <= 1 and 0 <= m["ece"] <= 1 and 0 <= m["confident_share"] <= 1
    again = build_proxy_sets(labelled, val, unlabelled=unlabelled, teacher=predictor, cap=30, seed=0,
                             rule=AgreementRule(review_confidence=0.6, sentence_margin=0.05))
    assert all(again[n].equals(sets[n]) for n in sets.sets)
