"""Pretraining (word vectors on train + unsup text) and fine-tuning from them, on tiny data."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
import torch

from pipeline.core.config import Warehouse
from pipeline.core.errors import IntegrityError, InputError
from pipeline.prepare.config import PrepareConfig
from pipeline.prepare.job import prepare
from pipeline.prepare.manifest import read_manifest
from pipeline import registry
from pipeline.train.config import TrainConfig
from pipeline.train.job import pretrain_dataset, train_dataset
from pipeline.train.loop import train
from pipeline.train.pretrain import (MANIFEST, VECTORS, PretrainConfig, corpus_lines, load_vectors,
                                     pretrain_word_vectors)
from pipeline.model.weights import load_model
from synthetic import make_reviews, write_lake_dataset
from train_helpers import TINY_OVERRIDES, TINY_PREP, tiny_model

SMALL = PretrainConfig(dim=16, epochs=2, workers=1)


def lake_with_unsup(wh: Warehouse, dataset: str = "syn", n: int = 240, unsup: int = 200) -> None:
    write_lake_dataset(wh, dataset, make_reviews(n, seed=0, max_words=30))
    extra = make_reviews(unsup, seed=1, max_words=30, split="unsup", id_prefix="un")
    extra = extra.set_column(extra.schema.get_field_index("label"), "label", pa.nulls(unsup, pa.int8()))
    write_lake_dataset(wh, dataset, extra, part="part-1")


@pytest.fixture
def prep_dir(warehouse: Warehouse) -> Path:
    lake_with_unsup(warehouse)
    return prepare(warehouse, "syn", PrepareConfig(**TINY_PREP, include_unsup=True)).prep_dir


def test_corpus_is_train_and_unsup_never_validation(prep_dir: Path):
    man = read_manifest(prep_dir)
    lines, reviews, tokens = corpus_lines(prep_dir, man)
    assert reviews == man["counts"]["train"] + man["counts"]["unsup"] == len(lines)
    assert man["counts"]["val"] > 0
    from pipeline.train.loader import load_split
    expected = []
    for split in ("train", "unsup"):
        d = load_split(prep_dir, split)
        expected += [" ".join(map(str, row[:n])) for row, n in zip(np.asarray(d.ids), np.asarray(d.lengths))]
    assert lines == expected and tokens == sum(len(x.split()) for x in expected)


def test_pretrain_writes_checked_vectors_and_reuses_them(warehouse: Warehouse, prep_dir: Path):
    res = pretrain_word_vectors(prep_dir, warehouse.pretrained, SMALL, log=lambda *_: None)
    man = read_manifest(prep_dir)
    assert not res.cached and res.path.parent == warehouse.pretrained
    matrix = np.load(res.path / VECTORS)
    assert matrix.shape == (man["vocab_size"], 16) and np.isfinite(matrix).all()
    assert not matrix[0].any() and np.abs(matrix[2:]).sum(1).min() > 0     # <pad> zero, every token learned
    info = json.loads((res.path / MANIFEST).read_text())
    assert info["corpus_splits"] == ["train", "unsup"] and info["vocab_with_vector"] >= man["vocab_size"] - 2   # all but <pad> (and <unk>: none here)
    # the vectors learned the synthetic cue words: a positive word is nearer to positives than to negatives
    vocab = (prep_dir / "vocab.txt").read_text().split("\n")
    unit = matrix / np.linalg.norm(matrix, axis=1, keepdims=True).clip(1e-8)
    idx = {w: i for i, w in enumerate(vocab)}
    assert unit[idx["great"]] @ unit[idx["superb"]] > unit[idx["great"]] @ unit[idx["horrible"]]
    again = pretrain_word_vectors(prep_dir, warehouse.pretrained, SMALL, log=lambda *_: None)
    assert again.cached and again.path == res.path
    other = pretrain_word_vectors(prep_dir, warehouse.pretrained, PretrainConfig(dim=8, epochs=1, workers=1),
                                  log=lambda *_: None)
    assert other.path != res.path                      # parameters are part of the address
    scaled = load_vectors(res.path, man["prep_id"], man["vocab_size"], 16)
    assert scaled[1:].std() == pytest.approx(1.0, rel=1e-3)


def test_vectors_that_do_not_match_are_refused(warehouse: Warehouse, prep_dir: Path):
    res = pretrain_word_vectors(prep_dir, warehouse.pretrained, SMALL, log=lambda *_: None)
    man = read_manifest(prep_dir)
    with pytest.raises(IntegrityError, match="prep"):
        load_vectors(res.path, "another-prep", man["vocab_size"], 16)
    with pytest.raises(IntegrityError, match=r"needs finite \[\d+, 32\]"):
        load_vectors(res.path, man["prep_id"], man["vocab_size"], 32)
    m = np.load(res.path / VECTORS)
    m[3, 0] = np.nan
    np.save(res.path / VECTORS, m)
    with pytest.raises(IntegrityError, match="SHA-256"):
        load_vectors(res.path, man["prep_id"], man["vocab_size"], 16)
    with pytest.raises(InputError, match="reviewflow pretrain"):
        load_vectors(warehouse.root / "nowhere", man["prep_id"], man["vocab_size"], 16)


def test_fine_tuning_starts_from_the_vectors_and_unfreezes_later(warehouse: Warehouse, prep_dir: Path, tmp_path):
    res = pretrain_word_vectors(prep_dir, warehouse.pretrained, SMALL, log=lambda *_: None)
    man = read_manifest(prep_dir)
    start = torch.from_numpy(load_vectors(res.path, man["prep_id"], man["vocab_size"], 16))
    mcfg = tiny_model(embed_dim=16)
    frozen = TrainConfig(epochs=1, batch_size=32, lr=0.01, pretrained="word2vec", freeze_embed_epochs=1, seed=0)
    out = train(prep_dir, frozen, tmp_path / "frozen", progress=False, model=mcfg, vectors=res.path)
    net = load_model(out.weights, out.model_config, torch.device("cpu"))
    assert torch.equal(net.embed.weight.detach(), start)           # frozen for its only epoch: exactly the vectors
    assert out.metrics["pretrained"] == {"path": str(res.path),
                                         "vectors_sha256": json.loads((res.path / MANIFEST).read_text())[
                                             "vectors_sha256"]}
    tuned = TrainConfig(epochs=2, batch_size=32, lr=0.01, pretrained="word2vec", freeze_embed_epochs=1,
                        embed_lr=0.1, seed=0)
    out2 = train(prep_dir, tuned, tmp_path / "tuned", progress=False, model=mcfg, vectors=res.path)
    net2 = load_model(out2.weights, out2.model_config, torch.device("cpu"))
    moved = (net2.embed.weight.detach() - start).abs().amax().item()
    assert 0 < moved < 0.1 * 2 * 0.01 * 16 + 0.05      # unfrozen in epoch 2, at a tenth of the lr
    with pytest.raises(InputError, match="needs its word vectors"):
        train(prep_dir, frozen, tmp_path / "none", progress=False, model=mcfg)
    with pytest.raises(InputError, match="pretrained"):
        train(prep_dir, frozen, tmp_path / "ngram", progress=False, vectors=res.path,
              model=tiny_model(encoder="none", ngram_buckets=97))


def test_train_dataset_pretrains_once_and_registers_where_it_started(warehouse: Warehouse):
    lake_with_unsup(warehouse)
    over = dict(TINY_OVERRIDES, include_unsup=True, pretrained="word2vec", epochs=1, ngram_buckets=0)
    first = pretrain_dataset(warehouse, "syn", "default", over, log=lambda *_: None)
    assert not first["cached"]
    out = train_dataset(warehouse, "syn", "default", over, progress=False)
    mv = registry.get(warehouse, out["version"])
    assert mv.metrics["final"]["pretrained"]["path"] == first["vectors"]
    assert "word2vec" in (mv.path / "MODEL_CARD.md").read_text()
    assert mv.config["train"]["pretrained"] == "word2vec"
    assert len(list(warehouse.pretrained.iterdir())) == 1                 # reused, not pretrained twice


@pytest.mark.subprocess
def test_cli_pretrain_prints_where_the_vectors_are_and_what_they_learned(warehouse: Warehouse):
    import subprocess
    import sys

    lake_with_unsup(warehouse)
    cli = str(Path(sys.executable).with_name("reviewflow"))
    sets = [f"--set={k}={json.dumps(v)}" for k, v in dict(embed_dim=16, max_len=32, min_freq=1, max_vocab=0,
                                                          val_fraction=0.25).items()]
    out = subprocess.run([cli, "pretrain", "-d", "syn", *sets, "--no-prefect", "-w", str(warehouse.root)],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert "pretrained word vectors" in out.stdout and "near 'great'" in out.stdout
    (vectors,) = list(warehouse.pretrained.iterdir())
    assert str(vectors) in out.stdout and (vectors / VECTORS).exists()
    bad = subprocess.run([cli, "pretrain", "-d", "syn", "--set", "embed_dim=0", "--no-prefect", "-w",
                          str(warehouse.root)], capture_output=True, text=True, timeout=300)
    assert bad.returncode == 2 and "embed_dim" in bad.stderr
