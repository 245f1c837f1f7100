"""Pretraining: skip-gram word vectors on a prep's unlabelled + training text, the start for an encoder.

    res = pretrain_word_vectors(prep_dir, wh.pretrained, PretrainConfig(dim=128))
    matrix = load_vectors(res.path, prep_dir, embed_dim=128)      # [vocab_size, 128], rows = the prep's ids

Why word vectors and not a language model: on a 2-core CPU a recurrent LM over the 75k IMDb reviews costs
hours, while gensim's skip-gram with negative sampling (Mikolov et al. 2013; compiled, multi-threaded) reads
the ~17M tokens five times in about two minutes. Measured on IMDb (issue 11): a BiGRU initialised from such
vectors gains ~2 points over random embeddings.

The corpus is the prep's ``train`` and ``unsup`` splits (``prepare --include-unsup``), as token ids, so the
vectors line up with the prep's vocabulary by construction; ``val`` and ``test`` text is never read, so
validation stays held out. The result is a content-addressed directory (prep id + parameters + this code),
written atomically and reused when it exists:

    <warehouse>/pretrained/<prep-id>-w2v-<digest>/
        vectors.npy      float32 [vocab_size, dim]; row i is token id i (row 0, <pad>, is zeros)
        manifest.json    prep id, parameters, corpus size, seconds, SHA-256 of vectors.npy, nearest neighbours

Readers check the SHA-256, the shape and the prep id before use (:func:`load_vectors`).
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from pipeline.core.errors import IntegrityError, InputError
from pipeline.core.options import at_least, between, check_options
from pipeline.core.storage import atomic_dir, read_json, sha256_file, write_json_atomic
from pipeline.prepare.manifest import read_manifest, verified_vocab, verify_prep
from pipeline.train.loader import load_split

VECTORS, MANIFEST = "vectors.npy", "manifest.json"
CORPUS_SPLITS = ("train", "unsup")            # never val/test: validation stays held out
PROBES = ("great", "awful", "boring", "funny", "not", "worst")


@dataclass
class PretrainConfig:
    dim: int = 128              # vector size = the model's embed_dim
    window: int = 5             # context words on each side
    negative: int = 5           # negative samples per positive pair
    epochs: int = 5             # passes over the corpus
    min_count: int = 1          # every vocabulary token that occurs (the prep's vocabulary is already filtered)
    sample: float = 1e-4        # down-sampling of frequent tokens
    seed: int = 0
    workers: int = 0            # gensim threads; 0 = one per CPU core (threads make the result run-dependent)

    def __post_init__(self):
        check_options(self, {"dim": at_least(1), "window": at_least(1), "negative": at_least(1),
                             "epochs": at_least(1), "min_count": at_least(1), "sample": between(0, 1),
                             "seed": between(0, 2**31 - 1), "workers": at_least(0)}, {})

    def key(self) -> dict:
        """What decides the vectors (the thread count aside)."""
        return {k: v for k, v in asdict(self).items() if k != "workers"}


@dataclass
class PretrainResult:
    path: Path
    cached: bool
    manifest: dict


def _code_version() -> str:
    return hashlib.sha256(Path(__file__).read_bytes()).hexdigest()[:12]


def pretrain_dir(out_root: Path, prep_id: str, cfg: PretrainConfig) -> Path:
    """The content-addressed directory of these vectors: prep id + parameters + this module's code."""
    key = json.dumps({"prep": prep_id, "cfg": cfg.key(), "code": _code_version()}, sort_keys=True)
    return Path(out_root) / f"{prep_id}-w2v-{hashlib.sha256(key.encode()).hexdigest()[:10]}"


def corpus_lines(prep_dir: Path, manifest: dict) -> tuple[list[str], int, int]:
    """(one line of space-separated token ids per review of ``CORPUS_SPLITS``, reviews, tokens), vectorised:
    each review's real ids are cast to strings and joined by pyarrow, no Python loop over tokens."""
    lines, reviews, tokens = [], 0, 0
    for split in CORPUS_SPLITS:
        if not manifest["counts"].get(split):
            continue
        data = load_split(prep_dir, split)
        ids, lengths = np.asarray(data.ids), np.asarray(data.lengths).astype(np.int64)
        mask = np.arange(ids.shape[1])[None, :] < lengths[:, None]
        if data.pad_side == "left":
            mask = mask[:, ::-1]
        flat = pa.array(ids[mask].astype(np.int32)).cast(pa.string())
        offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int32)
        lines.extend(pc.binary_join(pa.ListArray.from_arrays(pa.array(offsets), flat), " ").to_pylist())
        reviews, tokens = reviews + len(lengths), tokens + int(lengths.sum())
    return lines, reviews, tokens


