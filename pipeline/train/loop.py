"""One training loop for the sentiment models, readable in a sitting (nanoGPT-style).

* device ``auto``: cuda, then mps, then cpu; on CUDA bf16 autocast, pinned memory, non-blocking copies
  (:mod:`pipeline.model.device`);
* length-bucketed batches trimmed to their longest review (``pipeline.train.loader.iter_batches``);
* ``Adam(fused=True)`` where the device supports it (falls back to the foreach implementation);
* the model computes its own loss (``SentimentModel.forward(ids, lengths, labels)``); the loop steps;
* gradient clipping, early stopping on validation loss, best checkpoint (safetensors);
* resume after a crash: a resumable checkpoint (model, optimizer, epoch, RNG state, history) is written
  atomically at the end of every epoch; running again with the same ``out_dir`` continues from it
  (:mod:`pipeline.train.checkpoint` decides what can be reused);
* checked inputs: the shards are verified against the prep manifest (SHA-256 of every file, ~0.04 s for
  the 25k IMDb reviews, under 0.1% of an epoch) and range-checked as they load;
* one run per run directory (:func:`pipeline.train.rundir.run_lock`);
* seeded determinism on CPU, a tqdm progress bar, per-epoch metrics (loss, accuracy, seconds,
  tokens/s), and a ``max_seconds`` budget that stops cleanly between steps;
* after the last epoch, the best checkpoint is calibrated: a temperature fitted on the validation logits
  (:mod:`pipeline.model.calibration`; ECE before/after), and measured on short texts too (the validation
  reviews cut to their first and last 20 tokens, :mod:`pipeline.train.short_texts`);
* short-span augmentation (``TrainConfig.span_aug > 0``, :mod:`pipeline.train.augment`): batches of 1-3
  sentence spans of the training reviews, labelled as their review, interleaved with the reviews' batches,
  their loss weighted by ``span_aug``; validation and the best checkpoint stay on the full validation reviews.

Multi-process (``reviewflow train --nproc N``): the same loop runs on every rank that ``torchrun`` starts
(:mod:`pipeline.train.ddp_main`), with a :class:`~pipeline.train.distributed.DistContext`: the model is wrapped
in DistributedDataParallel, each rank steps through its share of the bucketed batches, and rank 0 alone
evaluates, checkpoints and writes the result while the others wait for its verdict after every epoch.

No Prefect here: a GPU box with only torch can run it (``reviewflow train --no-prefect``). ``on_epoch``
lets a caller (the Prefect flow) watch progress.
"""

from __future__ import annotations

import contextlib
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from tqdm.auto import tqdm

from pipeline.core.errors import InputError
from pipeline.core.options import option_error
from pipeline.core.storage import read_json, sha256_file, write_json_atomic
from pipeline.prepare.manifest import read_manifest, verify_prep
from pipeline.model.calibration import (LENGTH_BANDS, band_report, banded_probs, calibrated_probs, calibration_report,
                                        expected_calibration_error, fit_band_temperatures, fit_temperature,
                                        reliability_bins)
from pipeline.train.augment import epoch_batches, span_split, span_steps
from pipeline.train.selftrain import pseudo_split
from pipeline.train.checkpoint import (LoopState, reusable_result, restore, save_checkpoint, save_weights, say,
                                       usable_checkpoint)
from pipeline.train.config import BEST, CHECKPOINT, RESULT, TrainConfig, TrainResult
from pipeline.train.convex import design_matrix, lbfgs_epoch, make_lbfgs
from pipeline.model.device import autocast, environment, pick_device, to_device
from pipeline.train.distributed import (DistContext, any_rank, seed_epoch, share_stop, sum_over_ranks,
                                        wrap_model, writer_first)
from pipeline.train.loader import SplitData, iter_batches, load_split, steps_per_rank
from pipeline.model.network import NGRAM_ONLY, ModelConfig, SentimentModel
from pipeline.train.pretrain import load_vectors
from pipeline.train.rundir import run_lock
from pipeline.train.short_texts import SHORT_HEAD, SHORT_TAIL, shorten
from pipeline.model.weights import load_model

EVAL_BATCH = 256          # evaluation batch size at least (no gradients: larger batches are cheaper)
LBFGS_ITERS_PER_EPOCH = 100


