"""Self-training (issue 20 item 2, :mod:`pipeline.train.selftrain`): spans of the prep's unlabelled reviews only,
labelled where a registered teacher is confident on the span and on its review and the two agree, balanced;
deterministic under a seed, in the rows and in the weights a run trains with them."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest
from safetensors.torch import load_file
from synthetic import make_review, make_reviews, write_lake_dataset
from train_helpers import TINY_PREP, tiny_model

from pipeline.core.config import Warehouse
from pipeline.core.errors import InputError
from pipeline.prepare.config import PrepareConfig
from pipeline.prepare.job import prepare
from pipeline.serve.predictor import load_predictor
from pipeline.train.config import TrainConfig, model_key_of
from pipeline.train.loader import load_split
from pipeline.train.loop import train
from pipeline.train.register import register
from pipeline.train.selftrain import pseudo_split

CFG = TrainConfig(epochs=2, batch_size=16, lr=0.01, threads=1)


def multi_sentence(table: pa.Table, seed: int) -> pa.Table:
    """``table`` with each text replaced by 2-5 sentences of its label's cues."""
    rng = np.random.default_rng(seed)
    labels = table.column("label").to_numpy(zero_copy_only=False)
    texts = [" ".join(make_review(rng, int(y), 4, 12) for _ in range(int(rng.integers(2, 6)))) for y in labels]
    return table.set_column(table.schema.get_field_index("text"), "text", pa.array(texts, pa.string()))


@pytest.fixture(scope="module")
def teacher(tmp_path_factory):
    """A lake of 200 labelled and 120 unlabelled reviews, its prep with the unlabelled split, and a registered
    teacher trained on it: (warehouse, prep dir, teacher version, the unlabelled reviews' ids)."""
    root = tmp_path_factory.mktemp("selftrain")
    wh = Warehouse(root / "wh").ensure()
    labelled = multi_sentence(make_reviews(200, seed=1), seed=2)
    unlabelled = multi_sentence(make_reviews(120, seed=3, split="unsup", id_prefix="un"), seed=4)
    unlabelled = unlabelled.set_column(unlabelled.schema.get_field_index("label"), "label",
                                       pa.nulls(unlabelled.num_rows, pa.int8()))
    write_lake_dataset(wh, "mixed", pa.concat_tables([labelled, unlabelled]))
    prep_dir = prepare(wh, "mixed", PrepareConfig(**(TINY_PREP | dict(max_len=256, include_unsup=True)))).prep_dir
    run = train(prep_dir, CFG, root / "teacher", progress=False, model=tiny_model())
    version = register(wh, run, preset="tiny")
    return wh, prep_dir, version, set(unlabelled.column("review_id").to_pylist())


def test_rows_come_from_unlabelled_reviews_where_the_teacher_agrees_with_itself(teacher):
    wh, prep_dir, version, unsup_ids = teacher
    rows, info = pseudo_split(prep_dir, version, per_review=3, confidence=0.6, seed=0)
    assert 0 < info["rows"] == len(rows) <= info["usable"] <= info["agreed"] <= info["spans"]
    assert info["teacher"] == version and info["reviews"] == len(unsup_ids)
    assert set(rows.review_ids) <= unsup_ids                                   # never a labelled review
    assert not set(rows.review_ids) & set(load_split(prep_dir, "train").review_ids)
    assert rows.labels.sum() * 2 == len(rows)                                  # balanced
    # each row's label is the side the teacher takes on the row itself (as the prep encodes it)
    scorer = load_predictor(wh, version)
    vocab = scorer.preprocessor.vocab
    texts = [" ".join(vocab[int(t)] for t in rows.ids[k, :rows.lengths[k]]) for k in range(len(rows))]
    p = scorer.predict_proba(texts)
    assert np.mean((p >= 0.5) == (rows.labels == 1)) > 0.9


def test_the_rows_are_deterministic_under_a_seed(teacher):
    _, prep_dir, version, _ = teacher
    a, _ = pseudo_split(prep_dir, version, per_review=2, confidence=0.6, seed=5)
    b, _ = pseudo_split(prep_dir, version, per_review=2, confidence=0.6, seed=5)
    c, _ = pseudo_split(prep_dir, version, per_review=2, confidence=0.6, seed=6)
    assert np.array_equal(a.ids, b.ids) and np.array_equal(a.labels, b.labels) and a.review_ids == b.review_ids
    assert not (a.ids.shape == c.ids.shape and np.array_equal(a.ids, c.ids))


def test_a_teacher_named_by_alias_or_a_prep_without_unlabelled_reviews_is_refused(teacher, tmp_path):
    wh, prep_dir, version, _ = teacher
    with pytest.raises(InputError, match="must name a version"):
        pseudo_split(prep_dir, "champion", per_review=2, confidence=0.9, seed=0)
    bare = prepare(wh, "mixed", PrepareConfig(**(TINY_PREP | dict(max_len=200)))).prep_dir
    with pytest.raises(InputError, match="include-unsup"):
        pseudo_split(bare, version, per_review=2, confidence=0.9, seed=0)
    with pytest.raises(InputError, match="self_train_teacher"):
        TrainConfig(self_train=0.5)
    with pytest.raises(InputError, match="span_aug"):
        TrainConfig(self_train=0.5, self_train_teacher=version, span_aug=0.2)


def test_a_self_trained_run_is_byte_identical_under_its_seed_and_keys_its_teacher(teacher, tmp_path):
    _, prep_dir, version, _ = teacher
    cfg = TrainConfig(**{**CFG.__dict__, "self_train": 0.5, "self_train_teacher": version,
                         "self_train_confidence": 0.6})
    a = train(prep_dir, cfg, tmp_path / "a", progress=False, model=tiny_model())
    b = train(prep_dir, cfg, tmp_path / "b", progress=False, model=tiny_model())
    assert load_file(a.weights).keys() == load_file(b.weights).keys()
    assert all(np.array_equal(load_file(a.weights)[k].numpy(), load_file(b.weights)[k].numpy())
               for k in load_file(a.weights))
    assert a.metrics["self_train"]["rows"] > 0 and a.metrics["self_train"]["teacher"] == version
    assert model_key_of(cfg.__dict__)["self_train_teacher"] == version
    assert "self_train_teacher" not in model_key_of(CFG.__dict__)     # off: runs from before keep their key


def _files(root) -> dict:
    import hashlib

    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("overrides,error", [
    ({"self_train_teacher": "champion"}, "must name a version"),
    ({"self_train_teacher": "v9999-default-nope"}, "v9999-default-nope"),
    ({"include_unsup": False}, "include_unsup"),
])
def test_a_bad_self_training_request_fails_before_any_data_is_read(teacher, overrides, error):
    from pipeline.core.errors import ReviewflowError
    from pipeline.train.job import train_dataset

    wh, _, version, _ = teacher
    before = _files(wh.root)
    with pytest.raises(ReviewflowError, match=error):
        train_dataset(wh, "mixed", "default", device="cpu", progress=False,
                      overrides={"self_train": 0.5, "self_train_teacher": version, **overrides})
    assert _files(wh.root) == before
