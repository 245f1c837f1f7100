"""Pretrain flow: prepare (subflow, with the unlabelled reviews) -> pretrain-word-vectors (task, cached).

    reviewflow pretrain --dataset imdb                 # the vectors the `default` preset starts from
    python -c "from flows.pretrain import pretrain_flow; pretrain_flow('imdb')"

The logic is :mod:`pipeline.train.pretrain`'s; this flow adds Prefect's cache (inputs + task source: the prep
id and every parameter), a retry for I/O, and artifacts: the corpus size, the time, and each probe word's
nearest neighbours (a glance tells whether the vectors learned anything). The vectors directory is itself
content-addressed, so a cache record whose directory was deleted rebuilds it.
"""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import INPUTS, TASK_SOURCE

from flows.artifacts import artifact_key
from flows.prepare import prepare_flow
from flows.retries import retry_unless_user_error
from pipeline.core.config import Warehouse, validate_name
from pipeline.core.storage import read_json
from pipeline.train import job
from pipeline.train.pretrain import MANIFEST, PretrainConfig, pretrain_dir, pretrain_word_vectors


@task(name="pretrain-word-vectors", task_run_name="pretrain-{prep_id}", cache_policy=INPUTS + TASK_SOURCE,
      retries=1, retry_delay_seconds=5, retry_condition_fn=retry_unless_user_error)
def pretrain_task(prep_id: str, prep_dir: str, warehouse: str, params: dict) -> str:
    """Skip-gram vectors for the prep's vocabulary from its train + unsup text; returns their directory."""
    logger = get_run_logger()
    wh = Warehouse.from_env(warehouse)
    res = pretrain_word_vectors(prep_dir, wh.pretrained, PretrainConfig(**params), log=logger.info)
    logger.info("%s vectors %s (%s s)", "reused" if res.cached else "trained", res.path, res.manifest["seconds"])
    return str(res.path)


def report_markdown(manifest: dict, path: str) -> str:
    p = manifest["params"]
    lines = [f"# word vectors for `{manifest['prep_id']}`", "", f"`{path}`", "",
             f"- {manifest['method']}: {p['dim']}-d, window {p['window']}, {p['negative']} negatives, "
             f"{p['epochs']} epochs, sample {p['sample']}",
             f"- corpus: {manifest['corpus_reviews']:,} reviews ({'+'.join(manifest['corpus_splits'])}), "
             f"{manifest['corpus_tokens']:,} tokens; validation never read",
             f"- {manifest['vocab_with_vector']:,} of {manifest['vocab_size']:,} vocabulary ids have a vector; "
             f"{manifest['seconds']:.0f} s", "", "| word | nearest neighbours |", "|---|---|"]
    lines += [f"| {w} | {', '.join(n)} |" for w, n in manifest["neighbours"].items()]
    return "\n".join(lines)


def run_pretrain(prep: dict, warehouse: str, cfg: PretrainConfig, dataset: str) -> str:
    """The pretrain task for a prepared dataset (refreshing a cache record whose directory is gone), plus
    its artifact; returns the vectors directory."""
    out = pretrain_dir(Warehouse.from_env(warehouse).pretrained, prep["prep_id"], cfg)
    run = pretrain_task if (out / MANIFEST).exists() else pretrain_task.with_options(refresh_cache=True)
    path = run(prep["prep_id"], prep["prep_dir"], warehouse, asdict(cfg))
    create_markdown_artifact(key=artifact_key("pretrain", dataset),
                             markdown=report_markdown(read_json(Path(path) / MANIFEST), path),
                             description=f"word vectors for {dataset}")
    return path


@flow(name="reviewflow-pretrain", flow_run_name="pretrain-{dataset}-{preset}")
def pretrain_flow(dataset: str, preset: str = "default", warehouse: str | None = None,
                  overrides: dict | None = None) -> dict:
    """Prepare ``dataset`` as ``preset`` does (with its unlabelled reviews) and pretrain the word vectors its
    encoder starts from. Training the preset afterwards reuses them."""
    logger = get_run_logger()
    validate_name(dataset, "dataset name")
    overrides, spec = job.plan(preset, overrides)
    if not spec.train.pretrained:
        logger.warning("preset %r does not use pretrained vectors (pretrained=null); pretraining anyway", preset)
    wh = Warehouse.from_env(warehouse).ensure()
    prep = prepare_flow(dataset=dataset, warehouse=str(wh.root), **spec.prepare)
    cfg = job.pretrain_config(spec)
    path = run_pretrain(prep, str(wh.root), cfg, dataset)
    return {"prep_id": prep["prep_id"], "vectors": path}