def make_optimizer(model: torch.nn.Module, cfg: TrainConfig, device: torch.device) -> torch.optim.Optimizer:
    """Adam (AdamW with weight decay), fused where the device has it: the plain implementation spends
    about half of each CPU step updating the big embedding; fused is much faster. Falls back quietly.
    ``optimizer="lbfgs"``: full-batch L-BFGS of the n-gram bag (:mod:`pipeline.train.convex`)."""
    if cfg.optimizer == "lbfgs":
        return make_lbfgs(model.ngrams, LBFGS_ITERS_PER_EPOCH)
    cls = torch.optim.AdamW if cfg.weight_decay else torch.optim.Adam
    own_lr = cfg.embed_lr != 1.0        # discriminative fine-tuning: the (pretrained) embedding steps more gently
    ngram = [p for n, p in model.named_parameters() if n.startswith("ngrams.")]
    embed = [p for n, p in model.named_parameters() if own_lr and n.startswith("embed.")]
    rest = [p for n, p in model.named_parameters() if not n.startswith("ngrams.") and not (own_lr and
                                                                                          n.startswith("embed."))]
    # the n-gram bag averages hundreds of weights per review, so it needs a much larger step than the encoder
    groups = [{"params": rest}] + ([{"params": ngram, "lr": cfg.ngram_lr, "weight_decay": 0.0}] if ngram else [])
    groups += [{"params": embed, "lr": cfg.lr * cfg.embed_lr}] if embed else []
    kw = dict(lr=cfg.lr, weight_decay=cfg.weight_decay)
    try:
        opt = cls(groups, fused=True, **kw)
        opt.fused_ok = True
    except (RuntimeError, TypeError, ValueError):
        opt = cls(groups, foreach=True, **kw)
        opt.fused_ok = False
    return opt


def make_scheduler(opt, cfg: TrainConfig, steps_per_epoch: int):
    if cfg.optimizer == "lbfgs":
        return None     # its line search picks every step
    total = max(1, cfg.epochs * steps_per_epoch)
    if cfg.lr_schedule == "onecycle":
        peaks = [g["lr"] for g in opt.param_groups]
        steps = max(total + 1, 4)   # warm up over 10% of the steps, but at least 2 (OneCycleLR divides by it)
        return torch.optim.lr_scheduler.OneCycleLR(opt, peaks, total_steps=steps, pct_start=max(0.1, 2 / steps))
    if cfg.lr_schedule == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=total + 1)
    return None     # constant (TrainConfig accepts only LR_SCHEDULES)


def model_config_for(prep_dir: Path, model: ModelConfig | dict | None) -> ModelConfig:
    """Fill the fields the data decides (vocabulary size, length, pad side) from the prep manifest."""
    man = read_manifest(prep_dir)
    params = man.get("params", {})
    base = model.to_dict() if isinstance(model, ModelConfig) else dict(model or {})
    base.update(vocab_size=int(man["vocab_size"]),
                max_len=int(params.get("max_len", base.get("max_len", 512))),
                pad_side=params.get("pad_side", base.get("pad_side", "right")))
    return ModelConfig.from_dict(base)


def load_training_data(prep_dir: Path, man: dict) -> tuple[SplitData, SplitData, SplitData | None]:
    """The verified train/val (and test, when labelled) splits: every shard file's SHA-256 against the
    manifest and every id/length/label in range (``IntegrityError`` naming the file), and both classes in
    train and val (``InputError``: prepare refuses such data, this catches older preps)."""
    splits = ["train", "val"] + (["test"] if man.get("counts", {}).get("test") else [])
    verify_prep(prep_dir, splits)
    data = {name: load_split(prep_dir, name) for name in splits}
    for name in ("train", "val"):
        labels = np.asarray(data[name].labels)
        if (labels < 0).any() and name == "train":
            raise InputError("train split has unlabelled rows (label -1)", path=str(prep_dir))
        found = {int(c): int(n) for c, n in zip(*np.unique(labels, return_counts=True))}
        if found.get(0, 0) == 0 or found.get(1, 0) == 0:
            raise InputError(f"the {name} split of prep {prep_dir.name} needs rows of both classes (0 and 1), "
                             f"found {found or 'no rows'}; add labelled reviews of the missing class and "
                             "prepare again", path=str(prep_dir))
    test = data.get("test")
    if test is not None and not (len(test.labels) and (np.asarray(test.labels) >= 0).all()):
        test = None
    return data["train"], data["val"], test