def pretrain_word_vectors(prep_dir: str | Path, out_root: str | Path, cfg: PretrainConfig | None = None,
                          log=print) -> PretrainResult:
    """Train (or reuse) skip-gram vectors for the vocabulary of ``prep_dir``; returns where they are.

    Raises ``InputError`` when the prep has no training text, ``IntegrityError`` when its shards fail their
    checksums."""
    # deferred: gensim (and scipy) load only when vectors are trained, never when a model scores
    from gensim.models import Word2Vec

    cfg = cfg or PretrainConfig()
    prep_dir = Path(prep_dir)
    manifest = verify_prep(prep_dir, [s for s in CORPUS_SPLITS if s in read_manifest(prep_dir)["splits"]])
    out = pretrain_dir(Path(out_root), manifest["prep_id"], cfg)
    if (out / MANIFEST).exists():
        return PretrainResult(out, True, read_json(out / MANIFEST))
    t0 = time.perf_counter()
    lines, reviews, tokens = corpus_lines(prep_dir, manifest)
    if not tokens:
        raise InputError(f"prep {prep_dir.name} has no train/unsup tokens to pretrain on", path=str(prep_dir))
    log(f"pretraining {cfg.dim}-d skip-gram vectors on {reviews:,} reviews ({tokens:,} tokens), "
        f"{cfg.epochs} epochs")
    vocab = verified_vocab(prep_dir, manifest)
    out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_dir(out) as tmp:
        corpus = tmp / "corpus.txt"
        corpus.write_text("\n".join(lines) + "\n")
        del lines
        model = Word2Vec(corpus_file=str(corpus), vector_size=cfg.dim, window=cfg.window, negative=cfg.negative,
                         epochs=cfg.epochs, min_count=cfg.min_count, sample=cfg.sample, seed=cfg.seed, sg=1,
                         workers=cfg.workers or os.cpu_count() or 1)
        corpus.unlink()
        matrix = np.zeros((len(vocab), cfg.dim), np.float32)
        known = np.array([int(k) for k in model.wv.index_to_key], np.int64)
        matrix[known] = model.wv.vectors
        matrix[0] = 0.0
        np.save(tmp / VECTORS, matrix, allow_pickle=False)
        info = {"prep_id": manifest["prep_id"], "params": cfg.key(), "code_version": _code_version(),
                "method": "word2vec skip-gram, negative sampling (gensim)", "corpus_splits": list(CORPUS_SPLITS),
                "corpus_reviews": reviews, "corpus_tokens": tokens, "vocab_size": len(vocab),
                "vocab_with_vector": int(len(known)), "seconds": round(time.perf_counter() - t0, 1),
                "vectors_sha256": sha256_file(tmp / VECTORS), "neighbours": neighbours(matrix, vocab)}
        write_json_atomic(tmp / MANIFEST, info)
    log(f"pretrained in {info['seconds']:.0f} s -> {out}")
    return PretrainResult(out, False, info)


def neighbours(matrix: np.ndarray, vocab: list[str], k: int = 5) -> dict[str, list[str]]:
    """The ``k`` nearest tokens (cosine) of a few probe words: a glance tells whether the vectors learned."""
    index = {tok: i for i, tok in enumerate(vocab)}
    unit = matrix / np.maximum(np.linalg.norm(matrix, axis=1, keepdims=True), 1e-8)
    out = {}
    for word in PROBES:
        if word in index:
            sims = unit @ unit[index[word]]
            sims[[0, 1, index[word]]] = -2.0                 # not <pad>, <unk> or itself
            out[word] = [vocab[i] for i in np.argsort(-sims)[:k]]
    return out


def load_vectors(path: str | Path, prep_id: str, vocab_size: int, embed_dim: int) -> np.ndarray:
    """The checked vector matrix of ``path`` for a model on prep ``prep_id``, scaled to unit standard deviation
    (the scale of a randomly initialised embedding, so the encoder trains in its usual regime).

    Raises ``IntegrityError`` when the file does not match its recorded SHA-256, has another shape, is for
    another prep, or holds non-finite values; ``NotFoundError``-style ``InputError`` when it is missing."""
    path = Path(path)
    try:
        info = read_json(path / MANIFEST)
    except (OSError, ValueError) as exc:
        raise InputError(f"no pretrained vectors at {path} ({type(exc).__name__}); run `reviewflow pretrain`",
                         path=str(path)) from None
    if info.get("prep_id") != prep_id:
        raise IntegrityError(f"{path} holds vectors for prep {info.get('prep_id')!r}, not {prep_id!r}")
    if sha256_file(path / VECTORS) != info.get("vectors_sha256"):
        raise IntegrityError(f"{path / VECTORS} does not match the SHA-256 in its manifest; delete {path} and "
                             "pretrain again")
    matrix = np.load(path / VECTORS, allow_pickle=False)
    if matrix.shape != (vocab_size, embed_dim) or not np.isfinite(matrix).all():
        raise IntegrityError(f"{path / VECTORS} is {matrix.shape} (finite: {bool(np.isfinite(matrix).all())}); "
                             f"a model on this prep needs finite [{vocab_size}, {embed_dim}] vectors")
    return (matrix / max(float(matrix[1:].std()), 1e-8)).astype(np.float32)