# ------------------------------------------------------------------------------------------ evaluation
@torch.inference_mode()
def evaluate(model: SentimentModel, data: SplitData, batch_size: int, device: torch.device) -> dict:
    """Loss (mean BCE of the model's logit), accuracy, F1 and confusion matrix ([[tn, fp], [fn, tp]]) over a
    split; wide & deep models also report each half's accuracy alone.

    Batches are trimmed to their longest review, except for the lineage baseline (``exact_lengths=False``),
    whose output depends on its full front padding."""
    model.eval()
    loss_sum, n, tp, tn, fp, fn = 0.0, 0, 0, 0, 0, 0
    halves = {"encoder": 0, "ngram": 0}          # correct answers of each half alone (wide & deep models)
    exact = model.cfg.exact_lengths
    for batch in iter_batches(data, batch_size, shuffle=False, bucket=exact, trim=exact):
        ids, lengths, y = to_device(batch, device)
        with autocast(device):
            deep, wide, _ = model.forward_parts(ids, lengths)
        logits = model.combine(deep.float(), wide)
        loss_sum += torch.nn.functional.binary_cross_entropy_with_logits(logits, y, reduction="sum").item()
        pred, y = logits > 0, y > 0.5
        tp += int((pred & y).sum()); tn += int((~pred & ~y).sum())
        fp += int((pred & ~y).sum()); fn += int((~pred & y).sum())
        if wide is not None:
            halves["encoder"] += int(((deep > 0) == y).sum())
            halves["ngram"] += int(((wide > 0) == y).sum())
        n += len(y)
    n = max(n, 1)
    f1 = 2 * tp / max(2 * tp + fp + fn, 1)
    out = {"loss": loss_sum / n, "accuracy": (tp + tn) / n, "f1": f1, "n": n, "confusion": [[tn, fp], [fn, tp]]}
    if model.ngrams is not None:
        out.update({f"accuracy_{k}": v / n for k, v in halves.items()})
    return out


@torch.inference_mode()
def predict_logits(model: SentimentModel, data: SplitData, batch_size: int,
                   device: torch.device) -> tuple[np.ndarray, np.ndarray]:
    """(logits float64, labels int8) of every row of ``data``, in the split's row order, batched as
    :func:`evaluate` batches (the same logits it scores)."""
    model.eval()
    exact = model.cfg.exact_lengths
    logits = np.zeros(len(data), np.float64)
    for batch in iter_batches(data, batch_size, shuffle=False, bucket=exact, trim=exact):
        ids, lengths, _ = to_device(batch, device)
        with autocast(device):
            deep, wide, _ = model.forward_parts(ids, lengths)
        logits[batch.index] = model.combine(deep.float(), wide).float().cpu().numpy()
    return logits, np.asarray(data.labels, np.int8)


def calibration_metrics(model: SentimentModel, val_data: SplitData, batch_size: int, device: torch.device,
                        prep_dir: Path | None = None, seed: int = 0) -> dict:
    """What the version records about trusting its scores, all on the validation split: the fitted
    ``temperature``; ``val_ece_before`` / ``val_ece_after`` (15 bins; ``val_ece_after_crossfit`` with the
    temperature fitted on the other half of the rows), the NLL after scaling, ``reliability`` bins for the
    diagram; and for the reviews cut to their first and last 20 tokens, ``val_accuracy_short`` (the label at
    0.5 does not depend on the temperature) and ``val_ece_short`` (after scaling: does T carry over?)."""
    logits, labels = predict_logits(model, val_data, batch_size, device)
    known = labels >= 0                      # a row without a label (-1) says nothing about calibration
    y = labels[known]
    report = calibration_report(logits[known], y)
    short = predict_logits(model, shorten(val_data), batch_size, device)[0][known]
    # A temperature fitted on whole reviews does not carry over to short texts (measured on IMDb: T 0.59 took
    # the short-text ECE from 3.0 % to 9.5 %), so short texts get their own: the predictor uses it for texts of
    # at most SHORT_HEAD + SHORT_TAIL tokens.
    t_short = fit_temperature(short, y)
    whole = (logits[known], y, np.asarray(val_data.lengths)[known])
    bands = length_band_calibration(model, val_data, (short, y), whole, report["temperature"], batch_size, device,
                                    prep_dir, seed)
    return bands | {"temperature": report["temperature"], "val_ece_before": report["ece_before"],
            "val_ece_after": report["ece_after"], "val_ece_after_crossfit": report["ece_after_crossfit"],
            "val_loss_calibrated": report["nll_after"], "reliability": report["bins"],
            "val_accuracy_short": float(np.mean((short > 0) == (y == 1))),
            "temperature_short": t_short,
            "val_ece_short_before": expected_calibration_error(calibrated_probs(short), y),
            "val_ece_short_full_t": expected_calibration_error(calibrated_probs(short, report["temperature"]), y),
            "val_ece_short": expected_calibration_error(calibrated_probs(short, t_short), y),
            "short_tokens": [SHORT_HEAD, SHORT_TAIL]}


VAL_SPANS_PER_REVIEW = 2       # sentences/spans drawn per validation review to fit the short-text temperatures


def _val_spans(prep_dir: Path | None, val_data: SplitData, seed: int) -> SplitData | None:
    """Sentences and 2-3 sentence spans of the validation reviews (:func:`span_split`), or None without a lake to
    read their texts from (a prep copied without its warehouse, a test prep)."""
    if prep_dir is None:
        return None
    try:
        spans, _info = span_split(prep_dir, val_data, per_review=VAL_SPANS_PER_REVIEW, seed=seed)
    except (InputError, OSError, KeyError):
        return None
    return spans if len(spans) else None


def length_band_calibration(model: SentimentModel, val_data: SplitData, cut: tuple[np.ndarray, np.ndarray],
                            whole: tuple[np.ndarray, np.ndarray, np.ndarray], temperature: float, batch_size: int, device: torch.device, prep_dir: Path | None,
                            seed: int) -> dict:
    """A temperature per text-length band (:data:`LENGTH_BANDS` tokens; longer: the whole reviews' T), fitted on
    held-out texts of every length: the validation reviews' sentences and spans (read from the lake), their
    first/last 20-token cuts (``cut``: logits, labels) and the reviews themselves (``whole``: logits, labels,
    lengths; a short review counts in its band). A one-line text gets the confidence short texts earned, not a whole
    review's. -> ``temperature_bands`` and, per band, accuracy and ECE of those short texts and of the whole
    reviews with the whole-review T and with the band's own (``calibration_bands``; bins for the diagram)."""
    spans = _val_spans(prep_dir, val_data, seed)
    logits, labels = [cut[0], whole[0]], [cut[1], whole[1]]
    lengths = [np.asarray(shorten(val_data).lengths)[np.asarray(val_data.labels) >= 0], whole[2]]
    if spans is not None:
        z, y = predict_logits(model, spans, batch_size, device)
        logits.append(z[y >= 0]), labels.append(y[y >= 0]), lengths.append(np.asarray(spans.lengths)[y >= 0])
    z, y, n = np.concatenate(logits), np.concatenate(labels), np.concatenate(lengths)
    bands = fit_band_temperatures(z, y, n, temperature)
    banded, whole_t = banded_probs(z, n, bands, temperature), calibrated_probs(z, temperature)
    report = [b | {"ece_whole_t": w["ece"]} for b, w in zip(band_report(banded, y, n), band_report(whole_t, y, n))]
    edges = (0, *LENGTH_BANDS)
    bins = {f"{lo + 1}-{hi} tokens": reliability_bins(banded[(n > lo) & (n <= hi)], y[(n > lo) & (n <= hi)])
            for lo, hi in zip(edges, edges[1:]) if ((n > lo) & (n <= hi)).any()}
    served = banded_probs(whole[0], whole[2], bands, temperature)       # the reviews as scoring scores them
    return {"temperature_bands": [list(b) for b in bands], "calibration_bands": report, "reliability_bands": bins,
            "val_ece_served": expected_calibration_error(served, whole[1]),
            "calibration_short_rows": {"cuts": int(len(cut[1])), "spans": 0 if spans is None else int(len(spans))}}


# ------------------------------------------------------------------- best checkpoint and early stopping
def selection_score(cfg: TrainConfig, val: dict) -> float:
    """The metric that picks the best checkpoint, as lower-is-better."""
    return -val["accuracy"] if cfg.select == "val_accuracy" else val["loss"]


def select_checkpoint(state: LoopState, cfg: TrainConfig, val: dict, net: SentimentModel, path: Path) -> bool:
    """Save the weights to ``path`` if this epoch is the best so far by ``cfg.select``; True if it was."""
    score = selection_score(cfg, val)
    if score >= state.best_score:
        return False
    state.best_score = score
    save_weights(net, path)
    state.best_sha256 = sha256_file(path)
    return True


def early_stop(state: LoopState, cfg: TrainConfig, val: dict) -> bool:
    """Count epochs without a lower validation loss (whatever ``select`` is); True once ``patience`` is out."""
    if val["loss"] < state.best_loss:
        state.best_loss, state.bad_epochs = val["loss"], 0
        return False
    state.bad_epochs += 1
    return cfg.patience is not None and state.bad_epochs >= cfg.patience


# ------------------------------------------------------------------------------------------- training
@dataclass
class Run:
    """Everything one training run works with, built once by :func:`_start`."""
    net: SentimentModel
    opt: torch.optim.Optimizer
    sched: object
    device: torch.device
    steps_per_epoch: int
    state: LoopState
    pretrained: dict | None = None      # where the embedding started: {"path", "vectors_sha256"}
    design: tuple | None = None         # L-BFGS: (sparse training matrix, labels) of pipeline.train.convex
    dist: DistContext | None = None     # multi-process run (torchrun): this rank's place in it
    step_net: torch.nn.Module | None = None     # the DistributedDataParallel wrapper that steps ``net`` there
    spans: SplitData | None = None      # span_aug > 0: short spans of the training reviews (pipeline.train.augment)
    span_info: dict | None = None       # how they were built (rows, reviews, drops, seconds): metrics["span_aug"]


def train_epoch(run: Run, data: SplitData, cfg: TrainConfig, epoch: int, deadline: float | None,
                progress: bool) -> tuple[dict, bool]:
    """One pass over the training split: (loss/accuracy/tokens/seconds of the epoch, ran out of time).
    With ``run.spans`` (``cfg.span_aug > 0``), the span rows' batches are interleaved and their loss weighted
    by ``cfg.span_aug``; ``train_loss``/``train_accuracy`` stay those of the full reviews, the spans get their
    own (``span_rows`` seen, ``span_loss``, ``span_accuracy``). With L-BFGS, one epoch is up to
    ``LBFGS_ITERS_PER_EPOCH`` full-batch iterations."""
    net, dev = run.net, run.device
    if run.design is not None:
        return lbfgs_epoch(net.ngrams, run.opt, *run.design, cfg.l2), False
    if cfg.freeze_embed_epochs and hasattr(net, "embed"):    # gradual unfreezing: the embedding joins later
        net.embed.weight.requires_grad_(epoch >= cfg.freeze_embed_epochs)
    net.train()
    rank, world = (run.dist.rank, run.dist.world) if run.dist is not None else (0, 1)
    if run.dist is not None:
        seed_epoch(cfg.seed, epoch, rank)
    t0, cpu0, tokens = time.perf_counter(), time.process_time(), 0
    tally = {False: [0.0, 0, 0], True: [0.0, 0, 0]}          # reviews / spans: loss sum, correct, rows
    out_of_time = False
    bar = tqdm(total=run.steps_per_epoch, desc=f"epoch {epoch + 1}/{cfg.epochs}",
               disable=not progress or run.dist is not None, leave=False, file=sys.stderr)
    for batch, is_span in epoch_batches(data, run.spans, cfg.batch_size, seed=cfg.seed + epoch, bucket=cfg.bucket,
                                        trim=cfg.trim, rank=rank, world=world):
        ids, lengths, y = to_device(batch, dev)
        logits, loss = train_step(run, cfg, ids, lengths, y, short_weight(cfg) if is_span else 1.0)
        t = tally[is_span]
        t[0] += loss.item() * len(y)
        t[1] += int(((logits > 0) == (y > 0.5)).sum())
        t[2] += len(y)
        tokens += int(batch.lengths.sum())
        bar.update(1)
        bar.set_postfix(loss=f"{tally[False][0] / max(tally[False][2], 1):.4f}",
                        acc=f"{tally[False][1] / max(tally[False][2], 1):.3f}")
        if deadline is not None and _late(run, deadline):
            out_of_time = True
            break
    bar.close()
    seconds = time.perf_counter() - t0
    figures = [*tally[False], *tally[True], tokens]
    if run.dist is not None:       # the epoch's figures over all ranks' batches
        figures = sum_over_ranks(run.dist, figures)
    return _epoch_stats(figures, seconds, cpu0, run.spans is not None), out_of_time


def short_rows(prep_dir: Path, train_data: SplitData, cfg: TrainConfig) -> tuple[SplitData, dict] | None:
    """The short rows interleaved with the reviews, and their build record: spans of the training reviews
    (``span_aug``, :mod:`pipeline.train.augment`), teacher-labelled spans of the unlabelled reviews
    (``self_train``, :mod:`pipeline.train.selftrain`), or None."""
    if cfg.span_aug:
        return span_split(prep_dir, train_data, cfg.span_aug_per_review, cfg.seed)
    if cfg.self_train:
        return pseudo_split(prep_dir, cfg.self_train_teacher, per_review=cfg.self_train_per_review,
                            confidence=cfg.self_train_confidence, seed=cfg.seed)
    return None


def short_weight(cfg: TrainConfig) -> float:
    """The loss weight of a batch of short rows (:func:`short_rows`)."""
    return cfg.span_aug or cfg.self_train


def train_step(run: Run, cfg: TrainConfig, ids: torch.Tensor, lengths: torch.Tensor, y: torch.Tensor,
               weight: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    """One optimizer step on a batch whose loss counts ``weight`` times (span rows: ``cfg.span_aug``);
    -> (logits, the batch's unweighted loss)."""
    step_net = run.step_net if run.step_net is not None else run.net
    with autocast(run.device):
        logits, loss = step_net(ids, lengths, y)
    run.opt.zero_grad(set_to_none=True)
    (loss * weight if weight != 1.0 else loss).backward()
    if cfg.grad_clip:   # the recurrent part's gradients; the linear n-gram bag needs no clipping
        torch.nn.utils.clip_grad_norm_([p for n, p in run.net.named_parameters() if not n.startswith("ngrams.")],
                                       cfg.grad_clip)
    run.opt.step()
    if run.sched is not None:
        run.sched.step()
    return logits, loss


def _epoch_stats(figures: list, seconds: float, cpu0: float, spans: bool) -> dict:
    """The epoch's record from its summed figures (reviews' loss sum, correct, rows; the spans' three; tokens)."""
    loss_sum, correct, seen, span_loss, span_correct, span_seen, tokens = figures
    out = {"train_loss": loss_sum / max(seen, 1), "train_accuracy": correct / max(seen, 1),
           "seconds": round(seconds, 3), "cpu_start": cpu0, "tokens_per_s": round(tokens / max(seconds, 1e-9), 1)}
    if spans:
        out.update(span_rows=int(span_seen), span_loss=span_loss / max(span_seen, 1),
                   span_accuracy=span_correct / max(span_seen, 1))
    return out


def _late(run: Run, deadline: float) -> bool:
    """Past the time budget? With several ranks, all stop at the same step once any is late (a rank that
    stopped alone would leave the others waiting in the next gradient all-reduce)."""
    late = time.perf_counter() > deadline
    return late if run.dist is None else any_rank(run.dist, late)


def _epoch_record(epoch: int, stats: dict, val: dict, run: Run, partial: bool) -> dict:
    return {"epoch": epoch + 1, "train_loss": stats["train_loss"], "train_accuracy": stats["train_accuracy"],
            "val_loss": val["loss"], "val_accuracy": val["accuracy"], "val_f1": val["f1"],
            **{f"val_{k}": v for k, v in val.items() if k.startswith("accuracy_")},
            "seconds": stats["seconds"],
            "cpu_seconds": round(time.process_time() - stats["cpu_start"], 3),   # the epoch's, validation included
            "tokens_per_s": stats["tokens_per_s"], "lr": run.opt.param_groups[0]["lr"], "partial": partial,
            **{k: stats[k] for k in ("span_rows", "span_loss", "span_accuracy") if k in stats}}


def epoch_line(record: dict) -> str:
    """One epoch's record as the progress line users read."""
    halves = (f" (encoder {record['val_accuracy_encoder']:.4f}, n-grams {record['val_accuracy_ngram']:.4f})"
              if "val_accuracy_ngram" in record else "")
    spans = (f" | {record['span_rows']} spans: loss {record['span_loss']:.4f} acc {record['span_accuracy']:.4f}"
             if "span_rows" in record else "")
    return (f"epoch {record['epoch']}: train loss {record['train_loss']:.4f} acc "
            f"{record['train_accuracy']:.4f} | val loss {record['val_loss']:.4f} acc "
            f"{record['val_accuracy']:.4f}{halves}{spans} | {record['seconds']:.1f}s "
            f"{record['tokens_per_s']:.0f} tok/s")


def _report(progress: bool, record: dict) -> None:
    say(progress, epoch_line(record))


def train(prep_dir: str | Path, cfg: TrainConfig, out_dir: str | Path, device: str = "auto",
          progress: bool = True, model: ModelConfig | dict | None = None,
          on_epoch: Callable[[dict], None] | None = None, lock: bool = True,
          vectors: str | Path | None = None, dist: DistContext | None = None) -> TrainResult | None:
    """Train on ``<prep_dir>/{train,val}``; write checkpoints and the result into ``out_dir``.

    Re-running with the same ``out_dir`` resumes from the last completed epoch (or returns the finished
    result), after checking what it resumes from. ``on_epoch(record)`` is called after every epoch with
    that epoch's metrics. ``lock=False``: the caller already holds :func:`run_lock` on ``out_dir``.
    ``vectors``: the pretrained word-vector directory that ``cfg.pretrained`` asks for
    (:func:`pipeline.train.pretrain.pretrain_word_vectors`; ``pipeline.train.job`` finds or builds it).
    ``dist``: this process is one rank of a multi-process run (:mod:`pipeline.train.ddp_main` starts them;
    its device is ``dist.device``): rank 0 alone evaluates, writes and returns the result; the other ranks
    return None once the last epoch is trained.
    """
    with run_lock(out_dir) if lock else contextlib.nullcontext():
        return _train(Path(prep_dir), cfg, Path(out_dir), device, progress, model, on_epoch, vectors, dist)


def _train(prep_dir: Path, cfg: TrainConfig, out_dir: Path, device: str, progress: bool,
           model: ModelConfig | dict | None, on_epoch: Callable[[dict], None] | None,
           vectors: str | Path | None = None, dist: DistContext | None = None) -> TrainResult | None:
    dev = pick_device(device) if dist is None else dist.device
    mcfg = model_config_for(prep_dir, model)
    man = read_manifest(prep_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    with writer_first(dist):        # rank 0 may discard a broken result before the others look
        finished = reusable_result(out_dir, mcfg, cfg, progress)
    if finished is not None:
        return finished
    train_data, val_data, test_data = load_training_data(prep_dir, man)
    spans = short_rows(prep_dir, train_data, cfg)
    run = _start(train_data, mcfg, cfg, out_dir, dev, progress, pretrained_init(cfg, mcfg, man, vectors), dist,
                 spans)
    t_start = time.perf_counter() - run.state.elapsed
    deadline = None if cfg.max_seconds is None else t_start + cfg.max_seconds
    stopped = "completed"
    for epoch in range(run.state.next_epoch, cfg.epochs):
        stats, out_of_time = train_epoch(run, train_data, cfg, epoch, deadline, progress)
        if dist is None or dist.writer:
            stopped = _close_epoch(run, cfg, mcfg, epoch, stats, out_of_time, val_data, out_dir, t_start,
                                   progress, on_epoch)
        if dist is not None:
            stopped = share_stop(dist, stopped)     # every rank stops after the same epoch as rank 0
        if stopped != "completed":
            break
    if dist is not None and not dist.writer:
        # rank 0 alone evaluates the best checkpoint and writes the result: this rank is done. It leaves rather
        # than wait in a collective through that (minutes under load; a gloo barrier held that long aborted)
        return None
    result = _finish(run, cfg, mcfg, prep_dir, out_dir, man, val_data, test_data, stopped,
                     time.perf_counter() - t_start)
    if dist is not None:
        result.environment.update(nproc=dist.world, backend=dist.backend)
    write_json_atomic(out_dir / RESULT, result.to_dict())
    return result


def _close_epoch(run: Run, cfg: TrainConfig, mcfg: ModelConfig, epoch: int, stats: dict, out_of_time: bool,
                 val_data: SplitData, out_dir: Path, t_start: float, progress: bool,
                 on_epoch: Callable[[dict], None] | None) -> str:
    """The end of an epoch (rank 0's alone in a multi-process run): evaluate, record, keep the best weights,
    checkpoint; returns how training stands (``completed`` = go on, ``early_stopping``, ``time_budget``)."""
    val = evaluate(run.net, val_data, max(cfg.batch_size, EVAL_BATCH), run.device)
    record = _epoch_record(epoch, stats, val, run, partial=out_of_time)
    run.state.history.append(record)
    select_checkpoint(run.state, cfg, val, run.net, out_dir / BEST)
    patience_out = early_stop(run.state, cfg, val)
    stopped = "time_budget" if out_of_time else ("early_stopping" if patience_out else "completed")
    _report(progress and run.dist is None, record)      # a rank's on_epoch prints its own line
    state = {"epoch": epoch, "best_loss": run.state.best_loss, "best_score": run.state.best_score,
             "bad_epochs": run.state.bad_epochs, "history": run.state.history,
             "elapsed": time.perf_counter() - t_start, "model_config": mcfg.to_dict(),
             "train_config": cfg.model_key(), "best_sha256": run.state.best_sha256}
    if run.dist is not None:
        state["world_size"] = run.dist.world      # a resume must run as many ranks (steps per epoch, schedule)
    save_checkpoint(out_dir / CHECKPOINT, run.net, run.opt, run.sched, state)
    if on_epoch is not None:
        on_epoch(dict(record, epochs=cfg.epochs))
    return stopped


def pretrained_init(cfg: TrainConfig, mcfg: ModelConfig, man: dict, vectors: str | Path | None) -> dict | None:
    """What ``cfg.pretrained`` starts the embedding from: ``{"path", "vectors_sha256", "matrix"}``, checked
    (:func:`pipeline.train.pretrain.load_vectors`), or None without pretraining."""
    if not cfg.pretrained:
        return None
    if mcfg.encoder == NGRAM_ONLY:
        raise option_error("pretrained", "null for encoder 'none' (it has no embedding)", cfg.pretrained)
    if vectors is None:
        raise InputError(f"pretrained={cfg.pretrained!r} needs its word vectors: train through `reviewflow train` "
                         "(it pretrains them, cached) or pass vectors=<dir from `reviewflow pretrain`>")
    matrix = load_vectors(vectors, str(man.get("prep_id")), mcfg.vocab_size, mcfg.embed_dim)
    return {"path": str(vectors), "vectors_sha256": read_json(Path(vectors) / "manifest.json")["vectors_sha256"],
            "matrix": matrix}


def _start(train_data: SplitData, mcfg: ModelConfig, cfg: TrainConfig, out_dir: Path, dev: torch.device,
           progress: bool, init: dict | None = None, dist: DistContext | None = None,
           spans: tuple[SplitData, dict] | None = None) -> Run:
    """Seed, build the model, optimizer and schedule, and put back a checkpoint's state when resuming
    (every rank of a multi-process run resumes from the same checkpoint; then DDP wraps the model).
    ``spans``: the span rows and their build record (:func:`pipeline.train.augment.span_split`)."""
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    if cfg.optimizer == "lbfgs" and (mcfg.encoder != NGRAM_ONLY or mcfg.ngram_pool != "binary"):
        raise option_error("optimizer", "adam unless the model is a binary n-gram bag (encoder 'none', "
                           "ngram_pool 'binary'): L-BFGS fits that convex model exactly", cfg.optimizer)
    torch.manual_seed(cfg.seed)
    np.random.seed(cfg.seed)
    with writer_first(dist):        # rank 0 may discard a broken checkpoint before the others look
        ckpt = usable_checkpoint(out_dir, mcfg, cfg, dev, progress, world=1 if dist is None else dist.world)
    net = SentimentModel(mcfg, joint_loss=cfg.joint_loss, part_loss=cfg.part_loss)
    if net.ngrams is not None and mcfg.ngram_nb_alpha > 0 and ckpt is None:
        # NBSVM feature scaling from the training reviews (a resumed run loads it with the weights)
        net.ngrams.fit_nb_scale(((b.ids, b.lengths, b.labels) for b in iter_batches(train_data, 512, bucket=True)),
                                alpha=mcfg.ngram_nb_alpha)
    if init is not None and ckpt is None:     # a resumed run has its fine-tuned embedding in the checkpoint
        with torch.no_grad():
            net.embed.weight.copy_(torch.from_numpy(init["matrix"]))
    net = net.to(dev)
    design = design_matrix(net.ngrams, train_data, dev) if cfg.optimizer == "lbfgs" else None
    opt = make_optimizer(net, cfg, dev)
    world = 1 if dist is None else dist.world
    span_data, span_info = spans if spans is not None else (None, None)
    steps_per_epoch = (steps_per_rank(len(train_data.labels), cfg.batch_size, world)
                       + span_steps(span_data, cfg.batch_size, world))
    sched = make_scheduler(opt, cfg, steps_per_epoch)
    state = LoopState()
    if ckpt is not None:  # resume after a crash
        state = restore(out_dir / CHECKPOINT, ckpt, net, opt, sched)
        say(progress, f"resuming {out_dir} at epoch {state.next_epoch + 1}")
    if dist is None or dist.writer:
        write_json_atomic(out_dir / "model_config.json", mcfg.to_dict())
        write_json_atomic(out_dir / "train_config.json", asdict(cfg))
    pretrained = None if init is None else {k: v for k, v in init.items() if k != "matrix"}
    step_net = None if dist is None else wrap_model(net, dist, frozen_start=cfg.freeze_embed_epochs > 0)
    if span_info is not None:
        what = ("training reviews" if cfg.span_aug else
                f"unlabelled reviews, labelled by teacher {span_info.get('teacher')} where it agrees with itself")
        say(progress and (dist is None or dist.writer), f"short rows: {span_info['rows']} spans of "
            f"{span_info['reviews']} {what} (weight {short_weight(cfg)}), built in {span_info['seconds']:.1f}s")
    return Run(net, opt, sched, dev, steps_per_epoch, state, pretrained, design, dist, step_net, span_data, span_info)


def _finish(run: Run, cfg: TrainConfig, mcfg: ModelConfig, prep_dir: Path, out_dir: Path, man: dict,
            val_data: SplitData, test_data: SplitData | None, stopped: str, seconds: float) -> TrainResult:
    """The result: the best checkpoint re-loaded, evaluated (validation, and test when labelled), calibrated
    on validation and measured on short validation texts (:func:`calibration_metrics`)."""
    dev = run.device
    best = load_model(out_dir / BEST, mcfg, dev, sha256=run.state.best_sha256)
    eval_batch = max(cfg.batch_size, EVAL_BATCH)
    metrics = {f"val_{k}": v for k, v in evaluate(best, val_data, eval_batch, dev).items()}
    metrics.update(calibration_metrics(best, val_data, eval_batch, dev, prep_dir, cfg.seed))
    metrics["best_epoch"] = min(run.state.history, key=lambda r: selection_score(
        cfg, {"accuracy": r["val_accuracy"], "loss": r["val_loss"]}))["epoch"]
    metrics["params"] = best.num_params()
    metrics["optimizer_fused"] = bool(getattr(run.opt, "fused_ok", False))
    if run.pretrained is not None:
        metrics["pretrained"] = run.pretrained
    if run.span_info is not None:
        metrics["self_train" if cfg.self_train else "span_aug"] = run.span_info | {"weight": short_weight(cfg)}
    if test_data is not None:
        metrics.update({f"test_{k}": v for k, v in evaluate(best, test_data, EVAL_BATCH, dev).items()})
    return TrainResult(out_dir=out_dir, weights=out_dir / BEST, model_config=mcfg, train_config=cfg,
                       prep_dir=prep_dir, prep_id=str(man.get("prep_id", prep_dir.name)), history=run.state.history,
                       metrics=metrics, stopped=stopped, device=str(dev), seconds=round(seconds, 3),
                       environment=environment(dev), weights_sha256=run.state.best_sha256)
